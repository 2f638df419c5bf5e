"""Config of the PPO recipe (stage 4): rollouts, rewards, KL penalty, value model and PPO updates."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import (
    DataArgs,
    EvalArgs,
    HubArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    RunArgs,
    _f,
)
from vlmkit.config.rl import RLArgs

VALUE_MODELS = ("policy_head", "reward_model")
KL_ESTIMATORS = ("k1", "k2", "k3")  # vlmkit.rlhf.kl.KL_ESTIMATORS (a test keeps them equal)
KL_CONTROLLERS = ("fixed", "adaptive")


@dataclass
class PPOConfig(RLArgs, HubArgs, LoraArgs, EvalArgs, DataArgs, ModelArgs, OptimArgs, RunArgs):
    """Stage 4 (RLHF): PPO with a per-token KL penalty against the frozen starting policy.

    One PPO step samples `rollout_batch_size` = per_device_train_batch_size x gradient_accumulation_steps x
    num_mini_batches responses per process, scores them, then runs `num_ppo_epochs` passes of
    `num_mini_batches` optimizer steps over them. `max_steps` counts PPO steps.
    """

    missing_eos_penalty: float = _f(
        0.0, "Subtracted from the score of responses that never emit EOS (0: off).", ge=0
    )
    # ---- value model ----
    value_model: str = _f(
        "policy_head",
        "policy_head: a value head on the policy's last hidden state (shared backbone); reward_model: a separate "
        "critic initialised from the reward model (or --value_model_name_or_path).",
        choices=VALUE_MODELS,
    )
    value_model_name_or_path: str | None = _f(
        None, "Critic initialisation for value_model=reward_model (default: the reward model)."
    )
    value_learning_rate: float | None = _f(
        None, "Learning rate of the value model (default: learning_rate).", ge=0
    )
    vf_coef: float = _f(0.1, "Weight of the value loss in the total loss.", ge=0)
    calibrate_critic: bool = _f(
        True,
        "value_model=reward_model: before the first update, map the critic head to the first batch's returns by "
        "least squares (scale and offset), so a reward model's scale cannot make the critic worse than a constant "
        "(vlmkit.rlhf.reward_scale).",
    )
    normalize_scores: bool = _f(
        False,
        "Standardise the scores with the mean and std of the first rollout batch (the starting policy's), fixed "
        "for the run: a reward model's arbitrary scale then meets the KL coefficient in units of its spread. "
        "missing_eos_penalty stays in the score's own units.",
    )
    # ---- rollouts ----
    # ---- KL penalty ----
    kl_estimator: str = _f(
        "k1",
        "Per-token KL estimator in the reward: k1 (log-ratio), k2 or k3 (always >= 0).",
        choices=KL_ESTIMATORS,
    )
    kl_controller: str = _f(
        "adaptive", "fixed or adaptive (Ziegler et al. 2019) KL coefficient.", choices=KL_CONTROLLERS
    )
    init_kl_coef: float = _f(0.05, "Initial (fixed: constant) KL coefficient; 0 disables the penalty.", ge=0)
    kl_target: float = _f(6.0, "Adaptive controller: target KL per response (summed over its tokens).", gt=0)
    kl_horizon: int = _f(10000, "Adaptive controller: horizon in responses.", ge=1)
    # ---- PPO update ----
    num_ppo_epochs: int = _f(4, "Passes over each rollout batch.", ge=1)
    num_mini_batches: int = _f(1, "Optimizer steps per pass over a rollout batch.", ge=1)
    cliprange: float = _f(0.2, "Policy ratio clip range (epsilon).", gt=0)
    cliprange_value: float = _f(
        0.2, "How far values may move from their rollout values before clipping.", gt=0
    )
    gamma: float = _f(1.0, "Discount factor of GAE.", ge=0, le=1)
    lam: float = _f(0.95, "Lambda of GAE.", ge=0, le=1)
    whiten_advantages: bool = _f(
        True, "Normalise advantages to zero mean and unit variance per rollout batch."
    )

    @property
    def rollout_batch_size(self) -> int:
        """Responses sampled per process per PPO step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_model == "reward_model" and not (
            self.value_model_name_or_path or self.reward_model_name_or_path
        ):
            raise ValueError(
                "value_model=reward_model initialises the critic from a reward model: give "
                "--reward_model_name_or_path or --value_model_name_or_path (or use value_model=policy_head)"
            )
