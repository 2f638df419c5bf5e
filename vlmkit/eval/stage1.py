"""What stage 1 learned: does the frozen LLM read the connector's output?

Four held-out measurements on caption data (one media item per sample):
- `eval_image_gain`: caption loss with mismatched media (each batch's media rolled by one, so every caption
  meets another item's image or recording) minus with the right media, nats per caption token. Zero means the
  LLM ignores the media; it is the information the connector passes on. Every caption token counts, so a
  caption whose only media-dependent token is the digit spreads that token's gain over the whole caption;
  `eval_image_gain_per_caption` is the same difference summed over each caption (nats per caption).
- `eval_loss_text_only`: caption loss with the media tokens removed from the prompt, the frozen LLM's own
  text-only prior on the captions (the baseline `eval_loss` must beat).
- `eval_media_feature_cosine`: mean pairwise cosine similarity of the connector outputs (mean-pooled over
  media tokens) across eval items; near 1 means the connector collapsed to one vector for every input.
- `eval_caption_digit_accuracy` (digit captions only): the model greedily writes a caption and it names the
  reference caption's digit (word or numeral).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from vlmkit.data.digits import digit_named_in
from vlmkit.data.sft_dataset import pad_sequences
from vlmkit.data.tokenize import IGNORE_INDEX
from vlmkit.eval.answers import generate_answers
from vlmkit.training.loop import count_supervised_tokens
from vlmkit.training.losses import sft_loss


def without_media_tokens(batch: dict, media_token_id: int, pad_token_id: int) -> dict:
    """The batch with every media placeholder removed from each row (right-padded again), and no media."""
    ids, labels = [], []
    for row_ids, row_labels, row_mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        keep = (row_ids != media_token_id) & (row_mask.bool())
        ids.append(row_ids[keep])
        labels.append(row_labels[keep])
    input_ids = pad_sequences(ids, pad_token_id)
    return {
        "input_ids": input_ids,
        "labels": pad_sequences(labels, IGNORE_INDEX),
        "attention_mask": pad_sequences([torch.ones_like(i) for i in ids], 0),
        "media": None,
    }


def mean_pairwise_cosine(pooled: torch.Tensor) -> float:
    """Mean cosine similarity over distinct pairs of rows of `pooled` (N, D)."""
    unit = torch.nn.functional.normalize(pooled.float(), dim=-1)
    n = unit.shape[0]
    if n < 2:
        raise ValueError("the media feature cosine needs at least two eval items")
    return float(((unit @ unit.T).sum() - n) / (n * (n - 1)))


def caption_digit_accuracy(model, processor, samples: list, **generate_kwargs) -> float | None:
    """Share of samples whose generated caption names the digit of the reference caption; None when no
    reference caption names a digit (not digit data)."""
    pairs = generate_answers(model, processor, samples, **generate_kwargs)
    digits = [(digit_named_in(pred), digit_named_in(ref or "")) for pred, ref in pairs]
    scored = [(p, r) for p, r in digits if len(r) == 1 and r.isdigit()]
    if not scored:
        return None
    return sum(p == r for p, r in scored) / len(scored)


@torch.no_grad()
def evaluate_alignment(
    model,
    processor,
    eval_set,
    collate_fn,
    *,
    samples: list | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 16,
) -> dict:
    """Stage-1 metrics (see the module docstring) of a VLM on `eval_set` (an SFTDataset of captions);
    `samples` (the same records, read) add the caption digit accuracy. Batches of one item are skipped
    (rolling cannot mismatch them)."""
    model.eval()
    device = next(model.parameters()).device
    pad_id = processor.tokenizer.pad_token_id
    sums = {"right": 0.0, "mismatched": 0.0, "text_only": 0.0}
    tokens, captions, pooled = 0, 0, []
    for batch in DataLoader(eval_set, batch_size=batch_size, collate_fn=collate_fn):
        if batch.get("empty") or batch["media"] is None or batch["input_ids"].shape[0] < 2:
            continue
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if batch["media"].shape[0] != batch["input_ids"].shape[0]:
            raise ValueError("evaluate_alignment needs exactly one media item per eval sample")
        features = model.encode_media(batch["media"])  # (B, M, D_llm)
        pooled.append(features.mean(dim=1).cpu())
        sums["right"] += float(sft_loss(model, batch)[0])
        sums["mismatched"] += float(sft_loss(model, {**batch, "media": batch["media"].roll(1, dims=0)})[0])
        text_only = without_media_tokens(batch, model.config.media_token_id, pad_id)
        sums["text_only"] += float(sft_loss(model, text_only)[0])
        tokens += count_supervised_tokens(batch)
        captions += batch["input_ids"].shape[0]
    if tokens == 0:
        raise ValueError("no eval batch with two or more media items: cannot measure the media gain")
    loss = {k: v / tokens for k, v in sums.items()}
    metrics = {
        "eval_loss_right_media": loss["right"],
        "eval_loss_mismatched_media": loss["mismatched"],
        "eval_loss_text_only": loss["text_only"],
        "eval_image_gain": loss["mismatched"] - loss["right"],
        "eval_image_gain_per_caption": (sums["mismatched"] - sums["right"]) / captions,
        "eval_media_feature_cosine": mean_pairwise_cosine(torch.cat(pooled)),
    }
    if samples:
        accuracy = caption_digit_accuracy(
            model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        if accuracy is not None:
            metrics["eval_caption_digit_accuracy"] = accuracy
    model.train()
    return metrics
