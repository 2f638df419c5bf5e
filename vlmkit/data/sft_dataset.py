"""Datasets and collators that turn canonical samples into model batches."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from vlmkit.data.records import BadSampleError, Sample, SkipCounter
from vlmkit.data.tokenize import IGNORE_INDEX, SampleDropped, TokenizedSample, tokenize_sample

logger = logging.getLogger(__name__)


def load_media_item(item, *, modality: str, source: str, index: int, sampling_rate: int = 16000):
    """Decode one image (PIL, RGB) or audio clip (float32 mono at `sampling_rate`)."""
    from vlmkit.data import media

    if modality == "image":
        return media.load_image(item, source=source, index=index, field_name="images")
    return media.load_audio(item, target_sr=sampling_rate, source=source, index=index, field_name="audios")


class SFTDataset(Dataset):
    """Tokenizes every sample up front (cheap, and it validates text); decodes media lazily.

    Bad samples raise BadSampleError, or with `on_bad_sample="skip"` are counted in `skips` and dropped
    (text problems here, media problems in `__getitem__`, where the item becomes None for the collator).
    """

    def __init__(
        self,
        samples: list[Sample],
        processor,
        *,
        max_length: int,
        truncation: str = "error",
        on_bad_sample: str = "error",
        skips: SkipCounter | None = None,
    ):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got '{on_bad_sample}'")
        self.processor = processor
        self.on_bad_sample = on_bad_sample
        self.skips = skips if skips is not None else SkipCounter()
        self.items: list[TokenizedSample] = []
        for sample in samples:
            try:
                self.items.append(
                    tokenize_sample(
                        sample,
                        processor.tokenizer,
                        modality=processor.spec.modality,
                        num_media_tokens=processor.spec.num_media_tokens,
                        max_length=max_length,
                        truncation=truncation,
                    )
                )
            except SampleDropped as err:
                self.skips.add(err)
            except BadSampleError as err:
                if on_bad_sample == "error":
                    raise
                self.skips.add(err)
        if not self.items:
            where = samples[0].source if samples else "the dataset"
            raise ValueError(
                f"{where}: no usable samples left ({self.skips.total} skipped: {self.skips.as_dict()})"
            )
        if self.skips.total:
            logger.warning("skipped %d samples: %s", self.skips.total, self.skips.as_dict())

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        return [len(item.input_ids) for item in self.items]

    def __getitem__(self, i: int) -> dict | None:
        item = self.items[i]
        try:
            decoded = [
                load_media_item(
                    m, modality=self.processor.spec.modality, source=item.source, index=item.index,
                    sampling_rate=self.processor.spec.sampling_rate,
                )
                for m in item.media
            ]  # fmt: skip
        except BadSampleError as err:
            if self.on_bad_sample == "error":
                raise
            self.skips.add(err, key=("media", item.source, item.index))  # once, however many epochs
            return None
        return {
            "input_ids": torch.tensor(item.input_ids),
            "labels": torch.tensor(item.labels),
            "media": self.processor.process_media(decoded),
        }


def pad_sequences(seqs: list[torch.Tensor], value: int, left: bool = False) -> torch.Tensor:
    """Stack 1-D tensors into (B, T_max), padding on the right (or left)."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype)
    for row, s in enumerate(seqs):
        if left:
            out[row, width - len(s) :] = s
        else:
            out[row, : len(s)] = s
    return out


class SFTCollator:
    """Right-pads a list of dataset items into a batch; drops None (skipped) items."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict | None]) -> dict:
        items = [it for it in items if it is not None]
        if not items:
            return {"empty": True}
        input_ids = pad_sequences([it["input_ids"] for it in items], self.pad_token_id)
        labels = pad_sequences([it["labels"] for it in items], IGNORE_INDEX)
        attention_mask = pad_sequences([torch.ones_like(it["input_ids"]) for it in items], 0)
        media = [it["media"] for it in items if it.get("media") is not None]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "media": torch.cat(media) if media else None,
        }
        features = [it["media_features"] for it in items if it.get("media_features") is not None]
        if features:  # cached encoder outputs (vlmkit.models.feature_cache), (n, N, D_enc)
            batch["media_features"] = torch.cat(features)
        return batch
