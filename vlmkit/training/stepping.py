"""The guarded optimizer update every training loop shares (SFT-style `train`, PPO, GRPO).

One update accumulates micro-batches; their losses are sums over items (e.g. supervised tokens) and are
normalised by the items of the whole update across micro-batches and processes, so batch 8 x
accumulation 1 and batch 1 x accumulation 8 give the same update:

    stepper = OptimizerStepper(accelerator, model, optimizer, max_grad_norm=1.0, max_bad_steps=5)
    total_items = stepper.begin(local_items, step)
    for batch in micro_batches:
        with accelerator.accumulate(model):
            stepper.backward(loss_sum(batch))  # the last one clips, judges and steps
    stepper.outcome  # StepOutcome(loss, grad_norm, verdict)

The NaN/inf guard: an update with a non-finite loss or gradient is skipped and counted (`bad_steps`);
`max_bad_steps` in a row raise NonFiniteLossError. Weights that are no longer finite (an update that
blew them up, e.g. an enormous learning rate) raise NonFiniteWeightsError as soon as a bad update is
seen, and `ensure_finite_weights` keeps them out of checkpoints and results.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmkit.training import checkpoint as ckpt

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive optimizer steps with a non-finite loss or gradient."""


class NonFiniteWeightsError(RuntimeError):
    """The model's weights hold inf or NaN; they are never saved as a checkpoint or a result."""


def classify_step(loss: float, grad_norm, loss_scale: float | None = None) -> str:
    """Verdict on one optimizer step: "ok", "overflow" or "bad" (update skipped, counted).

    "overflow": under fp16 loss scaling (`loss_scale` >= 1) a non-finite gradient with a finite loss;
    the scaler skips that update and lowers its scale, which is routine, not divergence.
    `grad_norm` None (DeepSpeed may not report it) counts as finite.
    """
    if not math.isfinite(loss):
        return "bad"
    if grad_norm is None or math.isfinite(float(grad_norm)):
        return "ok"
    if loss_scale is not None and loss_scale >= 1.0:
        return "overflow"
    return "bad"


def loss_scale(accelerator) -> float | None:
    """The fp16 loss scale in use (native GradScaler), inf for DeepSpeed's own fp16 scaler, else None.

    Under DeepSpeed the engine steps inside `backward`, so the guard counts bad steps but cannot undo them.
    """
    if accelerator.scaler is not None:
        return float(accelerator.scaler.get_scale())
    if accelerator.distributed_type == "DEEPSPEED" and accelerator.mixed_precision == "fp16":
        return math.inf
    return None


def weights_are_finite(accelerator, model: torch.nn.Module) -> bool:
    """True when every parameter is finite on every process (collective: call it on all ranks).

    Under ZeRO-3 (`ds_tensor`) and FSDP2 (DTensor `to_local()`) each rank checks its own shard."""
    bad = 0
    with torch.no_grad():
        for p in model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else getattr(p, "ds_tensor", p)
            if local.numel() and not bool(torch.isfinite(local).all()):
                bad += 1
    total = accelerator.reduce(torch.tensor(float(bad), device=accelerator.device), "sum")
    return float(total) == 0


def newest_checkpoint_note(output_dir: Path) -> str:
    """Where to resume from after a failure: the newest intact checkpoint, or why there is none."""
    try:
        newest = ckpt.newest_intact(output_dir)
    except ckpt.DamagedCheckpointError as err:
        return f"no intact checkpoint to resume from ({err})"
    if newest is None:
        return "no checkpoint was saved before this (see --save_steps)"
    return f"the newest intact checkpoint is {newest} (finite weights, files verified)"


def ensure_finite_weights(accelerator, model: torch.nn.Module, what: str, output_dir: Path) -> None:
    """Raise NonFiniteWeightsError instead of saving non-finite weights as `what`."""
    if not weights_are_finite(accelerator, model):
        raise NonFiniteWeightsError(
            f"the weights hold inf/NaN values, so {what} is not saved; an update blew them up (is the "
            f"learning rate far too large?). {newest_checkpoint_note(output_dir).capitalize()}."
        )


@dataclass
class StepOutcome:
    """One optimizer update: mean loss per item (all processes), gradient norm, verdict."""

    loss: float = math.nan
    grad_norm: float | None = None
    verdict: str = "ok"


class OptimizerStepper:
    """Token-normalised accumulation, clipping and the NaN/inf guard around `optimizer.step()`.

    `bad_steps` counts skipped updates, `consecutive_bad` the current streak (no checkpoint is written
    during one, so the newest checkpoint stays from before it).
    """

    def __init__(
        self,
        accelerator,
        model: torch.nn.Module,
        optimizer,
        *,
        max_grad_norm: float,
        max_bad_steps: int,
        output_dir: str | Path,
    ):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.max_grad_norm, self.max_bad_steps = max_grad_norm, max_bad_steps
        self.output_dir = Path(output_dir)
        self.bad_steps = self.consecutive_bad = 0
        self.outcome = StepOutcome()
        self._step, self._items, self._scale = 0, 0.0, 0.0
        self._loss_total: torch.Tensor | None = None

    def begin(self, local_items: float, step: int) -> float:
        """Start update `step` (1-based, for messages); returns its items summed over processes."""
        acc = self.accelerator
        total = acc.reduce(torch.tensor(float(local_items), device=acc.device), "sum").item()
        self._step, self._items = step, total
        # accelerator.backward divides by the accumulation steps and DDP averages over processes:
        # undo both and divide by the items of the whole update.
        self._scale = acc.gradient_accumulation_steps * acc.num_processes / total if total else 0.0
        self._loss_total = torch.zeros((), device=acc.device)
        self.outcome = StepOutcome()
        return total

    def backward(self, loss_sum: torch.Tensor) -> None:
        """Backward of one micro-batch's summed loss, inside `accelerator.accumulate(model)`; at the
        accumulation boundary: reduce the loss, clip, judge the update and step unless it is bad."""
        acc = self.accelerator
        acc.backward(loss_sum * self._scale)
        self._loss_total += loss_sum.detach().float()
        if acc.sync_gradients:
            loss = acc.reduce(self._loss_total, "sum").item() / self._items
            # Always measured (inf = no clipping) so a non-finite gradient is caught either way.
            max_norm = self.max_grad_norm if self.max_grad_norm > 0 else math.inf
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
            verdict = classify_step(loss, grad_norm, loss_scale(acc))
            if verdict == "ok" or acc.scaler is not None:
                self.optimizer.step()  # with a loss scaler (fp16) the scaler skips a non-finite update
            self.outcome = StepOutcome(loss, None if grad_norm is None else float(grad_norm), verdict)
            self._judge(verdict, loss)
        self.optimizer.zero_grad(set_to_none=True)

    def _judge(self, verdict: str, loss: float) -> None:
        if verdict == "ok":
            self.consecutive_bad = 0
            return
        if verdict == "overflow":
            logger.info("step %d: fp16 gradient overflow; the loss scaler skipped the update", self._step)
            return
        self.consecutive_bad += 1
        self.bad_steps += 1
        logger.warning(
            "step %d: non-finite loss or gradient; update skipped (%d in a row, max_bad_steps=%d)",
            self._step, self.consecutive_bad, self.max_bad_steps,
        )  # fmt: skip
        # A bad update right after one that blew the weights up: stop now, nothing more can be learnt.
        ensure_finite_weights(self.accelerator, self.model, "the model", self.output_dir)
        if self.consecutive_bad >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{self.consecutive_bad} consecutive steps with a non-finite loss or gradient (last at step "
                f"{self._step}, loss {loss}); stopping. No checkpoint was written during them: "
                f"{newest_checkpoint_note(self.output_dir)}. Lower the learning rate, check the data, or "
                "resume with --resume_from_checkpoint latest."
            )
