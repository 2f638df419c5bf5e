"""Config of the GRPO recipe (stage 4, critic-free): group sampling, rewards, clipped updates, KL to the reference.

Flag names follow TRL's GRPOConfig (num_generations, max_completion_length, beta, epsilon, epsilon_high,
loss_type, scale_rewards, num_iterations, reward_funcs, reward_weights) so TRL users recognise them.
"""

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

SCALE_REWARDS = ("group", "batch", "none")  # vlmkit.rlhf.grpo_math's (a test keeps them equal)
BASELINES = ("mean", "rloo")
LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


@dataclass
class GRPOConfig(RLArgs, HubArgs, LoraArgs, EvalArgs, DataArgs, ModelArgs, OptimArgs, RunArgs):
    """Stage 4 (RL): GRPO / Dr. GRPO / DAPO / RLOO on prompts with verifiable and/or learned rewards.

    One GRPO step samples `num_generations` completions for each of rollout_batch_size / num_generations
    prompts per process, where rollout_batch_size = per_device_train_batch_size x gradient_accumulation_steps x
    steps_per_generation; scores them and computes group-relative advantages; then `num_iterations` times takes
    `steps_per_generation` optimizer steps over shuffled mini-batches of them. `max_steps` counts GRPO steps.
    """

    # ---- sampling ----
    num_generations: int = _f(8, "Completions sampled per prompt (the group size G).", ge=2)
    # ---- objective ----
    scale_rewards: str = _f(
        "group",
        "Divide advantages by the group's reward std (group), the batch's (batch), or not (none).",
        choices=SCALE_REWARDS,
    )
    advantage_baseline: str = _f(
        "mean",
        "Baseline subtracted from each reward: the group mean (GRPO) or the leave-one-out mean (rloo).",
        choices=BASELINES,
    )
    loss_type: str = _f(
        "dapo",
        "grpo (mean over each completion's tokens, then completions), dr_grpo (token sum / (completions x "
        "max_new_tokens)) or dapo (token sum / tokens in the step).",
        choices=LOSS_TYPES,
    )
    epsilon: float = _f(0.2, "Lower clip range of the probability ratio (1 - epsilon).", gt=0, lt=1)
    epsilon_high: float | None = _f(
        None, "Upper clip range (1 + epsilon_high); clip-higher (DAPO) when > epsilon.", gt=0
    )
    beta: float = _f(
        0.04, "Weight of the k3 KL to the reference policy in the loss; 0 loads no reference model.", ge=0
    )
    num_iterations: int = _f(1, "Passes over each generated batch (mu in the GRPO paper).", ge=1)
    steps_per_generation: int = _f(
        1,
        "Optimizer steps per pass over a generated batch (its mini-batches of per_device x accumulation).",
        ge=1,
    )
    use_vllm: bool = _f(
        False,
        "Generate rollouts with a colocated vLLM engine (TRL's flag). No vLLM engine ships yet: generation "
        "is transformers' generate with the KV cache, and true stops with an error saying so "
        "(vlmkit.rlhf.rollout.RolloutEngine is the seam where one plugs in).",
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
        super().__post_init__()
        if self.rollout_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size x gradient_accumulation_steps x steps_per_generation = "
                f"{self.rollout_batch_size} must be a multiple of num_generations = {self.num_generations} "
                "(whole groups on each process)"
            )
        if self.epsilon_high is not None and self.epsilon_high < self.epsilon:
            raise ValueError(f"epsilon_high ({self.epsilon_high}) must be >= epsilon ({self.epsilon})")
