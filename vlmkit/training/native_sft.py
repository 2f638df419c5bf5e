"""Supervised datasets and the loss of native VLMs, for the shared training loop (accuracy: eval.native_answers)."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from vlmkit.data.records import BadSampleError, Sample, SkipCounter
from vlmkit.data.tokenize import SampleDropped
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.packing import native_forward
from vlmkit.training.losses import token_loss_sum

logger = logging.getLogger(__name__)


def encode_all(rows: list, encode, *, on_bad_sample: str, skips: SkipCounter, what: str = "samples") -> list:
    """`encode(row)` for every row, up front: a dropped row (`SampleDropped`) is counted in `skips`; a bad one
    (`BadSampleError`) raises, or is counted with on_bad_sample="skip". Raises when none is left."""
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got '{on_bad_sample}'")
    items = []
    for row in rows:
        try:
            items.append(encode(row))
        except SampleDropped as err:
            skips.add(err)
        except BadSampleError as err:
            if on_bad_sample == "error":
                raise
            skips.add(err)
    if not items:
        where = rows[0].source if rows else "the dataset"
        raise ValueError(f"{where}: no usable {what} left ({skips.total} skipped: {skips.as_dict()})")
    if skips.total:
        logger.warning("skipped %d %s: %s", skips.total, what, skips.as_dict())
    return items


class NativeSFTDataset(Dataset):
    """Every sample encoded up front by `encoder` (so bad ones fail or are counted before training starts)."""

    def __init__(
        self,
        samples: list[Sample],
        encoder: NativeEncoder,
        *,
        on_bad_sample: str = "error",
        skips: SkipCounter | None = None,
    ):
        self.skips = skips if skips is not None else SkipCounter()
        self.items: list[dict] = encode_all(
            samples, encoder.encode, on_bad_sample=on_bad_sample, skips=self.skips
        )

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Tokens per sample, media tokens included (for length grouping)."""
        return [item["input_ids"].shape[1] for item in self.items]

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def native_sft_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Summed next-token loss over the supervised (assistant) tokens of a native-VLM batch (packed or not)."""
    return token_loss_sum(native_forward(model, batch).logits, batch["labels"]), {}
