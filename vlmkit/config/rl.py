"""What the RL recipes (PPO, GRPO) share in their configs: rewards, sampling and the defaults RL changes."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import DATA_FORMATS, ModelArgs, _f

ON_BAD_REWARD = ("error", "skip")


@dataclass
class RLArgs:
    """Rewards (a registry of verifiable functions and/or a reward model, weighted), rollout sampling, and the
    optimisation defaults of RL (a constant, small learning rate; `max_steps` counts RL steps)."""

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
        "think_answer_format) or 'module:function' called as fn(completions=, references=, prompts=) -> floats; "
        "summed with the reward model's score, weighted by reward_weights. Alias: --reward_function.",
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
    max_new_tokens: int = _f(
        8, "Tokens generated per response, in rollouts and evaluation (alias: --max_completion_length).", ge=1
    )
    temperature: float = _f(
        1.0, "Sampling temperature of rollouts (the log-probs use the same temperature).", gt=0
    )
    top_p: float = _f(1.0, "Nucleus sampling of rollouts (1.0: off).", gt=0, le=1)
    # ---- baseline ----
    sft_baseline: bool = _f(
        False,
        "After RL, train the compute-matched supervised baseline (SFT on the prompts' reference answers from the "
        "same start: the same prompts, passes and optimizer updates; see vlmkit.rlhf.sft_baseline), evaluate it "
        "the same way and report whether RL beat it (baseline_eval_*, baseline_beaten).",
    )
    # ---- overridden defaults ----
    learning_rate: float = _f(1e-5, "Peak learning rate of the policy.")
    lr_scheduler_type: str = _f("constant", "cosine, linear or constant (each after warm-up).")
    warmup_ratio: float = _f(0.0, "Fraction of RL steps for linear warm-up.")
    max_steps: int = _f(100, "RL steps (one sampled batch + its updates each).", ge=1)
    logging_steps: int = _f(1, "Log every N RL steps.")
    max_eval_samples: int = _f(0, "Evaluate on at most this many held-out prompts (0: all).")
    data_format: str = _f(
        "prompts", "Prompt rows for RL: prompt, images/audios and an optional answer.", choices=DATA_FORMATS
    )

    def __post_init__(self) -> None:
        self.reward_funcs = [
            f for f in self.reward_funcs if f.lower() != "none"
        ]  # "none" clears a config's list
        if self.reward_model_name_or_path is None and not self.reward_funcs:
            raise ValueError("give a reward: --reward_model_name_or_path and/or --reward_funcs")
