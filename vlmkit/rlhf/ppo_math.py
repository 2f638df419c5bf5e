"""PPO maths as pure functions: masked statistics, KL-shaped rewards, GAE, clipped losses.

Shape conventions: B is the number of rollouts, T the number of response tokens (right-padded),
V the vocabulary size. ``mask`` is (B, T), bool or 0/1 float, true on real response tokens.
Nothing here owns state or a model; the PPO recipe calls these on rollout tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vlmkit.rlhf.kl import kl_estimate


def _check_shapes(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"tensors must share one shape, got {shapes}")


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is true.

    Args:
        x: any shape; mask: same shape as ``x``.
        dim: reduce over this dimension only; ``None`` reduces over everything.

    Returns:
        A 0-d tensor (``dim=None``) or ``x`` with ``dim`` removed. With ``dim`` given, a slice with no
        masked-in position gives NaN; with ``dim=None`` an all-false mask raises ``ValueError``.
    """
    _check_shapes(x=x, mask=mask)
    m = mask.to(x.dtype)
    if dim is None:
        count = m.sum()
        if count.item() == 0:
            raise ValueError("masked_mean over an all-false mask: there are no valid positions to average")
        return (x * m).sum() / count
    return (x * m).sum(dim) / m.sum(dim)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over masked-in positions (all dimensions), as a 0-d tensor.

    ``unbiased=True`` applies Bessel's correction n / (n - 1) and needs at least 2 valid positions.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean).pow(2), mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n.item() < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 valid positions, got {int(n.item())}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean and unit (unbiased) variance using masked-in positions only.

    Args:
        x: any shape; mask: same shape.
        shift_mean: if False, the original mean is added back (only the scale changes).

    Returns:
        Same shape as ``x``. Masked-out positions are set to 0 and never influence the statistics.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(x.dtype)


def _last_valid_index(mask: Tensor) -> Tensor:
    """(B,) index of the last true position per row of a (B, T) mask; raises on empty rows."""
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=-1).values
    empty = (last < 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"rows {empty} have no valid response token in the mask; cannot place their score")
    return last


def compute_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: a KL penalty on every response token plus the score on the last one.

    Args:
        scores: (B,) reward-model score of each full response.
        logprobs: (B, T) policy log-probs of the sampled response tokens.
        ref_logprobs: (B, T) reference-model log-probs of the same tokens.
        mask: (B, T) true on response tokens; rows may have different lengths.
        kl_coef: weight of the KL penalty (``controller.value``).
        estimator: KL estimator name, see ``vlmkit.rlhf.kl.kl_estimate``.

    Returns:
        ``rewards`` (B, T) = ``-kl_coef * kl`` with ``scores[b]`` added at row b's last true mask position,
        and ``kl`` (B, T) the per-token estimate; both are 0 at masked-out positions.
    """
    _check_shapes(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if scores.shape != (logprobs.shape[0],):
        raise ValueError(f"scores must have shape ({logprobs.shape[0]},), got {tuple(scores.shape)}")
    m = mask.to(logprobs.dtype)
    kl = kl_estimate(logprobs, ref_logprobs, estimator) * m
    rewards = -kl_coef * kl
    last = _last_valid_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards, kl


def compute_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016), backwards over the valid tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, where
    ``t + 1`` is the next valid token; after a row's last valid token ``V`` and ``A`` are 0 (episode end).
    Masked-out positions are skipped, so their rewards and values have no influence.

    Args:
        rewards: (B, T); values: (B, T) critic values of the rollout; mask: (B, T).

    Returns:
        ``advantages`` (B, T) and ``returns = advantages + values`` (B, T), both 0 where masked out.
    """
    _check_shapes(rewards=rewards, values=values, mask=mask)
    valid = mask.bool()
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        # A masked-out position passes the running value/advantage through unchanged.
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_adv = torch.where(valid[:, t], adv, next_adv)
        advantages[:, t] = torch.where(valid[:, t], adv, torch.zeros_like(adv))
    returns = torch.where(valid, advantages + values, torch.zeros_like(values))
    return advantages, returns


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate loss, averaged over valid tokens.

    ``ratio = exp(logprobs - old_logprobs)``; per token
    ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_range, 1 + clip_range))``.

    Args:
        logprobs: (B, T) current policy log-probs (carries the gradient).
        old_logprobs: (B, T) log-probs at rollout time; advantages: (B, T); mask: (B, T).
        clip_range: epsilon of the clip, e.g. 0.2.

    Returns:
        ``loss`` (0-d) and detached 0-d stats: ``clip_fraction`` (share of valid tokens where the clipped
        term is the active one) and ``approx_kl``, the k3 estimate of KL(old || new):
        masked mean of ``(ratio - 1) - log(ratio)``, always >= 0.
    """
    _check_shapes(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).to(logprobs.dtype), mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: masked mean of ``0.5 * max((v - R)^2, (clip(v, old - c, old + c) - R)^2)``.

    Args:
        values: (B, T) current critic values (carries the gradient).
        old_values: (B, T) values at rollout time; returns: (B, T) GAE returns; mask: (B, T).
        clip_range_value: c, how far ``values`` may move from ``old_values`` before clipping.

    Returns:
        ``loss`` (0-d) and detached 0-d stats: ``value_clip_fraction`` (share of valid tokens where the
        clipped term is the larger one).
    """
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns).pow(2)
    loss_clipped = (clipped_values - returns).pow(2)
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        stats = {"value_clip_fraction": masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)}
    return loss, stats


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Masked mean per-token entropy (nats) of the categorical distributions given by ``logits``.

    Args:
        logits: (B, T, V), any float dtype (computed in float32); mask: (B, T).

    Returns:
        0-d float32 tensor.
    """
    if logits.dim() != 3 or logits.shape[:2] != mask.shape:
        raise ValueError(
            f"expected logits (B, T, V) and mask (B, T), got {tuple(logits.shape)} and {tuple(mask.shape)}"
        )
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
    return masked_mean(entropy, mask)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """``1 - Var(returns - values) / Var(returns)`` over valid tokens: 1 is a perfect critic, 0 no better
    than predicting the mean, negative worse than that. NaN when the returns have zero variance.

    Args:
        values, returns, mask: (B, T).
    """
    _check_shapes(values=values, returns=returns, mask=mask)
    values, returns = values.detach().double(), returns.detach().double()
    var_returns = masked_var(returns, mask, unbiased=False).item()
    if var_returns == 0.0:
        return float("nan")
    return 1.0 - masked_var(returns - values, mask, unbiased=False).item() / var_returns


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label under ``log_softmax(logits)``, computed in float32.

    Args:
        logits: (B, T, V), already aligned with ``labels`` (logits at position t predict ``labels[:, t]``).
        labels: (B, T) token ids; negative ids (e.g. -100 padding) give 0.0.

    Returns:
        (B, T) float32 log-probs.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    logits = logits.float()
    ignored = labels < 0
    safe_labels = labels.masked_fill(ignored, 0)
    picked = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    logprobs = picked - torch.logsumexp(logits, dim=-1)
    return logprobs.masked_fill(ignored, 0.0)


def apply_missing_eos_penalty(
    scores: Tensor,
    response_ids: Tensor,
    eos_token_id: int | list[int],
    penalty: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Subtract ``penalty`` from the score of every response that never emits ``eos_token_id`` (any of them,
    given a list: a native VLM ends a turn with its end-of-turn token).

    Truncated answers (no EOS within the generation budget) would otherwise be scored like finished
    ones; a penalty pushes the policy to end its answers.

    Args:
        scores: (B,) reward-model scores. Not modified; a new tensor is returned.
        response_ids: (B, T) generated token ids.
        eos_token_id: id that marks a finished response.
        penalty: amount (>= 0) subtracted from the scores of rows without EOS.
        mask: optional (B, T); if given only true positions are searched. Pass it when the pad id equals
            the EOS id, otherwise padding would count as an EOS.

    Returns:
        (B,) adjusted scores.
    """
    if penalty < 0:
        raise ValueError(f"missing-EOS penalty must be >= 0 (it is subtracted), got {penalty}")
    if response_ids.dim() != 2 or scores.shape != (response_ids.shape[0],):
        raise ValueError(
            f"expected scores (B,) and response_ids (B, T), got {tuple(scores.shape)} and {tuple(response_ids.shape)}"
        )
    is_eos = torch.isin(response_ids, torch.tensor(eos_token_id, device=response_ids.device).reshape(-1))
    if mask is not None:
        _check_shapes(response_ids=response_ids, mask=mask)
        is_eos = is_eos & mask.bool()
    has_eos = is_eos.any(dim=-1)
    return torch.where(has_eos, scores, scores - penalty)
