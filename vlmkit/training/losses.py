"""Loss functions the recipes plug into the training loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmkit.data.tokenize import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over supervised positions.

    logits: (B, T, V); labels: (B, T) with -100 where unsupervised. Returns a scalar (sum, not mean).
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def sft_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Causal-LM loss of a VLM batch (sum over supervised tokens)."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        media=batch.get("media"),
        media_features=batch.get("media_features"),
        position_ids=batch.get("position_ids"),
    )
    return token_loss_sum(out.logits, batch["labels"]), {}
