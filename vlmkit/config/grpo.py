"""Config of the GRPO recipe (stage 4, critic-free): group sampling, rewards, clipped updates, KL to the reference.

Flag names follow TRL's GRPOConfig (num_generations, max_completion_length, beta, epsilon, epsilon_high,
loss_type, scale_rewards, num_iterations, reward_funcs, reward_weights) so TRL users recognise them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import (
    DATA_FORMATS,
    DataArgs,
    EvalArgs,
    HubArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    RunArgs,
    _f,
)

SCALE_REWARDS = ("group", "batch", "none")  # vlmkit.rlhf.grpo_math's (a test keeps them equal)
BASELINES = ("mean", "rloo")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
ON_BAD_REWARD = ("error", "skip")


@dataclass
class GRPOConfig(HubArgs, LoraArgs, EvalArgs, DataArgs, ModelArgs, OptimArgs, RunArgs):
    """Stage 4 (RL): GRPO / Dr. GRPO / DAPO / RLOO on prompts with verifiable and/or learned rewards.

    One GRPO step samples `num_generations` completions for each of rollout_batch_size / num_generations
    prompts per process, where rollout_batch_size = per_device_train_batch_size x gradient_accumulation_steps x
    steps_per_generation; scores them and computes group-relative advantages; then `num_iterations` times takes
    `steps_per_generation` optimizer steps over shuffled mini-batches of them. `max_steps` counts GRPO steps.
    """

    ALIASES = {
        **ModelArgs.ALIASES, "reward_function": "reward_funcs", "max_completion_length": "max_new_tokens"
    }  # fmt: skip

    # ---- rewards ----
    reward_model_name_or_path: str | None = _f(
        None, "A stage-3 reward model directory whose score is one of the rewards (weighted first)."
    )
    reward_funcs: list[str] = _f(
        [],
        "Verifiable reward functions, by name (exact_answer, digit_match, choice_letter, numeric_match, "
        "think_answer_format) or 'module:function' called as fn(completions=, references=, prompts=) -> floats.",
    )
    reward_weights: list[float] = _f(
        [], "One weight per reward, reward model first, then reward_funcs in order (default: all 1)."
    )
    on_bad_reward: str = _f(
        "error",
        "A reward that raises or is not finite for a sample: error (naming reward and sample) or skip "
        "(score 0, counted as bad_reward_<name> in the log).",
        choices=ON_BAD_REWARD,
    )
    # ---- sampling ----
    num_generations: int = _f(8, "Completions sampled per prompt (the group size G).", ge=2)
    max_new_tokens: int = _f(
        8,
        "Tokens generated per completion, in rollouts and evaluation (alias: --max_completion_length).",
        ge=1,
    )
    temperature: float = _f(
        1.0, "Sampling temperature of rollouts (the log-probs use the same temperature).", gt=0
    )
    top_p: float = _f(1.0, "Nucleus sampling of rollouts (1.0: off).", gt=0, le=1)
    # ---- objective ----
    scale_rewards: str = _f(
        "group",
        "Divide advantages by the group's reward std (group), the batch's (batch), or not (none).",
        choices=SCALE_REWARDS,
    )
    advantage_baseline: str = _f(
        "mean",
        "Baseline subtracted from each reward: the group mean (GRPO) or the leave-one-out mean (rloo).",
    )
    loss_type: str = _f(
        "dapo",
        "grpo (mean over each completion's tokens, then completions), dr_grpo (token sum / (completions x "
        "max_new_tokens)) or dapo (token sum / tokens in the step).",
        choices=LOSS_TYPES,
    )
    epsilon: float = _f(0.2, "Lower clip range of the probability ratio (1 - epsilon).", gt=0, lt=1)
    epsilon_high: float | None = _f(
        None, "Upper clip range (1 + epsilon_high); clip-higher (DAPO) when > epsilon."
    )
    beta: float = _f(
        0.04, "Weight of the k3 KL to the reference policy in the loss; 0 loads no reference model."
    )
    num_iterations: int = _f(1, "Passes over each generated batch (mu in the GRPO paper).", ge=1)
    steps_per_generation: int = _f(
        1,
        "Optimizer steps per pass over a generated batch (its mini-batches of per_device x accumulation).",
        ge=1,
    )
    # ---- overridden defaults ----
    learning_rate: float = _f(1e-5, "Peak learning rate of the policy.")
    lr_scheduler_type: str = _f("constant", "cosine, linear or constant (each after warm-up).")
    warmup_ratio: float = _f(0.0, "Fraction of GRPO steps for linear warm-up.")
    max_steps: int = _f(100, "GRPO steps (one generated batch + its num_iterations updates each).", ge=1)
    logging_steps: int = _f(1, "Log every N GRPO steps.")
    max_eval_samples: int = _f(0, "Evaluate on at most this many held-out prompts (0: all).")
    data_format: str = _f(
        "prompts", "Prompt rows for RL: prompt, images/audios and an optional answer.", choices=DATA_FORMATS
    )

    @property
    def rollout_batch_size(self) -> int:
        """Completions sampled per process per GRPO step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.steps_per_generation

    @property
    def prompts_per_step(self) -> int:
        """Distinct prompts per process per GRPO step."""
        return self.rollout_batch_size // self.num_generations

    def __post_init__(self) -> None:
        self.reward_funcs = [
            f for f in self.reward_funcs if f.lower() != "none"
        ]  # "none" clears a config's list
        if self.reward_model_name_or_path is None and not self.reward_funcs:
            raise ValueError("give a reward: --reward_model_name_or_path and/or --reward_funcs")
        if self.rollout_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps x steps_per_generation = "
                f"{self.rollout_batch_size} must be a multiple of num_generations = {self.num_generations} "
                "(whole groups on each process)"
            )
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high ({self.epsilon_high}) must be >= epsilon ({self.epsilon})")
