"""Configs of the stage-1 (align) and stage-2 (instruct) LLaVA recipes; other stages have their own modules."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import (
    TUNE_CONNECTOR_HELP,
    TUNE_ENCODER_HELP,
    DataArgs,
    EpochArgs,
    EvalArgs,
    HubArgs,
    LoraArgs,
    ModelArgs,
    OptimArgs,
    PackingArgs,
    RunArgs,
    TokenizeArgs,
    _f,
)


@dataclass
class Stage1Config(
    HubArgs, EvalArgs, PackingArgs, TokenizeArgs, DataArgs, ModelArgs, OptimArgs, EpochArgs, RunArgs
):
    """Stage 1 (align): encoder and LLM frozen, the connector learns from captions."""

    learning_rate: float = _f(1e-3, "Peak learning rate of the connector.", ge=0)
    max_new_tokens: int = _f(8, "Tokens generated per held-out caption (eval_caption_digit_accuracy).", ge=1)


@dataclass
class Stage2Config(
    HubArgs, LoraArgs, EvalArgs, PackingArgs, TokenizeArgs, DataArgs, ModelArgs, OptimArgs, EpochArgs, RunArgs
):
    """Stage 2 (instruct): connector + LLM (full or LoRA/QLoRA) on conversations."""

    tune_encoder: bool = _f(False, TUNE_ENCODER_HELP)
    tune_connector: bool = _f(True, TUNE_CONNECTOR_HELP)
    connector_learning_rate: float | None = _f(
        None, "Separate learning rate for the connector (default: same).", ge=0
    )
    eval_generation: bool = _f(True, "Measure held-out answer accuracy with greedy generation at the end.")
    max_new_tokens: int = _f(8, "Tokens generated per answer during evaluation.", ge=1)
