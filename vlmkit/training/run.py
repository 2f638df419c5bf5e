"""What every recipe does around training: output directory, logging, final save, metrics, model card."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vlmkit.config.parser import save_config
from vlmkit.hub.lifecycle import maybe_check_hub
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.preflight import preflight
from vlmkit.training.reporting import LOG_FILE, PLOT_FILE, plot_loss, write_metrics

logger = logging.getLogger(__name__)


def start_run(cfg):
    """The opening every recipe shares: start the clock, check Hub access (a missing token or offline Hub fails
    in seconds, before any model loads), build the Accelerator and set up output_dir.

    Returns (accelerator, output directory, start time for `finish_run`)."""
    started = time.perf_counter()
    maybe_check_hub(cfg)
    preflight(cfg)  # every input the run needs (data, media, model paths, output_dir), before any model loads
    accelerator = make_accelerator(
        output_dir=cfg.output_dir, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision, report_to=cfg.report_to,
    )  # fmt: skip
    return accelerator, setup_run(cfg, accelerator), started


def setup_run(cfg, accelerator=None) -> Path:
    """Create output_dir, configure logging, seed everything and write config.yaml (main process)."""
    from transformers import set_seed

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "urllib3", "huggingface_hub", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_seed(cfg.seed)
    if accelerator is None or accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    return out


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocator peak on CUDA, else max RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_model(accelerator, model, processor, out_dir: Path) -> None:
    """Consolidate (ZeRO-3/FSDP) and save the unwrapped model + processor in from_pretrained form."""
    state_dict = accelerator.get_state_dict(model)  # collective under ZeRO-3 / FSDP: every rank calls it
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(out_dir, state_dict=state_dict)
        processor.save_pretrained(out_dir)
    accelerator.wait_for_everyone()


def weights_are_sharded(accelerator) -> bool:
    """Whether no single rank holds the whole model: DeepSpeed ZeRO-3 or FSDP."""
    from accelerate import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin.zero_stage == 3


def model_for_eval(accelerator, model, out_dir: Path, load: Callable[[str], torch.nn.Module]):
    """The trained model to evaluate on the main process alone, after `save_model(..., out_dir)`.

    With replicated weights (one process, DDP, ZeRO-1/2) that is the unwrapped model itself. Under ZeRO-3 or
    FSDP no rank holds the whole model and running it on one rank would wait forever for the others'
    all-gathers, so the main process loads the consolidated checkpoint just saved in `out_dir` with `load`
    (exactly what users get). For the rest of the run transformers then stops treating this process as part of
    a ZeRO-3 job: `zero.Init` while loading and synced generation are collective, and the other ranks are done.
    """
    if not weights_are_sharded(accelerator):
        return accelerator.unwrap_model(model)
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    return load(str(out_dir)).to(accelerator.device).eval()


def end_run(accelerator) -> None:
    """Close the run on every process together: all wait for the main one (evaluation, card, push), then the
    process group is destroyed. A rank that leaves while another still works can abort gloo's teardown."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def finish_run(out_dir: Path, metrics: dict, *, started: float, title: str, skips=None) -> dict:
    """Write metrics.json and loss.png; print the summary line."""
    metrics = dict(metrics)
    metrics.setdefault("train_seconds", round(time.perf_counter() - started, 2))
    metrics.setdefault("peak_memory_mb", round(peak_memory_mb(), 1))
    if skips is not None and skips.total:
        metrics["skipped_samples"] = skips.total
        (out_dir / "skipped.json").write_text(json.dumps(skips.as_dict(), indent=2))
        logger.warning("skipped %d bad samples: %s (see skipped.json)", skips.total, skips.as_dict())
    flat = write_metrics(out_dir, metrics)
    if (out_dir / LOG_FILE).exists():
        plot_loss(out_dir / LOG_FILE, out_dir / PLOT_FILE, title=title)
    headline = {k: v for k, v in flat.items() if k.startswith("eval_")}
    print(f"[vlmkit] {title}: {json.dumps(headline)} -> {out_dir}", flush=True)
    return flat
