"""Learning-rate schedules and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlmkit.training.optim import build_optimizer, lr_lambda, param_groups


def test_cosine_with_warmup_values():
    f = lr_lambda("cosine", warmup_steps=4, total_steps=14)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.5)  # halfway through the decay
    assert f(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert f(14) == pytest.approx(0.0, abs=1e-12)
    assert f(20) == pytest.approx(0.0, abs=1e-12)  # clamped past the end
    decay = [f(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_linear_constant_and_no_warmup():
    lin = lr_lambda("linear", warmup_steps=0, total_steps=10)
    assert [lin(s) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    const = lr_lambda("constant", warmup_steps=2, total_steps=10)
    assert [const(s) for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown lr_scheduler_type 'step'; valid: cosine, linear, constant"):
        lr_lambda("step", 0, 10)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.connector = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.embed = nn.Embedding(10, 4)
        self.input_layernorm = nn.Module()
        self.input_layernorm.weight = nn.Parameter(torch.ones(4, 4))  # 2-D, but a norm by name
        self.proj = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _group_of(groups, param):
    return next(g for g in groups if any(p is param for p in g["params"]))


def test_param_groups_decay_and_connector_lr():
    model = _Toy()
    groups = param_groups(model, lr=1e-4, weight_decay=0.1, lr_overrides={"connector.": 1e-2})
    cases = {
        model.connector[0].weight: (1e-2, 0.1),
        model.connector[0].bias: (1e-2, 0.0),
        model.connector[1].weight: (1e-2, 0.0),
        model.connector[1].bias: (1e-2, 0.0),
        model.embed.weight: (1e-4, 0.1),
        model.input_layernorm.weight: (1e-4, 0.0),
        model.proj.weight: (1e-4, 0.1),
        model.proj.bias: (1e-4, 0.0),
    }
    for param, (lr, wd) in cases.items():
        group = _group_of(groups, param)
        assert (group["lr"], group["weight_decay"]) == (lr, wd)
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(cases)  # frozen parameters are left out, nothing twice
    assert not any(p is model.frozen.weight for p in grouped)


def test_no_trainable_parameters_is_an_error():
    model = _Toy().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(model, 1e-3, 0.0)


def test_optimizer_follows_the_schedule_per_group():
    model = _Toy()
    groups = param_groups(model, lr=1e-3, weight_decay=0.0, lr_overrides={"connector.": 1e-2})
    optimizer, scheduler = build_optimizer(groups, 1e-3, "cosine", warmup_steps=2, total_steps=6)
    f = lr_lambda("cosine", 2, 6)
    seen = []
    for step in range(6):
        seen.append(sorted(g["lr"] for g in optimizer.param_groups))
        assert seen[-1] == pytest.approx(sorted([1e-3 * f(step), 1e-2 * f(step)]))
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx([5e-4, 5e-3]) and seen[1] == pytest.approx([1e-3, 1e-2])
