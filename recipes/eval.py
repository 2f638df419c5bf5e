"""Benchmark evaluation: any vlmkit checkpoint (full or LoRA adapter) on benchmarks in their published formats.

    python recipes/eval.py --config recipes/configs/digits_eval.yaml --model_name_or_path outputs/digits/stage2
    accelerate launch --num_processes 8 recipes/eval.py --model_name_or_path out/stage2 \
        --tasks mmbench,pope,textvqa --data_dir benchmarks/ --output_dir out/stage2_eval

Prompts are sharded across processes and gathered on the main one. Writes eval_results.json, predictions.jsonl,
eval_results.md, metrics.json (eval_<task>_<metric>) and config.yaml into --output_dir. The same as
`vlmkit eval CHECKPOINT --tasks ...`; the tasks, file layouts and prompts are listed in the README.
"""

from __future__ import annotations

import time

from vlmkit.config.eval import BenchmarkEvalConfig
from vlmkit.config.parser import parse_config
from vlmkit.eval.benchmarks.runner import (
    BenchmarkOptions,
    evaluate_checkpoint,
    flat_metrics,
    parse_assignments,
    process_state,
)
from vlmkit.training.run import finish_run, setup_run


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(BenchmarkEvalConfig, argv, prog="eval", description=__doc__)
    if not cfg.model_name_or_path:
        raise SystemExit("eval: --model_name_or_path (the checkpoint to evaluate) is required")
    started = time.perf_counter()
    state = process_state()
    out = setup_run(cfg, state)

    options = BenchmarkOptions(
        tasks=cfg.tasks, data_dir=cfg.data_dir, field_map=cfg.field_map,
        data_files=parse_assignments(cfg.data_files, "data_files"),
        image_folders=parse_assignments(cfg.image_folders, "image_folders"),
        batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        max_samples=cfg.max_samples, on_bad_sample=cfg.on_bad_sample,
    )  # fmt: skip
    results = evaluate_checkpoint(cfg.model_name_or_path, options, out, state=state, print_table=True)

    metrics = {}
    if state.is_main_process:
        metrics = {**flat_metrics(results), "world_size": state.num_processes}
        metrics = finish_run(out, metrics, started=started, title="eval")
    state.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    main()
