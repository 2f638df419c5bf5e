"""Padding-free packing: whole multimodal samples back to back in rows of a fixed token budget.

A packed row holds several tokenized samples (text + expanded media tokens). Position ids restart at 0
for every sample and attention never crosses a sample boundary: `VLM.forward` passes the boundaries to the
attention explicitly (`vlmkit.models.packed_attention`), rather than relying on transformers noticing the
resets (which it does only without an attention mask and without a KV cache):

- sdpa / eager: a 4D block-diagonal causal mask built from the position ids (see `block_causal_mask`);
  `PackedCollator(explicit_mask=True)` builds it in the collator instead.
- flash_attention_2: `flatten=True` puts the whole micro-batch in one (1, T) row and the model passes
  `cu_seq_lens_q/k` derived from the position ids to flash-attn's varlen kernel.

The first label of every sample is set to -100, so the token that ends one sample is never trained to
predict the start of the next one, and `count_supervised_tokens` counts exactly what unpacked batches do.
Media items follow the samples' order in the row and the rows' order in the batch, which is the order in
which `VLM.embed` fills the placeholder positions.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from vlmkit.data.tokenize import IGNORE_INDEX

logger = logging.getLogger(__name__)


def pack_lengths(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing of sample lengths into bins of `max_tokens`.

    Returns bins of sample indices (each bin sorted ascending; bins in creation order). Deterministic: ties
    are broken by index. Raises ValueError naming the first sample longer than `max_tokens`.
    """
    if max_tokens <= 0:
        raise ValueError(f"packing_max_tokens must be positive, got {max_tokens}")
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        i = too_long[0]
        raise ValueError(
            f"sample {i} has {lengths[i]} tokens, more than packing_max_tokens={max_tokens} "
            f"({len(too_long)} such samples); raise packing_max_tokens to at least max_length"
        )
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, bin id)
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            space, b = free.pop(pos)
            bins[b].append(i)
            bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (max_tokens - n, len(bins) - 1))
    return [sorted(b) for b in bins]


def packed_rows(rows: list, flatten: bool) -> list[list]:
    """A collator's input as lists of samples (a row, or a lone sample), dropped samples and empty rows removed;
    every sample in one row when `flatten` (flash attention's varlen layout)."""
    rows = [[s for s in (r if isinstance(r, list) else [r]) if s is not None] for r in rows]
    rows = [r for r in rows if r]
    return [[s for r in rows for s in r]] if flatten and rows else rows


class PackedDataset(Dataset):
    """Rows of whole samples from `dataset`, each at most `max_tokens` tokens; item i is a list of samples.

    `lengths` are the samples' token counts (default: `dataset.lengths()`). Samples the base dataset
    skipped (None) are dropped by the collator.
    """

    def __init__(self, dataset: Dataset, max_tokens: int, lengths: Sequence[int] | None = None):
        self.dataset = dataset
        self.skips = getattr(dataset, "skips", None)  # the base dataset's counter, for the training loop
        self.max_tokens = max_tokens
        self.sample_lengths = list(lengths if lengths is not None else dataset.lengths())
        if len(self.sample_lengths) != len(dataset):
            raise ValueError(f"{len(self.sample_lengths)} lengths for a dataset of {len(dataset)} samples")
        self.bins = pack_lengths(self.sample_lengths, max_tokens)
        logger.info(
            "packed %d samples into %d rows of <= %d tokens (%.1f%% full)",
            len(dataset), len(self.bins), max_tokens, 100 * self.fill_ratio,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.bins)

    def lengths(self) -> list[int]:
        """Tokens in each packed row."""
        return [sum(self.sample_lengths[i] for i in b) for b in self.bins]

    @property
    def fill_ratio(self) -> float:
        """Real tokens / (rows x max_tokens)."""
        return sum(self.sample_lengths) / max(1, len(self.bins) * self.max_tokens)

    def __getitem__(self, i: int) -> list[dict | None]:
        return [self.dataset[j] for j in self.bins[i]]


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """4D mask (R, 1, T, T) letting query t attend key s only within its own sample and s <= t.

    position_ids: (R, T), restarting at 0 at each sample start. `dtype` torch.bool gives True where attention
    is allowed (sdpa); a float dtype gives an additive mask, 0 where allowed and the dtype's minimum elsewhere.
    """
    starts = position_ids == 0
    starts[:, 0] = True
    seq = starts.long().cumsum(-1)  # (R, T) sample index of every token
    t = position_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seq[:, :, None] == seq[:, None, :]) & causal
    if dtype == torch.bool:
        return allowed[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def _media_key(items: list[dict]) -> str | None:
    keys = {k for it in items for k in ("media", "media_features") if it.get(k) is not None}
    if len(keys) > 1:
        raise ValueError(
            "a batch mixes pixel media and cached media features; build the cache for all samples"
        )
    return keys.pop() if keys else None


class PackedCollator:
    """Packed rows (lists of samples) or single samples -> one padding-free batch.

    Returns input_ids / labels / position_ids (R, T) and `media` (n, ...) or `media_features`
    (n, N, D_enc) in placeholder order. `flatten` concatenates all rows into one (1, T) row (flash-attn
    varlen); `explicit_mask` adds the 4D block-diagonal `attention_mask` (see `block_causal_mask`).
    Rows shorter than the longest are right-padded with a separate dummy sequence (labels -100).
    """

    def __init__(self, pad_token_id: int, *, flatten: bool = False, explicit_mask: bool = False):
        self.pad_token_id = pad_token_id
        self.flatten = flatten
        self.explicit_mask = explicit_mask

    def __call__(self, rows: list) -> dict:
        rows = packed_rows(rows, self.flatten)
        if not rows:
            return {"empty": True}
        samples = [s for r in rows for s in r]
        media_key = _media_key(samples)
        ids, labels, positions = [], [], []
        for row in rows:
            row_labels = []
            for s in row:
                lab = s["labels"].clone()
                lab[0] = IGNORE_INDEX  # never predict a sample's first token from the previous sample
                row_labels.append(lab)
            ids.append(torch.cat([s["input_ids"] for s in row]))
            labels.append(torch.cat(row_labels))
            positions.append(torch.cat([torch.arange(len(s["input_ids"])) for s in row]))
        width = max(len(x) for x in ids)
        batch_ids = torch.full((len(rows), width), self.pad_token_id, dtype=ids[0].dtype)
        batch_labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=labels[0].dtype)
        batch_pos = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (x, y, p) in enumerate(zip(ids, labels, positions)):
            n = len(x)
            batch_ids[r, :n], batch_labels[r, :n], batch_pos[r, :n] = x, y, p
            # Padding is a dummy sequence of its own: no real token attends to it.
            batch_pos[r, n:] = torch.arange(width - n)
        batch = {"input_ids": batch_ids, "labels": batch_labels, "position_ids": batch_pos}
        if media_key is not None:
            batch[media_key] = torch.cat([s[media_key] for s in samples if s.get(media_key) is not None])
        if self.explicit_mask:
            batch["attention_mask"] = block_causal_mask(batch_pos)
        return batch
