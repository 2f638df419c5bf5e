"""The `vlmkit` command line: use, merge, export and evaluate checkpoints.

    vlmkit generate CHECKPOINT --image digit.png --prompt "What digit is this?"
    vlmkit generate CHECKPOINT --audio clip.wav --prompt "Which digit is spoken?"
    vlmkit merge ADAPTER_DIR OUT_DIR           # LoRA adapter -> full vlmkit (or transformers) checkpoint
    vlmkit export CHECKPOINT OUT_DIR           # -> transformers LlavaForConditionalGeneration + processor
    vlmkit eval CHECKPOINT --data_path eval.json [--image_folder DIR]
    vlmkit eval CHECKPOINT --tasks mmbench,pope --data_dir benchmarks/ [--output_dir DIR]   # see README
    vlmkit pipeline --config recipes/configs/pipeline_digits.yaml   # the whole chain, stage 0 to PPO

CHECKPOINT is any vlmkit output directory: a full model or a LoRA adapter, of a vlmkit composite model or of a
native transformers VLM (generate and merge take native checkpoints too). Each subcommand is a pair of
functions in `SUBCOMMANDS` (name -> (add_arguments, run)); adding one is adding an entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from vlmkit.data.records import AUDIO_TOKEN, IMAGE_TOKEN, BadSampleError, Sample, Turn
from vlmkit.pipeline import command as pipeline_command

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


# ---- generate -------------------------------------------------------------------------------------------
def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="A vlmkit checkpoint or transformers VLM directory (full model or LoRA adapter)."
    )
    media = p.add_mutually_exclusive_group(required=True)
    media.add_argument("--image", help="Image file for an image model.")
    media.add_argument("--audio", help="Audio file for an audio model.")
    p.add_argument("--prompt", required=True, help="The question; the media placeholder is added if absent.")
    p.add_argument("--max_new_tokens", type=int, default=64, help="Most tokens to generate.")
    p.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    p.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (with --do_sample).")
    p.add_argument("--top_p", type=float, default=1.0, help="Nucleus sampling mass (with --do_sample).")


def run_generate(args: argparse.Namespace) -> int:
    """Answer a prompt about an image or audio clip (prints the answer)."""
    from vlmkit.eval.answers import generate_answers
    from vlmkit.training.vlm_kinds import kind_of_path

    model, processor = kind_of_path(args.checkpoint).load_checkpoint(args.checkpoint)
    modality = processor.modality
    given = "image" if args.image else "audio"
    if given != modality:
        raise ValueError(f"{args.checkpoint} is an {modality} model; pass --{modality}, not --{given}")
    token = IMAGE_TOKEN if modality == "image" else AUDIO_TOKEN
    text = args.prompt if token in args.prompt else f"{token}\n{args.prompt}"
    media = [args.image or args.audio]
    sample = Sample(
        [Turn("user", text)],
        images=media if modality == "image" else [],
        audios=media if modality == "audio" else [],
        source="--prompt",
    )
    ((answer, _),) = generate_answers(
        model, processor, [sample], batch_size=1, max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
    )  # fmt: skip
    print(answer)
    return 0


# ---- merge / export -------------------------------------------------------------------------------------
def add_merge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "adapter_dir",
        help="A vlmkit checkpoint whose language_model/ is a LoRA adapter, or a native VLM's adapter directory.",
    )
    p.add_argument("out_dir", help="Where to write the merged, self-contained checkpoint.")


def run_merge(args: argparse.Namespace) -> int:
    """Merge a LoRA adapter checkpoint into a full vlmkit checkpoint."""
    from vlmkit.models.merge import merge_checkpoint

    out = merge_checkpoint(args.adapter_dir, args.out_dir)
    print(f"merged {args.adapter_dir} -> {out}")
    return 0


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="A vlmkit image checkpoint (mlp2x_gelu connector, CLIP/SigLIP tower).")
    p.add_argument("out_dir", help="Where to write the LlavaForConditionalGeneration checkpoint + processor.")


def run_export(args: argparse.Namespace) -> int:
    """Export to transformers LlavaForConditionalGeneration + LlavaProcessor."""
    from vlmkit.models.export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"exported {args.checkpoint} -> {out} (LlavaForConditionalGeneration + LlavaProcessor)")
    return 0


# ---- eval -----------------------------------------------------------------------------------------------
def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="A vlmkit checkpoint directory (full model or LoRA adapter).")
    p.add_argument("--data_path", default=None, help="Held-out conversations whose last turn is the answer.")
    p.add_argument("--image_folder", default=None, help="Root for relative image paths.")
    p.add_argument("--audio_folder", default=None, help="Root for relative audio paths.")
    p.add_argument("--data_format", default="auto", help="auto, llava, sharegpt, messages, hf or prompts.")
    p.add_argument("--max_eval_samples", type=int, default=0, help="Evaluate at most this many (0: all).")
    p.add_argument("--batch_size", type=int, default=32, help="Prompts generated together (per process).")
    p.add_argument(
        "--max_new_tokens", type=int, default=None, help="Tokens per answer (default 8; tasks: own)."
    )
    p.add_argument("--seed", type=int, default=42, help="Seed for choosing --max_eval_samples samples.")
    p.add_argument(
        "--output_file",
        default=None,
        help="Where to write the metrics JSON (default CHECKPOINT/eval_metrics.json).",
    )
    from vlmkit.eval.benchmarks.registry import TASKS

    bench = p.add_argument_group("benchmarks (instead of --data_path)")
    bench.add_argument("--tasks", default=None, help=f"Comma-separated benchmark tasks: {', '.join(TASKS)}.")
    bench.add_argument("--data_dir", default=None, help="Folder holding each task's files in their layout.")
    bench.add_argument("--data_files", nargs="*", default=[], help="TASK=PATH overrides of a task's file.")
    bench.add_argument("--image_folders", nargs="*", default=[], help="TASK=DIR overrides of image folders.")
    bench.add_argument("--field_map", default=None, help="mcq/vqa columns: question=q,answer=a,image=i,...")
    bench.add_argument("--max_samples", type=int, default=0, help="At most this many questions per task.")
    bench.add_argument("--on_bad_sample", default="error", help="error, or skip (counted in the results).")
    bench.add_argument("--output_dir", default=None, help="Results folder (default CHECKPOINT/eval/).")


def run_eval(args: argparse.Namespace) -> int:
    """Held-out answer accuracy (--data_path), or benchmarks in their published formats (--tasks)."""
    if args.tasks:
        return _run_benchmarks(args)
    if not args.data_path:
        raise ValueError("pass --data_path (held-out conversations) or --tasks (benchmarks)")
    from vlmkit.data.embedded import resolve_data_path
    from vlmkit.data.loading import subsample
    from vlmkit.data.readers import read_dataset
    from vlmkit.eval.answers import answer_accuracy
    from vlmkit.training.vlm_kinds import kind_of_path

    path = resolve_data_path(args.data_path)
    samples = read_dataset(path, args.image_folder, format=args.data_format, audio_folder=args.audio_folder)
    samples = subsample(samples, args.max_eval_samples, args.seed)
    model, processor = kind_of_path(args.checkpoint).load_checkpoint(args.checkpoint)
    accuracy, _ = answer_accuracy(
        model, processor, samples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens or 8
    )
    metrics = {"eval_accuracy": accuracy, "eval_samples": len(samples), "data_path": str(args.data_path)}
    out = Path(args.output_file) if args.output_file else Path(args.checkpoint) / "eval_metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))
    return 0


def _run_benchmarks(args: argparse.Namespace) -> int:
    from vlmkit.eval.benchmarks.runner import BenchmarkOptions, evaluate_checkpoint, parse_assignments

    options = BenchmarkOptions(
        tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], data_dir=args.data_dir,
        data_files=parse_assignments(args.data_files, "--data_files"),
        image_folders=parse_assignments(args.image_folders, "--image_folders"), field_map=args.field_map,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens or 0, max_samples=args.max_samples,
        on_bad_sample=args.on_bad_sample,
    )  # fmt: skip
    out = Path(args.output_dir) if args.output_dir else Path(args.checkpoint) / "eval"
    evaluate_checkpoint(args.checkpoint, options, out, print_table=True)
    return 0


SUBCOMMANDS: dict[str, tuple[AddArguments, Run]] = {
    "generate": (add_generate_arguments, run_generate),
    "merge": (add_merge_arguments, run_merge),
    "export": (add_export_arguments, run_export),
    "eval": (add_eval_arguments, run_eval),
    "pipeline": (pipeline_command.add_arguments, pipeline_command.run),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per `SUBCOMMANDS` entry."""
    parser = argparse.ArgumentParser(prog="vlmkit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run) in SUBCOMMANDS.items():
        summary = (run.__doc__ or "").strip().split("\n")[0]
        sp = sub.add_parser(name, help=summary, description=summary)
        add_arguments(sp)
        sp.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vlmkit` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except (ValueError, FileNotFoundError, BadSampleError) as err:
        print(f"vlmkit {args.command}: error: {err}", file=sys.stderr)
        return 2
