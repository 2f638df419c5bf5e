"""Configs of the stage-1 (align) and stage-2 (instruct) LLaVA recipes; other stages have their own modules."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import DataArgs, HubArgs, LoraArgs, ModelArgs, OptimArgs, RunArgs, _f


@dataclass
class Stage1Config(HubArgs, DataArgs, ModelArgs, OptimArgs, RunArgs):
    """Stage 1 (align): encoder and LLM frozen, the connector learns from captions."""

    learning_rate: float = _f(1e-3, "Peak learning rate of the connector.")
    max_eval_samples: int = _f(256, "Evaluate on at most this many held-out samples (0: all).")


@dataclass
class Stage2Config(HubArgs, LoraArgs, DataArgs, ModelArgs, OptimArgs, RunArgs):
    """Stage 2 (instruct): connector + LLM (full or LoRA/QLoRA) on conversations."""

    connector_learning_rate: float | None = _f(
        None, "Separate learning rate for the connector (default: same)."
    )
    eval_generation: bool = _f(True, "Measure held-out answer accuracy with greedy generation at the end.")
