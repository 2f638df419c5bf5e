"""GRPO / RLOO maths as pure functions: group-relative advantages and the clipped token loss.

Shapes: B completions in groups of G consecutive rows (B = num_prompts * G), T completion tokens
(right-padded), ``mask`` (B, T) true on real completion tokens. Names follow TRL's GRPOConfig
(`scale_rewards`, `epsilon`, `epsilon_high`, `loss_type`, `beta`) so its users recognise them.

- Advantages (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean_group) / (std_group + eps). Dr. GRPO
  (Liu et al. 2025) drops the std scaling (`scale_rewards="none"`); `"batch"` scales by the batch std.
  RLOO (Ahmadian et al. 2024) uses the leave-one-out mean: A_i = r_i - mean_{j != i} r_j.
- Loss per token: -min(rho A, clip(rho, 1 - epsilon, 1 + epsilon_high) A) + beta * k3(logp, logp_ref),
  with rho = exp(logp - logp_old). Clip-higher (DAPO, Yu et al. 2025) is epsilon_high > epsilon.
- Aggregation (`loss_type`): "grpo" averages tokens within each sequence, then sequences; "dr_grpo"
  sums tokens and divides by B * max_completion_length; "dapo" divides the token sum by the number of
  tokens. `loss_sum_and_count` returns (sum, count) so accumulation across micro-batches and processes
  divides by the count of the whole optimizer step, as every vlmkit loss does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vlmkit.rlhf.kl import kl_estimate

SCALE_REWARDS = ("group", "batch", "none")
BASELINES = ("mean", "rloo")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


@dataclass
class GroupAdvantages:
    """advantages: (B,); zero_std_groups: groups whose rewards are all equal (they carry no signal)."""

    advantages: Tensor
    zero_std_groups: int
    num_groups: int


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of num_generations={group_size}"
        )
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    scale_rewards: str = "group",
    baseline: str = "mean",
    eps: float = 1e-4,
) -> GroupAdvantages:
    """Group-relative advantages of (B,) rewards whose rows come in groups of `group_size`.

    The std is the unbiased one (as `torch.std`), per group for "group", over all B rewards for "batch".
    A group whose rewards are all equal gets exactly zero advantage under every option.
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r}; valid: {', '.join(SCALE_REWARDS)}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}; valid: {', '.join(BASELINES)}")
    groups = _grouped(rewards.float(), group_size)
    mean = groups.mean(dim=1, keepdim=True)
    spread = groups.max(dim=1).values - groups.min(dim=1).values
    zero_std = spread == 0
    if baseline == "rloo":
        if group_size < 2:
            raise ValueError("the RLOO baseline needs num_generations >= 2")
        loo_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
        centred = groups - loo_mean
    else:
        centred = groups - mean
    if scale_rewards == "group":
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    elif scale_rewards == "batch":
        centred = centred / (groups.std() + eps)
    centred = centred.masked_fill(zero_std.unsqueeze(1), 0.0)  # also where std + eps is 0
    return GroupAdvantages(centred.reshape(-1), int(zero_std.sum()), groups.shape[0])


def clipped_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Per-token GRPO loss (B, T), zero outside `mask`, and its statistics.

    logprobs, old_logprobs, ref_logprobs: (B, T) log-probs of the sampled tokens under the current,
    the sampling and the reference policy; advantages: (B,). `beta > 0` needs `ref_logprobs` (k3 KL).
    """
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs (the KL to the reference policy)")
    high = epsilon if epsilon_high is None else epsilon_high
    m = mask.to(logprobs.dtype)
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    stats = {}
    n = m.sum().clamp(min=1)
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs, "k3")
        if beta > 0:
            per_token = per_token + beta * kl
        stats["kl"] = float((kl.detach() * m).sum() / n)
    is_clipped = (clipped < unclipped).to(m.dtype)  # the clip bound was the one taken
    low = ((ratio < 1 - epsilon) & (adv < 0)).to(m.dtype)
    high_hit = ((ratio > 1 + high) & (adv > 0)).to(m.dtype)
    stats.update(
        clip_fraction=float((is_clipped * m).sum() / n),
        clip_low_fraction=float((low * m).sum() / n),
        clip_high_fraction=float((high_hit * m).sum() / n),
    )
    return per_token * m, stats


def loss_sum_and_count(
    per_token: Tensor, mask: Tensor, loss_type: str = "grpo", max_completion_length: int | None = None
) -> tuple[Tensor, int]:
    """(sum, count) with sum / count = the `loss_type` aggregate of (B, T) per-token losses.

    grpo: sum over sequences of each sequence's token mean, count B. dr_grpo: token sum divided by
    max_completion_length, count B. dapo: token sum, count = number of real tokens.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}; valid: {', '.join(LOSS_TYPES)}")
    m = mask.to(per_token.dtype)
    tokens = m.sum(dim=1)
    if loss_type == "grpo":
        return ((per_token * m).sum(dim=1) / tokens.clamp(min=1)).sum(), per_token.shape[0]
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("loss_type=dr_grpo needs max_completion_length")
        return (per_token * m).sum() / max_completion_length, per_token.shape[0]
    return (per_token * m).sum(), int(tokens.sum())


def aggregate_loss(
    per_token: Tensor, mask: Tensor, loss_type: str = "grpo", max_completion_length: int | None = None
) -> Tensor:
    """The scalar loss of one batch (sum / count of `loss_sum_and_count`)."""
    total, count = loss_sum_and_count(per_token, mask, loss_type, max_completion_length)
    return total / max(count, 1)
