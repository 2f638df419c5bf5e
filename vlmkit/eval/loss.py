"""Held-out loss per supervised token."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from vlmkit.training.loop import count_supervised_tokens
from vlmkit.training.losses import sft_loss


@torch.no_grad()
def eval_token_loss(model, dataset, collate_fn, batch_size: int = 32, loss_fn: Callable = sft_loss) -> float:
    """Mean next-token cross-entropy over the supervised tokens of `dataset`.

    `loss_fn(model, batch)` is the summed loss of the model's kind (`VLMKind.loss`; default: composite)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn):
        if batch.get("empty"):
            continue
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        loss_sum, _ = loss_fn(model, batch)
        total += float(loss_sum)
        count += count_supervised_tokens(batch)
    model.train()
    return total / max(1, count)
