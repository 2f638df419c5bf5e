"""Putting a learned reward and the critic started from it on the scale of PPO's returns.

A stage-3 reward model scores on an arbitrary scale (Bradley-Terry fixes only differences: the digits model
spans about -7 to +3), while PPO's hyperparameters (KL coefficient and target, value clip range, value-loss
weight) are set in reward units of order 1. Two fixed affine maps, both taken once at the start of training:

1. score normalisation: ``s' = (s - mu) / sigma`` with mu and sigma the scores of the first rollout batch (the
   starting policy's). Fixed, not running, statistics keep the objective stationary; an affine map with
   sigma > 0 leaves the reward model's preferences unchanged and sets the KL coefficient's exchange rate.
2. critic calibration: the critic's head ``v(h) = w.h + b`` becomes ``a * v(h) + c`` with ``(a, c)`` the least-
   squares fit of the first batch's Monte-Carlo returns ``G_t`` on its values ``v_t`` over every response token:
   ``a = Cov(v, G) / Var(v)``, ``c = mean(G) - a * mean(v)``. Least squares with an intercept leaves residuals
   of variance ``(1 - rho^2) Var(G)``, so the first batch's explained variance is ``rho^2 >= 0``, whatever the
   reward model's scale, its offset, or how well its score of a partial response predicts the final one.
   Being the head's own linear map (``w <- a w``, ``b <- a b + c``), it needs no new parameters.
Shapes: B responses, T response tokens.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from vlmkit.rlhf.ppo_math import compute_gae


def monte_carlo_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """(B, T) discounted sum of the rewards from each valid token to the end of its response (no critic)."""
    return compute_gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[1]


def affine_fit_sums(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """(5,) float64 sums over valid tokens: count, sum v, sum G, sum v^2, sum v*G (add them across processes)."""
    m = mask.bool()
    v, g = values[m].double(), returns[m].double()
    return torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64), v.sum(), g.sum(), (v * v).sum(),
                        (v * g).sum()])  # fmt: skip


def solve_affine_fit(sums: Tensor, eps: float = 1e-12) -> tuple[float, float]:
    """(a, c) minimising sum (G - a v - c)^2 from `affine_fit_sums`; a = 1 when the values do not vary."""
    n, sv, sg, svv, svg = (float(x) for x in sums)
    if n == 0:
        raise ValueError("no response tokens to fit the critic on")
    mean_v, mean_g = sv / n, sg / n
    var_v = svv / n - mean_v**2
    scale = (svg / n - mean_v * mean_g) / var_v if var_v > eps * max(1.0, svv / n) else 1.0
    return scale, mean_g - scale * mean_v


@torch.no_grad()
def rescale_linear_(head: nn.Linear, scale: float, shift: float) -> None:
    """In place: head(x) becomes scale * head(x) + shift (gathered and written on every rank under ZeRO-3)."""
    params = [head.weight, head.bias]
    gathered = nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    with gathered:
        head.weight.mul_(scale)
        head.bias.mul_(scale).add_(shift)


class RewardScale:
    """The two fixed maps of the module docstring; `state_dict` keeps them in checkpoints (JSON), so a resumed run
    normalises as the uninterrupted one and never calibrates the critic twice."""

    def __init__(self, normalize_scores: bool, calibrate_critic: bool):
        self.normalize_scores, self.calibrate_critic = normalize_scores, calibrate_critic
        self.mean: float | None = None
        self.std: float | None = None
        self.critic_fit: tuple[float, float] | None = None

    @property
    def needs_statistics(self) -> bool:
        return self.normalize_scores and self.mean is None

    def fit(self, all_scores: Tensor) -> None:
        """Take the mean and std of `all_scores` (every process's first batch, (N,)); a zero std counts as 1."""
        std = all_scores.double().std().item() if all_scores.numel() > 1 else 0.0
        self.mean, self.std = (
            all_scores.double().mean().item(),
            std if math.isfinite(std) and std > 0 else 1.0,
        )

    def normalize(self, scores: Tensor) -> Tensor:
        """`scores` (B,) standardised with the fitted statistics; unchanged when normalisation is off."""
        if not self.normalize_scores:
            return scores
        if self.mean is None:
            raise RuntimeError("RewardScale.normalize before fit: fit it on the first batch's scores")
        return (scores - self.mean) / self.std

    @property
    def critic_pending(self) -> bool:
        return self.calibrate_critic and self.critic_fit is None

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "critic_fit": self.critic_fit}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.std = state.get("mean"), state.get("std")
        fit = state.get("critic_fit")
        self.critic_fit = tuple(fit) if fit is not None else None
