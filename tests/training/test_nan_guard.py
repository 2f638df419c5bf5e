"""NaN guards: a non-finite loss or gradient skips the update and is counted; a streak stops the run.

What only a GPU can check: on CPU `mixed_precision` fp16/bf16 fall back to fp32 (no autocast, no loss
scaler), so the fp16 path where a real GradScaler meets an overflow (the scaler skips the update and halves
its scale, the loop counts it as "overflow", not "bad") is covered here by `classify_step` with a CPU
GradScaler's scale, not by an fp16 training run; likewise DeepSpeed's own fp16 scaler. bf16 has no
scaler: its non-finite steps are "bad" as in fp32.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import tiny_loop
from vlmkit.training import checkpoint as ckpt
from vlmkit.training.accelerator import resolve_mixed_precision
from vlmkit.training.stepping import NonFiniteLossError, classify_step


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss with a poisoned gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


def _poisoned(bad_calls: set[int] | None = None, from_call: int | None = None, grad_only: bool = False):
    """A compute_loss that returns NaN (or a NaN gradient) on chosen calls; records weights per call."""
    snapshots: list[dict[str, torch.Tensor]] = []

    def compute_loss(model, batch):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        call = len(snapshots)
        poisoned = call in (bad_calls or set()) or (from_call is not None and call >= from_call)
        if poisoned and grad_only:
            pred = _NanGrad.apply(model(batch["x"]).squeeze(-1))
            return ((pred - batch["y"]) ** 2).sum(), {}
        loss, extra = tiny_loop.mse_sum(model, batch)
        return (loss * math.nan if poisoned else loss), extra

    return compute_loss, snapshots


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("grad_only", [False, True], ids=["nan-loss", "nan-gradient"])
def test_a_non_finite_step_is_skipped_counted_and_training_goes_on(tmp_path, grad_only):
    # max_grad_norm=0 (no clipping): the gradient norm is still measured, so a NaN gradient is caught
    cfg = tiny_loop.config(tmp_path / "run", max_steps=5, save_steps=0, max_grad_norm=0.0)
    compute_loss, snaps = _poisoned(bad_calls={3}, grad_only=grad_only)
    result = tiny_loop.run(cfg, compute_loss)
    assert result.bad_steps == 1 and result.global_step == 5
    assert [r.get("skipped") for r in result.history] == [None, None, "bad", None, None]
    assert _same(snaps[2], snaps[3])  # step 3 changed nothing
    assert not _same(snaps[3], snaps[4])  # step 4 trained again
    final = tiny_loop.weights(result)
    assert all(torch.isfinite(v).all() for v in final.values())
    assert math.isfinite(result.history[-1]["loss"])


def test_consecutive_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_loop.config(out, max_steps=20, save_steps=2, max_bad_steps=3)
    compute_loss, snaps = _poisoned(from_call=5)
    with pytest.raises(NonFiniteLossError) as info:
        tiny_loop.run(cfg, compute_loss)
    message = str(info.value)
    assert "3 consecutive steps" in message and "step 7" in message
    assert str(out / "checkpoint-4") in message
    # no checkpoint was written during the bad streak (step 6); checkpoint-4 is complete and holds the
    # weights the run had when it stopped (the bad steps changed nothing)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    saved = load_file(out / "checkpoint-4" / "model.safetensors")
    assert all(torch.equal(saved[k], snaps[4][k]) and torch.isfinite(saved[k]).all() for k in saved)
    assert _same(snaps[4], snaps[-1])

    cfg.resume_from_checkpoint = "latest"  # the data/lr fixed: resume from the last good checkpoint
    result = tiny_loop.run(cfg)
    assert result.global_step == 20 and result.bad_steps == 0


def test_classify_step_with_and_without_a_loss_scaler():
    assert classify_step(1.0, torch.tensor(2.0)) == "ok"
    assert classify_step(1.0, None) == "ok"  # DeepSpeed may not report a norm
    assert classify_step(math.nan, torch.tensor(2.0)) == "bad"
    assert classify_step(math.inf, None) == "bad"
    assert classify_step(1.0, torch.tensor(math.inf)) == "bad"  # fp32 / bf16: no scaler
    scale = torch.amp.GradScaler("cpu", init_scale=2.0**16).get_scale()
    assert classify_step(1.0, torch.tensor(math.inf), scale) == "overflow"  # fp16: the scaler skips
    assert classify_step(math.nan, torch.tensor(math.inf), scale) == "bad"  # a NaN loss is never routine
    assert classify_step(1.0, torch.tensor(math.nan), 0.5) == "bad"  # scale < 1: not an overflow


def test_mixed_precision_falls_back_to_fp32_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    assert resolve_mixed_precision("fp16") == resolve_mixed_precision("bf16") == "no"
    result = tiny_loop.run(tiny_loop.config(tmp_path / "run", max_steps=2, mixed_precision="fp16"))
    assert result.model.weight.dtype == torch.float32
