"""Per-token KL estimators and the KL-penalty coefficient controllers used by PPO.

The estimators follow John Schulman's note "Approximating KL Divergence" (2020). With samples
drawn from the policy p and log-ratio ``log(p / p_ref) = logprobs - ref_logprobs``:

- ``k1 = log(p / p_ref)``: unbiased for KL(p || p_ref), high variance, can be negative per token.
- ``k2 = 0.5 * log(p / p_ref) ** 2``: biased, low variance, always >= 0.
- ``k3 = (r - 1) - log(r)`` with ``r = p_ref / p``: unbiased and always >= 0.

The controllers follow Ziegler et al. (2019), "Fine-Tuning Language Models from Human Preferences".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def _k1(log_ratio: Tensor) -> Tensor:
    return log_ratio


def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio.pow(2)


def _k3(log_ratio: Tensor) -> Tensor:
    # r = p_ref / p = exp(-log_ratio); (r - 1) - log r = exp(-log_ratio) - 1 + log_ratio.
    # expm1 keeps precision when p and p_ref are close (the usual case late in training).
    return torch.expm1(-log_ratio) + log_ratio


def _require_keys(state: dict[str, Any], keys: tuple[str, ...], owner: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"{owner} state_dict is missing {missing}; got keys {sorted(state)}")


KL_ESTIMATORS: dict[str, Callable[[Tensor], Tensor]] = {"k1": _k1, "k2": _k2, "k3": _k3}


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probabilities.

    Args:
        logprobs: (B, T) log p(token) under the policy that sampled the tokens.
        ref_logprobs: (B, T) log p_ref(token) under the frozen reference model.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module docstring).

    Returns:
        (B, T) per-token estimate; padding positions are not masked here.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid names: {sorted(KL_ESTIMATORS)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must have the same shape"
        )
    return KL_ESTIMATORS[estimator](logprobs - ref_logprobs)


class FixedKLController:
    """A KL coefficient that never changes; ``update`` is accepted and ignored."""

    def __init__(self, coef: float):
        if coef < 0:
            raise ValueError(f"KL coefficient must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op, kept so that fixed and adaptive controllers are interchangeable."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: ``{"value": float}``."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the coefficient saved by ``state_dict``."""
        _require_keys(state, ("value",), type(self).__name__)
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional controller steering the observed KL towards ``target`` (Ziegler et al., 2019).

    On each ``update``: ``e = clip(current_kl / target - 1, -0.2, 0.2)`` and
    ``value *= 1 + e * n_steps / horizon``. KL above target raises the coefficient, below lowers it.
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_coef: float, target: float, horizon: int):
        if init_coef < 0:
            raise ValueError(f"initial KL coefficient must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"adaptive KL target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"adaptive KL horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust ``value`` after ``n_steps`` samples (usually the rollout batch size) with mean KL ``current_kl``."""
        error = min(max(current_kl / self.target - 1.0, -self.ERROR_CLIP), self.ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: current value, target and horizon."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the controller saved by ``state_dict``."""
        _require_keys(state, ("value", "target", "horizon"), type(self).__name__)
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


KLController = FixedKLController | AdaptiveKLController


def _build_fixed(init_coef: float, target: float | None, horizon: int | None) -> KLController:
    return FixedKLController(init_coef)


def _build_adaptive(init_coef: float, target: float | None, horizon: int | None) -> KLController:
    if target is None or horizon is None:
        raise ValueError(
            f"the adaptive KL controller needs both target and horizon (got target={target}, horizon={horizon})"
        )
    return AdaptiveKLController(init_coef, target, horizon)


KL_CONTROLLERS: dict[str, Callable[[float, float | None, int | None], KLController]] = {
    "fixed": _build_fixed,
    "adaptive": _build_adaptive,
}


def build_kl_controller(
    kind: str, init_coef: float, target: float | None = None, horizon: int | None = None
) -> KLController:
    """Build a KL controller by name: ``"fixed"`` (ignores target/horizon) or ``"adaptive"`` (needs both)."""
    if kind not in KL_CONTROLLERS:
        raise ValueError(f"unknown KL controller {kind!r}; valid names: {sorted(KL_CONTROLLERS)}")
    return KL_CONTROLLERS[kind](init_coef, target, horizon)
