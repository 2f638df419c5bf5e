"""Optimizer parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

SCHEDULES = ("cosine", "linear", "constant")


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, lr_overrides: dict[str, float] | None = None
) -> list[dict]:
    """AdamW groups: no decay on biases/norms; parameters under a prefix in `lr_overrides` get that lr.

    `lr_overrides={"connector.": 1e-3}` gives the connector its own learning rate.
    """
    lr_overrides = lr_overrides or {}
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        group_lr = next((v for k, v in lr_overrides.items() if name.startswith(k)), lr)
        decay = 0.0 if (p.ndim < 2 or "norm" in name.lower()) else weight_decay
        groups.setdefault((group_lr, decay), []).append(p)
    if not groups:
        raise ValueError("no trainable parameters: check the stage's freezing and LoRA settings")
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the peak lr at each step: linear warm-up, then cosine/linear decay to 0, or constant."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr_scheduler_type '{schedule}'; valid: {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(groups: list[dict], lr: float, schedule: str, warmup_steps: int, total_steps: int):
    """AdamW + LambdaLR."""
    fused = torch.cuda.is_available()
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup_steps, total_steps))
    return optimizer, scheduler
