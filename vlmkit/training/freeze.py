"""Which parameters train in which stage: one function, and it says what it did."""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)

STAGES = ("align", "instruct", "reward")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts (4-bit weights counted by stored elements).

    Full sizes also when the parameters are partitioned: under DeepSpeed ZeRO-3 a parameter's own tensor is
    empty and `ds_numel` holds its size (FSDP2's DTensors report their global size themselves).
    """
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    frozen = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if not p.requires_grad)
    return trainable, frozen


def set_trainable(
    model: nn.Module,
    stage: str,
    *,
    tune_encoder: bool = False,
    tune_connector: bool = True,
    log: bool = True,
) -> tuple[int, int]:
    """Freeze/unfreeze the parts of a VLM for a stage and log the counts.

    - align (stage 1): connector only.
    - instruct (stage 2): connector + LLM (or only the LoRA weights when the LLM carries adapters).
    - reward (stage 3): like instruct, plus any `score_head`.
    `tune_encoder` also trains the encoder in instruct/reward; `tune_connector=False` keeps the connector
    frozen there (e.g. LoRA-only reward models and DPO, whose reference is the model with adapters off).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; valid: {', '.join(STAGES)}")
    model.requires_grad_(False)
    model.connector.requires_grad_(stage == "align" or tune_connector)
    if stage in ("instruct", "reward"):
        lm = model.language_model
        if hasattr(lm, "peft_config"):
            for name, p in lm.named_parameters():
                p.requires_grad_("lora_" in name or "modules_to_save" in name)
        else:
            lm.requires_grad_(True)
        if tune_encoder:
            model.encoder.requires_grad_(True)
    if stage == "reward" and hasattr(model, "score_head"):
        model.score_head.requires_grad_(True)
    trainable, frozen = count_parameters(model)
    if log:
        logger.info(
            "stage %s: %s trainable / %s frozen parameters (%.2f%% trainable)",
            stage, f"{trainable:,}", f"{frozen:,}", 100.0 * trainable / max(1, trainable + frozen),
        )  # fmt: skip
    return trainable, frozen
