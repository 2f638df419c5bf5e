"""Building the Accelerator the same way for every recipe, on one CPU or many GPUs."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)


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


def _launched_with(kind: str) -> bool:
    """Whether `accelerate launch` asked for `kind` (DEEPSPEED or FSDP) through the environment it sets."""
    return os.environ.get(f"ACCELERATE_USE_{kind}", "").lower() == "true"


def make_accelerator(
    *,
    output_dir: str,
    gradient_accumulation_steps: int = 1,
    mixed_precision: str = "auto",
    report_to: list[str] | None = None,
):
    """An Accelerator with trackers under output_dir/runs; gloo when several processes run on CPU.

    DeepSpeed and FSDP launched through `accelerate launch` read their plugin settings from the environment
    the launcher sets. On a CPU-only machine two things need help: the process group must be gloo (DeepSpeed
    otherwise fails its train_batch_size check), and FSDP must be forced (Accelerate only enables it on
    accelerators and would otherwise train each rank alone, without an error). On a GPU nothing here changes
    what Accelerate does.
    """
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedType
    from accelerate.utils import (
        FullyShardedDataParallelPlugin,
        GradientAccumulationPlugin,
        InitProcessGroupKwargs,
    )

    world = int(os.environ.get("WORLD_SIZE", "1"))
    on_cpu = not torch.cuda.is_available()
    handlers = []
    if on_cpu and world > 1:
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    trackers = [t for t in (report_to or []) if t != "none"]
    # On a CPU-only machine a multi-process DDP (or FSDP) launch must ask for the CPU explicitly, otherwise
    # Accelerate reports num_processes > 1 but distributed_type NO and silently trains each rank alone.
    # DeepSpeed brings its own CPU accelerator and must not be told cpu=True (that would disable it).
    cpu = on_cpu and not _launched_with("DEEPSPEED")
    cpu_fsdp = on_cpu and world > 1 and _launched_with("FSDP")
    fsdp_plugin = FullyShardedDataParallelPlugin() if cpu_fsdp else None  # settings from the launcher's env
    accelerator = Accelerator(
        cpu=cpu,
        fsdp_plugin=fsdp_plugin,
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
    if cpu_fsdp:
        _force_fsdp_on_cpu(accelerator, fsdp_plugin)
    if world > 1 and accelerator.distributed_type == DistributedType.NO:
        raise RuntimeError(
            f"launched with {world} processes but Accelerate is not distributed (each rank would train alone); "
            "check the accelerate config (distributed_type) for this machine"
        )
    for kind in ("DEEPSPEED", "FSDP"):
        if world > 1 and _launched_with(kind) and accelerator.distributed_type != DistributedType[kind]:
            raise RuntimeError(
                f"launched for {kind} but Accelerate set up {accelerator.distributed_type}: the model would not "
                "be sharded; check the accelerate config and the installed accelerate/deepspeed versions"
            )
    return accelerator


def _force_fsdp_on_cpu(accelerator, fsdp_plugin) -> None:
    """Turn the MULTI_CPU (gloo) state Accelerate set up on a CPU-only machine into an FSDP state.

    Accelerate picks FSDP only on GPUs and similar devices; on CPU it ignores the plugin and every rank would
    hold and train a full copy. FSDP2 (`fully_shard`) itself runs on CPU over gloo, so the shared state is set
    the way Accelerate sets it on a GPU machine: distributed_type FSDP, the plugin, and the CPU as device.
    """
    from accelerate import DistributedType
    from accelerate.state import AcceleratorState, PartialState

    if fsdp_plugin.fsdp_version != 2:
        raise RuntimeError(
            "FSDP on CPU works with FSDP2 only (FSDP1's full state dict crashes on CPU): launch with "
            "accelerate_configs/fsdp2.yaml or --fsdp_version 2"
        )
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
        shared["device"] = torch.device("cpu")
    AcceleratorState._shared_state["fsdp_plugin"] = fsdp_plugin
    if accelerator.state.mixed_precision != "no":
        fsdp_plugin.set_mixed_precision(accelerator.state.mixed_precision)


def fill_deepspeed_auto(accelerator, *, max_grad_norm: float, micro_batch_size: int | None = None) -> None:
    """Fill the DeepSpeed "auto" values that Accelerate cannot take from the recipe. Call before `prepare`.

    - `gradient_clipping`: DeepSpeed clips inside its engine, and Accelerate would fill "auto" with 1.0 whatever
      the recipe's `max_grad_norm` (0: no clipping) says.
    - `train_micro_batch_size_per_gpu`: Accelerate reads it from a prepared DataLoader; a loop that prepares
      none (PPO's rollouts) passes its per-device batch size.
    No-op without DeepSpeed.
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = max(0.0, float(max_grad_norm))
    if micro_batch_size is not None and config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = int(micro_batch_size)


def _local_and_full_numel(param: torch.Tensor) -> tuple[int, int]:
    """(elements this rank stores, elements of the whole parameter) for plain, ZeRO-3 and FSDP2 parameters."""
    if hasattr(param, "ds_tensor"):  # DeepSpeed ZeRO-3: this rank's partition (padded) and the full size
        return param.ds_tensor.numel(), param.ds_numel
    if hasattr(param, "to_local"):  # an FSDP2 DTensor
        return param.to_local().numel(), param.numel()
    return param.numel(), param.numel()


def parameter_layout(accelerator, model: torch.nn.Module) -> dict[str, int]:
    """How the run is laid out, as numbers for metrics.json: world_size and parameter elements per rank.

    `parameters` is the full model size; `parameters_per_rank_max` the most that any one rank stores. They are
    equal under DDP and ZeRO-1/2 (replicated weights); `parameters_per_rank_max` is about `parameters /
    world_size` when ZeRO-3 or FSDP shard the weights. Collective: every rank must call it (e.g. after training).
    """
    local = full = 0
    for param in model.parameters():
        mine, whole = _local_and_full_numel(param)
        local, full = local + mine, full + whole
    per_rank = accelerator.gather(torch.tensor([local], device=accelerator.device)).tolist()
    if accelerator.is_main_process:
        logger.info(
            "%s over %d processes: parameter elements per rank %s of %s%s",
            accelerator.distributed_type.value, accelerator.num_processes, per_rank, f"{full:,}",
            " (sharded)" if max(per_rank) < full else "",
        )  # fmt: skip
    return {
        "world_size": accelerator.num_processes,
        "parameters": full,
        "parameters_per_rank_max": max(per_rank),
    }
