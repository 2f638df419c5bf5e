"""`vlmkit pipeline`: argument parsing and entry point (plugged into vlmkit.cli)."""

from __future__ import annotations

import argparse

DEFAULT_CONFIG = "recipes/configs/pipeline_digits.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"Pipeline YAML (default: {DEFAULT_CONFIG})."
    )
    parser.add_argument("--output_dir", help="Override the pipeline's output directory.")
    parser.add_argument("--only", nargs="+", help="Run only these stages (their inputs must be complete).")
    parser.add_argument("--from_stage", help="Start at this stage (earlier stages must be complete).")
    parser.add_argument(
        "--launcher",
        help="How each stage starts, e.g. 'accelerate launch --config_file accelerate_configs/multi_gpu.yaml' "
        "(default: this Python).",
    )
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="Stages run at once when their inputs are ready (2 on a 2-core machine runs the image and audio "
        "branches side by side; every stage's results are the same as with 1).",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the whole chain (stage 0 to PPO), skipping complete stages; writes report.md/html."""
    from vlmkit.pipeline.runner import run_pipeline
    from vlmkit.pipeline.spec import load_pipeline

    spec = load_pipeline(args.config)
    if args.output_dir:
        spec.output_dir = args.output_dir
    run_pipeline(spec, only=args.only, from_stage=args.from_stage, launcher=args.launcher, jobs=args.jobs)
    return 0
