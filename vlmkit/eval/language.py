"""Held-out language-model metrics: loss and perplexity of the model and of a unigram baseline."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from vlmkit.training.losses import token_loss_sum


def causal_lm_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Summed next-token cross-entropy of a plain causal LM on a batch with `input_ids`/`labels` (B, T)."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"), use_cache=False,
    )  # fmt: skip
    return token_loss_sum(out.logits, batch["labels"]), {}


@torch.no_grad()
def eval_causal_lm_loss(model, blocks: torch.Tensor, collate_fn, batch_size: int = 32) -> float:
    """Mean next-token loss (nats) over every predicted position of `blocks` (N, T), batched by `collate_fn`."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in DataLoader(list(blocks), batch_size=batch_size, collate_fn=collate_fn):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum, _ = causal_lm_loss(model, batch)
        total += float(loss_sum)
        count += batch["labels"][:, 1:].numel()
    model.train()
    return total / max(1, count)


def unigram_loss(train_blocks: torch.Tensor, eval_blocks: torch.Tensor, vocab_size: int) -> float:
    """Loss (nats/token) of the add-one-smoothed unigram distribution of the train tokens on the eval tokens
    the LM predicts (every position but the first of each block): what knowing only token frequencies gives."""
    counts = torch.bincount(train_blocks[:, 1:].reshape(-1), minlength=vocab_size).double() + 1.0
    log_probs = counts.log() - counts.sum().log()
    return float(-log_probs[eval_blocks[:, 1:].reshape(-1)].mean())


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run writes a number rather than inf."""
    return math.exp(min(loss, 50.0))
