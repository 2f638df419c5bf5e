"""Reward models, DPO and PPO (rollouts, value model, trainer).

The RL maths they share are pure functions, re-exported here: KL estimators and controllers, PPO rewards,
GAE and clipped losses.
"""

from vlmkit.rlhf.kl import (
    KL_CONTROLLERS,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    build_kl_controller,
    kl_estimate,
)
from vlmkit.rlhf.ppo_math import (
    apply_missing_eos_penalty,
    compute_gae,
    compute_rewards,
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)

__all__ = [
    "KL_CONTROLLERS",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "apply_missing_eos_penalty",
    "build_kl_controller",
    "compute_gae",
    "compute_rewards",
    "entropy_from_logits",
    "explained_variance",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "value_loss",
]
