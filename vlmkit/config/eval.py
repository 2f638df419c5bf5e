"""Config of the benchmark evaluation recipe (`recipes/eval.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import RunArgs, _f


@dataclass
class BenchmarkEvalConfig(RunArgs):
    """Evaluate a vlmkit checkpoint on benchmarks in their published formats (no training)."""

    model_name_or_path: str | None = _f(
        None, "The vlmkit checkpoint to evaluate (full model or LoRA adapter)."
    )
    tasks: list[str] = _f(
        ["digits_mmbench", "digits_pope"], "Benchmark tasks (vlmkit.eval.benchmarks.TASKS)."
    )
    data_dir: str | None = _f(None, "Folder holding each task's files in their published layout.")
    data_files: list[str] = _f([], "TASK=PATH overrides of a task's data file or folder.")
    image_folders: list[str] = _f([], "TASK=DIR overrides of a task's image folder.")
    field_map: str | None = _f(None, "For mcq/vqa: the user's columns, e.g. question=q,answer=a,image=img.")
    per_device_eval_batch_size: int = _f(32, "Prompts generated together on each process.")
    max_new_tokens: int = _f(0, "Tokens generated per answer (0: each task's own).")
    max_samples: int = _f(0, "At most this many questions per task and split (0: all).")
