"""The training loop every recipe shares: Accelerate underneath, exact resume, NaN guards, atomic checkpoints.

Losses are normalised by the number of items (e.g. supervised tokens) in the whole optimizer step across
micro-batches and processes, so batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same update.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vlmkit.data.records import SkipReportingCollate
from vlmkit.data.sampling import EpochSampler
from vlmkit.training import checkpoint as ckpt
from vlmkit.training.accelerator import fill_deepspeed_auto
from vlmkit.training.optim import build_optimizer, param_groups
from vlmkit.training.precision import upcast_trainable_parameters
from vlmkit.training.reporting import LOG_FILE, JsonlLog
from vlmkit.training.stepping import OptimizerStepper, ensure_finite_weights

logger = logging.getLogger(__name__)

# compute_loss(model, batch) -> (sum of per-item losses, dict of extra scalars to log). Extras are averaged over
# the micro-batches of a step, then over processes, except counts (names ending in "_count"), which are summed.
LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
CountFn = Callable[[dict], int]


@dataclass
class TrainResult:
    """What `train` hands back; `model` is the prepared (possibly wrapped) model to save from."""

    model: torch.nn.Module
    global_step: int
    bad_steps: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


def count_supervised_tokens(batch: dict) -> int:
    """Items for a causal-LM batch: labels that are not -100 after the one-token shift."""
    if batch.get("empty"):
        return 0
    return int((batch["labels"][:, 1:] != -100).sum())


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute the language model's activations in the backward pass (less memory, ~30% more compute)."""
    lm = getattr(model, "language_model", model)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _zero_touch(model: torch.nn.Module) -> torch.Tensor:
    return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)


def train(
    cfg,
    accelerator,
    model: torch.nn.Module,
    dataset: Dataset,
    collate_fn: Callable,
    compute_loss: LossFn,
    count_items: CountFn = count_supervised_tokens,
    *,
    lr_overrides: dict[str, float] | None = None,
    extra_state: dict | None = None,
    sampler: Sampler | None = None,
) -> TrainResult:
    """Train `model` on `dataset`; the TrainResult carries the prepared model (save and evaluate that one).

    `cfg` carries RunArgs + OptimArgs fields. `extra_state` objects with state_dict()/load_state_dict()
    (numbers, strings, lists, dicts, tensors; e.g. a KL controller) are checkpointed too. An atomic
    checkpoint is written every `save_steps`; `resume_from_checkpoint` (a dir or "latest") continues
    exactly: same data order, RNG, optimizer, schedule and accumulation position, so the result equals
    an uninterrupted run.
    A non-finite loss/gradient skips the update (counted in `bad_steps`); `max_bad_steps` in a row stop
    the run with NonFiniteLossError, leaving the newest checkpoint (from before them) in place. Weights
    that became non-finite stop the run with NonFiniteWeightsError and are never saved (see `stepping`).
    Skipped samples that DataLoader workers report in `batch["skipped"]` are added to `dataset.skips`.
    """
    output_dir = Path(cfg.output_dir)
    gas = cfg.gradient_accumulation_steps
    sampler = sampler or EpochSampler(len(dataset), cfg.seed)
    skips = getattr(dataset, "skips", None)
    if skips is not None:  # skips counted in DataLoader workers come back with the batches
        collate_fn = SkipReportingCollate(collate_fn, skips)
    # Its own generator: starting an epoch must not draw from the global RNG (dropout's), or a resumed
    # run, which starts its iterator at another moment, would see a shifted random stream.
    loader = DataLoader(
        dataset, batch_size=cfg.per_device_train_batch_size, sampler=sampler, collate_fn=collate_fn,
        drop_last=True, num_workers=cfg.dataloader_num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # fmt: skip
    per_rank_batches = len(loader) // accelerator.num_processes
    if per_rank_batches == 0:
        raise ValueError(
            f"{len(dataset)} training samples are fewer than one batch of {cfg.per_device_train_batch_size} "
            f"x {accelerator.num_processes} processes"
        )
    if cfg.max_steps > 0:
        total_steps = cfg.max_steps
    else:
        total_steps = max(1, math.ceil(cfg.num_train_epochs * per_rank_batches / gas))
    upcast_trainable_parameters(model, accelerator)
    groups = param_groups(model, cfg.learning_rate, cfg.weight_decay, lr_overrides)
    optimizer, scheduler = build_optimizer(
        groups, cfg.learning_rate, cfg.lr_scheduler_type, int(cfg.warmup_ratio * total_steps), total_steps
    )
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    fill_deepspeed_auto(accelerator, max_grad_norm=cfg.max_grad_norm)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    start_trackers(accelerator, cfg)
    geometry = {
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": gas,
        "num_processes": accelerator.num_processes,
        "seed": cfg.seed,
        "total_steps": total_steps,
    }
    checkpoints = Checkpointer(
        accelerator, model, cfg, {"scheduler": scheduler, **(extra_state or {})}, geometry
    )
    start_step = checkpoints.resume(total_steps)
    log = StepLog(accelerator, cfg, total_steps, resume_step=checkpoints.resumed_step)
    stepper = OptimizerStepper(
        accelerator, model, optimizer, max_grad_norm=cfg.max_grad_norm, max_bad_steps=cfg.max_bad_steps,
        output_dir=output_dir,
    )  # fmt: skip

    def micro_batches() -> Iterator[dict]:
        epoch, skip = divmod(start_step * gas, per_rank_batches)
        while True:
            loader.set_epoch(epoch)
            sampler.resume_at(epoch, skip * cfg.per_device_train_batch_size * accelerator.num_processes)
            for batch in loader:
                skipped = batch.pop("skipped", None)  # media that failed in a worker process
                if skipped and skips is not None:
                    skips.absorb(skipped)
                yield batch
            epoch, skip = epoch + 1, 0

    from tqdm.auto import tqdm

    progress = tqdm(
        total=total_steps, initial=start_step, disable=not (accelerator.is_local_main_process and sys.stderr.isatty()),
        desc=Path(cfg.output_dir).name, dynamic_ncols=True,
    )  # fmt: skip
    result = TrainResult(model=model, global_step=start_step)
    stream = micro_batches()
    t0 = time.perf_counter()
    model.train()
    for step in range(start_step, total_steps):
        window = [next(stream) for _ in range(gas)]
        total_items = stepper.begin(sum(count_items(b) for b in window), step + 1)
        if total_items == 0:
            raise ValueError(
                f"step {step + 1}: zero supervised items in the whole batch (every label is masked); "
                "check the data and the chat template"
            )
        extras: dict[str, float] = {}
        for batch in window:
            with accelerator.accumulate(model):
                if batch.get("empty"):
                    loss_sum, extra = _zero_touch(model), {}
                else:
                    loss_sum, extra = compute_loss(model, batch)
                stepper.backward(loss_sum)
                for k, v in extra.items():
                    extras[k] = extras.get(k, 0.0) + float(v) / gas
        scheduler.step()
        extras = reduce_extras(accelerator, extras)
        result.global_step, result.bad_steps = step + 1, stepper.bad_steps
        outcome = stepper.outcome
        record = {
            "step": step + 1,
            "loss": outcome.loss,
            "lr": scheduler.get_last_lr()[0],
            "items": total_items,
            "total_steps": total_steps,
            **extras,
        }
        if outcome.grad_norm is not None:
            record["grad_norm"] = outcome.grad_norm
        if outcome.verdict != "ok":
            record["skipped"] = outcome.verdict
        result.history.append(record)
        progress.update(1)
        progress.set_postfix(loss=f"{outcome.loss:.4f}")
        log.write(record)
        # During a run of bad steps no checkpoint is written: the newest one stays from before it.
        checkpoints.maybe_save(step + 1, total_steps, healthy=not stepper.consecutive_bad)
    progress.close()
    ensure_finite_weights(accelerator, model, "the trained model", output_dir)
    result.train_seconds = time.perf_counter() - t0
    return result


class Checkpointer:
    """Resume and periodic checkpoints of one loop (SFT-style `train`, PPO, GRPO).

    `stateful` objects with state_dict()/load_state_dict() (scheduler, KL controller...) are saved as
    JSON + safetensors beside accelerate's files; `geometry` (batch size, processes, seed...) is recorded
    and a change is warned about on resume. Non-finite weights are never checkpointed.
    """

    def __init__(
        self, accelerator, model: torch.nn.Module, cfg, stateful: dict, geometry: dict | None = None
    ):
        self.accelerator, self.model, self.cfg = accelerator, model, cfg
        self.stateful, self.geometry = stateful, geometry
        self.output_dir = Path(cfg.output_dir)
        self.resume_dir: Path | None = None
        self._start = 0

    @property
    def resumed_step(self) -> int | None:
        """The step resumed from, None for a fresh run."""
        return self._start if self.resume_dir is not None else None

    def resume(self, total_steps: int) -> int:
        """Restore `resume_from_checkpoint` (a dir or "latest", the newest intact one); returns the step."""
        self._start = 0
        self.resume_dir = ckpt.resolve_resume(self.output_dir, self.cfg.resume_from_checkpoint)
        if self.resume_dir is None:
            if self.cfg.resume_from_checkpoint:
                logger.info("no complete checkpoint in %s: starting from step 0", self.output_dir)
            return 0
        self._start = restore_checkpoint(self.accelerator, self.resume_dir, self.stateful, self.geometry)
        if self._start >= total_steps:
            raise ValueError(
                f"{self.resume_dir} is at step {self._start}, not before the last step {total_steps}: "
                "nothing to train; raise --max_steps to continue training"
            )
        return self._start

    def maybe_save(self, step: int, total_steps: int, *, healthy: bool = True) -> Path | None:
        """Save checkpoint-<step> every `save_steps` (not at the last step, not during a bad streak)."""
        save_steps = self.cfg.save_steps
        if not (save_steps > 0 and step % save_steps == 0 and step < total_steps and healthy):
            return None
        ensure_finite_weights(self.accelerator, self.model, f"checkpoint {step}", self.output_dir)
        state = checkpoint_state(self.stateful, self.geometry)
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            step,
            self.cfg.save_total_limit,
            keep=self.resume_dir,
            state=state,
        )


class StepLog:
    """The per-step log: `train_log.jsonl` and the Accelerate trackers, on the first step, every
    `logging_steps` and the last step (main process only)."""

    def __init__(self, accelerator, cfg, total_steps: int, resume_step: int | None = None):
        self.accelerator, self.total_steps = accelerator, total_steps
        self.every = max(1, cfg.logging_steps)
        self.file = None
        if accelerator.is_main_process:
            self.file = JsonlLog(Path(cfg.output_dir) / LOG_FILE, resume_step=resume_step)

    def write(self, record: dict) -> None:
        step = record["step"]
        if self.file is None or not (step % self.every == 0 or step == self.total_steps or step == 1):
            return
        self.file.write(record)
        self.accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)


SUMMED_EXTRA_SUFFIX = "_count"


def reduce_extras(accelerator, extras: dict[str, float]) -> dict[str, float]:
    """This process's per-step extras -> the whole step's, identical on every process: each scalar is the mean
    over the processes that logged it, a count (name ending in "_count") the sum. Every process must call it."""
    if accelerator.num_processes == 1:
        return extras
    from accelerate.utils import gather_object

    # A process whose micro-batches were all skipped logged nothing: agree on the names first.
    names = sorted(set().union(*gather_object([sorted(extras)])))
    if not names:
        return extras
    local = [[extras.get(k, 0.0), float(k in extras)] for k in names]
    totals = accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=accelerator.device), "sum")
    return {
        name: total if name.endswith(SUMMED_EXTRA_SUFFIX) else total / count
        for name, (total, count) in zip(names, totals.tolist())
        if count > 0
    }


def start_trackers(accelerator, cfg) -> None:
    """Start the Accelerate trackers of `report_to` (TensorBoard under output_dir/runs) with the config."""
    if not accelerator.is_main_process or not getattr(accelerator, "log_with", None) or accelerator.trackers:
        return
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(vars(cfg))
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in values.items()}
    accelerator.init_trackers("runs", config=hparams)


def checkpoint_state(stateful: dict, geometry: dict | None = None) -> dict:
    """What a checkpoint saves besides accelerate's files: each object's `state_dict()` + run settings."""
    return {"objects": {k: obj.state_dict() for k, obj in stateful.items()}, **(geometry or {})}


def restore_checkpoint(accelerator, resume_dir: Path, stateful: dict, geometry: dict | None = None) -> int:
    """Load a checkpoint written by `save_checkpoint(..., state=checkpoint_state(...))`; returns its step.

    Accelerate restores model, optimizer, RNG states and the accumulation position; the objects in
    `stateful` (scheduler, KL controller...) come back from JSON and safetensors, never a pickle. Use
    this instead of `accelerator.register_for_checkpointing`, whose files accelerate reloads with
    torch.load(weights_only=False).
    """
    state = ckpt.read_checkpoint_state(resume_dir)
    changed = {k: (state[k], v) for k, v in (geometry or {}).items() if k in state and state[k] != v}
    if changed:
        logger.warning(
            "resuming %s with changed settings %s (saved, now): data order or schedule will differ from "
            "an uninterrupted run", resume_dir, changed,
        )  # fmt: skip
    saved = state.get("objects", {})
    missing = sorted(set(stateful) - set(saved))
    if missing:
        raise ValueError(
            f"{resume_dir}: the checkpoint has no saved state for {missing} (saved: {sorted(saved)}); "
            "it was written by another recipe or version, resume from a checkpoint of this run"
        )
    accelerator.load_state(str(resume_dir))
    for name, obj in stateful.items():
        obj.load_state_dict(saved[name])
    logger.info("resumed from %s at step %d", resume_dir, state["step"])
    return int(state["step"])


def save_checkpoint(
    accelerator,
    output_dir: Path,
    step: int,
    limit: int,
    keep: Path | None = None,
    state: dict | None = None,
) -> Path:
    """Atomic `save_state` into checkpoint-<step>; a failure (disk full) leaves earlier checkpoints intact.

    `state` (scheduler/extra objects and run settings: JSON values and tensors) is saved with it.
    """
    import shutil

    output_dir = Path(output_dir)
    ckpt.split_tensors(state or {})  # an unsupported value fails here, before anything is written
    tmp = ckpt.tmp_checkpoint_dir(output_dir, step)
    final = output_dir / f"checkpoint-{step}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # left over from a run killed mid-write
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        ckpt.pause_for_fault_injection(step)
        if accelerator.is_main_process:
            final = ckpt.finalize_checkpoint(output_dir, tmp, step, state or {})
            ckpt.rotate_checkpoints(output_dir, limit, keep=keep)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = ckpt.list_checkpoints(output_dir)
        kept = previous[-1] if previous else "none"
        raise RuntimeError(
            f"could not write checkpoint {step} in {output_dir}: {err}. Earlier checkpoints are intact "
            f"(newest complete: {kept}); free disk space and resume with --resume_from_checkpoint latest"
        ) from err
    accelerator.wait_for_everyone()
    return final
