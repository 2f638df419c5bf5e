"""Configs of the reward-model (stage 3) and DPO recipes."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import (
    DATA_FORMATS,
    TUNE_ENCODER_HELP,
    DataArgs,
    EpochArgs,
    EvalArgs,
    HubArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    RunArgs,
    TokenizeArgs,
    _f,
)

PREFERENCE_HELP = "Preference rows: prompt, chosen, rejected, images/audios."


@dataclass
class RewardModelConfig(
    HubArgs, LoraArgs, EvalArgs, TokenizeArgs, DataArgs, ModelArgs, OptimArgs, EpochArgs, RunArgs
):
    """Stage 3: a stage-2 VLM + a scalar head trained on preference pairs (Bradley-Terry)."""

    data_format: str = _f("preference", PREFERENCE_HELP, choices=DATA_FORMATS)
    tune_encoder: bool = _f(False, TUNE_ENCODER_HELP)
    learning_rate: float = _f(1e-4, "Peak learning rate (backbone and head).", ge=0)
    head_learning_rate: float | None = _f(
        None, "Separate learning rate for the score head (default: same).", ge=0
    )
    margin: float = _f(0.0, "Bradley-Terry margin: loss = -log sigmoid(r_chosen - r_rejected - margin).")
    center_rewards_coefficient: float = _f(
        0.0, "Weight of the reward-centering term mean((r_chosen + r_rejected)^2); 0 disables it.", ge=0
    )


@dataclass
class DPOConfig(
    HubArgs, LoraArgs, EvalArgs, TokenizeArgs, DataArgs, ModelArgs, OptimArgs, EpochArgs, RunArgs
):
    """DPO: preference optimisation of a stage-2 policy against its frozen starting point."""

    data_format: str = _f("preference", PREFERENCE_HELP, choices=DATA_FORMATS)
    tune_encoder: bool = _f(False, TUNE_ENCODER_HELP)
    learning_rate: float = _f(5e-6, "Peak learning rate of the policy.", ge=0)
    beta: float = _f(0.1, "DPO temperature: strength of the implicit KL to the reference policy.", gt=0)
    label_smoothing: float = _f(
        0.0, "Assumed share of flipped preference labels (conservative DPO); 0 is standard DPO.", ge=0, lt=0.5
    )
    rpo_alpha: float = _f(
        0.0,
        "Weight of the chosen answers' per-token NLL added to the DPO loss (DPO + NLL); 0 is pure DPO.",
        ge=0,
    )
    eval_prompts_path: str | None = _f(
        None, "Held-out questions with reference answers (LLaVA or prompts format) for eval_accuracy."
    )
    eval_generation: bool = _f(
        True, "Measure held-out answer accuracy before and after training with greedy generation."
    )
    max_new_tokens: int = _f(8, "Tokens generated per answer during evaluation.", ge=1)
    sft_baseline: bool = _f(
        False,
        "After DPO, train the compute-matched supervised baseline (SFT on the chosen answers from the same start: "
        "the same pairs, order and optimizer updates; see vlmkit.rlhf.sft_baseline), evaluate it the same way "
        "and report whether DPO beat it (baseline_eval_*, baseline_beaten).",
    )
