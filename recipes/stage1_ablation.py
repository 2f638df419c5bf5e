"""LLaVA's ablation: does stage 1 help stage 2? Stage 2 at one short budget from the stage-1 connector and from
a fresh connector of the same shape, with the same encoder, language model, data, steps and seeds.

    python recipes/stage1_ablation.py --config recipes/configs/digits_stage1_ablation.yaml \
        --stage1 outputs/digits/llava_stage1 --output_dir outputs/digits/stage1_ablation

Each arm and seed is `recipes/llava_stage2.py --config <stage2_config>` in its own process, written to
<output_dir>/<arm>_seed<k>/ (a finished run is kept when the ablation is resumed). metrics.json holds
eval_accuracy_from_stage1 and eval_accuracy_fresh_connector (means over seeds), eval_stage1_gain (their
difference) with eval_stage1_gain_stderr (over the per-seed differences), and every run's accuracy.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vlmkit.config.ablation import Stage1AblationConfig
from vlmkit.config.parser import parse_config
from vlmkit.training.run import finish_run, setup_run

STAGE2 = Path(__file__).resolve().parent / "llava_stage2.py"


def fresh_connector_args(stage1: Path) -> list[str]:
    """Stage 2 built from the tower and language model that stage 1 froze (its config.yaml) with a new connector
    of the same shape."""
    config_file = stage1 / "config.yaml"
    if not config_file.is_file():
        raise SystemExit(
            f"stage1_ablation: {config_file} not found: --stage1 must be a stage-1 output directory"
        )
    config = yaml.safe_load(config_file.read_text())
    if config.get("tune_encoder"):
        raise SystemExit(f"stage1_ablation: {stage1} trained its encoder; a fresh arm would not share it")
    tower = "audio_tower" if config.get("audio_tower") else "vision_tower"
    args = ["--model_name_or_path", "none", f"--{tower}", str(config[tower])]
    for key in (
        "language_model",
        "connector",
        "connector_num_queries",
        "connector_downsample",
        "feature_layer",
    ):
        args += [f"--{key}", str(config[key])]
    return args


def run_arm(cfg: Stage1AblationConfig, start: list[str], out: Path, seed: int) -> float:
    """One stage-2 run (reused if it finished before); its held-out accuracy."""
    if not (out / "metrics.json").is_file():
        argv = [
            sys.executable, str(STAGE2), "--config", cfg.stage2_config, *start, "--output_dir", str(out),
            "--seed", str(seed), "--max_steps", str(cfg.max_steps), "--max_eval_samples", str(cfg.max_eval_samples),
            "--report_to", "none",
        ]  # fmt: skip
        with open(out.with_suffix(".log"), "w") as log:
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise SystemExit(
                f"stage1_ablation: {' '.join(argv)} failed (exit {proc.returncode}); see {log.name}"
            )
    return json.loads((out / "metrics.json").read_text())["eval_accuracy"]


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Stage1AblationConfig, argv, prog="stage1_ablation", description=__doc__)
    if not cfg.stage1:
        raise SystemExit("stage1_ablation: --stage1 (a stage-1 output directory) is required")
    started = time.perf_counter()
    out = setup_run(cfg)
    stage1 = Path(cfg.stage1)
    arms = {
        "from_stage1": ["--model_name_or_path", str(stage1)],
        "fresh_connector": fresh_connector_args(stage1),
    }
    accuracy = {
        arm: [run_arm(cfg, start, out / f"{arm}_seed{s}", s) for s in cfg.seeds]
        for arm, start in arms.items()
    }
    gains = [a - b for a, b in zip(accuracy["from_stage1"], accuracy["fresh_connector"])]
    metrics = {
        "eval_stage1_gain": statistics.mean(gains),
        "eval_stage1_gain_stderr": statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else 0.0,
        **{f"eval_accuracy_{arm}": statistics.mean(values) for arm, values in accuracy.items()},
        **{f"eval_accuracy_{arm}_seed{s}": v for arm, values in accuracy.items() for s, v in zip(cfg.seeds, values)},
        "stage2_steps": cfg.max_steps,
    }  # fmt: skip
    return finish_run(out, metrics, started=started, title="stage1_ablation")


if __name__ == "__main__":
    main()
