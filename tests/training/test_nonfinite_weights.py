"""Weights that became inf/NaN (what `--learning_rate inf` does) are never saved; the run fails clearly.

The optimizer is made to blow the weights up on one update, independently of any parse-time check of the
learning rate: with four bad steps in a row under max_bad_steps the run used to finish and save them.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers.tiny_loop import config, run
from vlmkit.training import checkpoint as ckpt
from vlmkit.training import loop
from vlmkit.training.stepping import NonFiniteWeightsError


def _blow_up_on_update(monkeypatch, update: int) -> None:
    """The optimizer's `update`-th step leaves every weight at inf, as an infinite learning rate does."""
    real = loop.build_optimizer

    def build(*args, **kwargs):
        optimizer, scheduler = real(*args, **kwargs)
        step, calls = optimizer.step, []

        def blowing_up_step(*a, **k):
            out = step(*a, **k)
            calls.append(1)
            if len(calls) == update:
                with torch.no_grad():
                    for group in optimizer.param_groups:
                        for p in group["params"]:
                            p.fill_(math.inf)
            return out

        optimizer.step = blowing_up_step
        return optimizer, scheduler

    monkeypatch.setattr(loop, "build_optimizer", build)


def test_blown_up_weights_stop_the_run_at_the_next_step(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _blow_up_on_update(monkeypatch, 3)
    with pytest.raises(NonFiniteWeightsError) as info:
        run(config(out, max_steps=20, save_steps=2, max_bad_steps=5))
    message = str(info.value)
    assert "inf/NaN" in message and "learning rate" in message
    assert f"newest intact checkpoint is {out / 'checkpoint-2'}" in message
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]  # step 4 never saved


def test_blown_up_weights_are_not_checkpointed(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _blow_up_on_update(monkeypatch, 4)  # the last update before checkpoint-4
    with pytest.raises(NonFiniteWeightsError, match="checkpoint 4 is not saved"):
        run(config(out, max_steps=20, save_steps=2, max_bad_steps=5))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-2"]


def test_blown_up_weights_on_the_last_step_are_not_returned(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _blow_up_on_update(monkeypatch, 5)
    with pytest.raises(NonFiniteWeightsError, match="the trained model is not saved"):
        run(config(out, max_steps=5, save_steps=0))
    assert not ckpt.list_checkpoints(out)


def test_a_healthy_run_is_untouched(tmp_path):
    result = run(config(tmp_path / "run", max_steps=5, save_steps=2))
    assert result.global_step == 5 and result.bad_steps == 0
