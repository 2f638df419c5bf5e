"""The run contract every recipe shares, start to end: `Run`.

    run = Run(cfg, "llava_stage1", hub=HUB)             # Hub pre-flight, Accelerator, output_dir, config.yaml
    result = train(cfg, run.accelerator, model, ...)
    run.save(result.model, processor)                   # collective: consolidates ZeRO-3 / FSDP shards
    metrics.update(run.evaluate(evaluate, result.model, load=load))   # evaluate(trained) on the main process
    return run.finish(metrics, card=...)                # metrics.json, loss.png, card, push, barrier, teardown

Layering: this module sits in `training` and imports nothing above it. The Hub steps (access check, push) and
the model card are Hub concerns, so the recipe hands them in: `hub` (an object with `check(cfg)` and
`push(cfg, out_dir)`, `vlmkit.hub.lifecycle.HUB`) and `card` (a callable writing README.md). Both are
required arguments, so no recipe can skip them, and `training` never imports `hub`. Why not a Run in a layer
above `training` that imports `hub` itself: the Run belongs beside the loop and the accelerator it drives, and
the only Hub-specific parts are two calls and a card that differs per recipe anyway; a new top layer would add
a package for one class.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from vlmkit.config.parser import save_config
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.preflight import preflight
from vlmkit.training.reporting import LOG_FILE, PLOT_FILE, plot_loss, write_metrics

logger = logging.getLogger(__name__)

# card(out_dir, metrics) writes the model card (README.md) of the finished run on the main process.
CardWriter = Callable[[Path, dict], object]


class HubSteps(Protocol):
    """What a run does with the Hub: fail fast before training, push the output directory at the end."""

    def check(self, cfg) -> None: ...

    def push(self, cfg, out_dir: Path) -> object: ...


class Run:
    """One recipe run: accelerator, output directory, collective save, main-process evaluation, finish.

    Constructing it is the opening every recipe shares: start the clock, check Hub access (a missing token
    or an offline Hub fails in seconds, before any model loads), build the Accelerator, create output_dir,
    configure logging, seed everything and write config.yaml.
    """

    def __init__(self, cfg, title: str, *, hub: HubSteps):
        self.cfg, self.title, self.hub = cfg, title, hub
        self.started = time.perf_counter()
        hub.check(cfg)
        preflight(
            cfg
        )  # every input the run needs (data, media, model paths, output_dir), before any model loads
        self.accelerator = make_accelerator(
            output_dir=cfg.output_dir, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision=cfg.mixed_precision, report_to=cfg.report_to,
        )  # fmt: skip
        self.out = setup_run(cfg, self.accelerator)

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under the DDP / DeepSpeed / FSDP wrapper (its config and methods; under ZeRO-3 or FSDP
        not its full weights: use `evaluate` to run it)."""
        return self.accelerator.unwrap_model(model)

    def save(self, model: torch.nn.Module, *processors, save: Callable | None = None) -> None:
        """Consolidate (ZeRO-3/FSDP) and save the model in from_pretrained form, with its processors.

        Every process must call it. `save(unwrapped, out_dir, state_dict)` replaces
        `unwrapped.save_pretrained(out_dir, state_dict=state_dict)` for models saved another way."""
        state_dict = self.accelerator.get_state_dict(model)  # collective under ZeRO-3 / FSDP
        if self.is_main_process:
            unwrapped = self.unwrap(model)
            if save is None:
                unwrapped.save_pretrained(self.out, state_dict=state_dict)
            else:
                save(unwrapped, self.out, state_dict)
            for processor in processors:
                processor.save_pretrained(self.out)
        self.accelerator.wait_for_everyone()

    def evaluate(
        self,
        evaluate: Callable[..., dict],
        model: torch.nn.Module | None = None,
        load: Callable[[str], torch.nn.Module] | None = None,
    ) -> dict:
        """`evaluate(trained)` on the main process alone, after `save`; {} on the other processes.

        `trained` is the model to evaluate. With replicated weights (one process, DDP, ZeRO-1/2) that is the
        unwrapped model itself. Under ZeRO-3 or FSDP no rank holds the whole model and running it on one
        rank would wait forever for the others' all-gathers, so the main process loads the consolidated
        checkpoint just saved with `load(out_dir)` (exactly what users get). Without `model`,
        `evaluate()` is called with no argument (it reads the saved output itself).
        Under sharding transformers then stops treating this process as part of a ZeRO-3 job, so any
        `from_pretrained` in `evaluate` is not collective (zero.Init and synced generation are, and the
        other ranks are done). Every process may call it; only the main one evaluates.
        """
        if not self.is_main_process:
            return {}
        sharded = weights_are_sharded(self.accelerator)
        if sharded:
            leave_zero3_job(self.accelerator)
        if model is None:
            return evaluate()
        if not sharded:
            return evaluate(self.unwrap(model))
        if load is None:
            raise ValueError(
                f"{self.title}: evaluating a sharded model needs `load` (reload the saved output)"
            )
        return evaluate(load(str(self.out)).to(self.accelerator.device).eval())

    def finish(
        self,
        metrics: dict,
        *,
        card: CardWriter,
        skips=None,
        plot_keys: tuple[str, ...] = ("loss",),
    ) -> dict:
        """Close the run on every process: on the main one write metrics.json (+ skipped.json), loss.png and
        the model card (`card(out_dir, metrics)`), then push; then all processes meet and the process group
        is torn down. Returns the flat metrics on the main process, `metrics` elsewhere."""
        if self.is_main_process:
            metrics = finish_run(
                self.out, metrics, started=self.started, title=self.title, skips=skips, plot_keys=plot_keys
            )
            card(self.out, metrics)
            self.hub.push(self.cfg, self.out)
        end_run(self.accelerator)
        return metrics


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


def weights_are_sharded(accelerator) -> bool:
    """Whether no single rank holds the whole model: DeepSpeed ZeRO-3 or FSDP."""
    from accelerate import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin.zero_stage == 3


def leave_zero3_job(accelerator) -> None:
    """Stop transformers from building and loading models under zero.Init (collective) in this process."""
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def end_run(accelerator) -> None:
    """Close the run on every process together: all wait for the main one (evaluation, card, push), then the
    process group is destroyed. A rank that leaves while another still works can abort gloo's teardown."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def finish_run(
    out_dir: Path,
    metrics: dict,
    *,
    started: float,
    title: str,
    skips=None,
    plot_keys: tuple[str, ...] = ("loss",),
) -> dict:
    """Write metrics.json (+ skipped.json) and loss.png (the `plot_keys` curves); print the summary line."""
    metrics = dict(metrics)
    metrics.setdefault("train_seconds", round(time.perf_counter() - started, 2))
    metrics.setdefault("peak_memory_mb", round(peak_memory_mb(), 1))
    if skips is not None and skips.total:
        metrics["skipped_samples"] = skips.total
        (out_dir / "skipped.json").write_text(json.dumps(skips.as_dict(), indent=2))
        logger.warning("skipped %d bad samples: %s (see skipped.json)", skips.total, skips.as_dict())
    flat = write_metrics(out_dir, metrics)
    if (out_dir / LOG_FILE).exists():
        plot_loss(out_dir / LOG_FILE, out_dir / PLOT_FILE, title=title, keys=plot_keys)
    headline = {k: v for k, v in flat.items() if k.startswith("eval_")}
    print(f"[vlmkit] {title}: {json.dumps(headline)} -> {out_dir}", flush=True)
    return flat
