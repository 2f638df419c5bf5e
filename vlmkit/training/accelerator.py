"""Building the Accelerator the same way for every recipe, on one CPU or many GPUs."""

from __future__ import annotations

import os

import torch


def resolve_mixed_precision(requested: str) -> str:
    """auto -> bf16 on a GPU that supports it, else no; fp16/bf16 on CPU fall back to no."""
    if requested not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16; got '{requested}'")
    on_gpu = torch.cuda.is_available()
    if requested == "auto":
        return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"
    if not on_gpu and requested != "no":
        return "no"
    return requested


def make_accelerator(
    *,
    output_dir: str,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str = "auto",
    report_to: list[str] | None = None,
):
    """An Accelerator with trackers under output_dir/runs; gloo when several processes run on CPU.

    DeepSpeed and FSDP launched through `accelerate launch` read their plugin settings from the environment
    the launcher sets; only the process-group backend needs help on CPU (see PLATFORM_NOTES).
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedType
    from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs

    handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    trackers = [t for t in (report_to or []) if t != "none"]
    sharded = any(os.environ.get(f"ACCELERATE_USE_{k}", "").lower() == "true" for k in ("DEEPSPEED", "FSDP"))
    # On a CPU-only machine a multi-process DDP launch must ask for the CPU explicitly, otherwise Accelerate
    # reports num_processes > 1 but distributed_type NO and silently trains each rank alone.
    cpu = not torch.cuda.is_available() and not sharded
    accelerator = Accelerator(
        cpu=cpu,
        # The loop forms its accumulation windows across epoch ends, so the dataloader must not force a sync.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=gradient_accumulation_steps, sync_with_dataloader=False
        ),
        mixed_precision=resolve_mixed_precision(mixed_precision),
        log_with=trackers or None,
        project_dir=output_dir,
        kwargs_handlers=handlers,
        dataloader_config=DataLoaderConfiguration(split_batches=False, even_batches=True),
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.distributed_type == DistributedType.NO:
        raise RuntimeError(
            f"launched with {world} processes but Accelerate is not distributed (each rank would train alone); "
            "check the accelerate config (distributed_type) for this machine"
        )
    return accelerator
