"""Image data for stage-0 encoder pretraining: image-caption pairs (CLIP) and plain labelled images (MAE).

Records are JSON lists (or JSON lines) of objects ``{"image": path, "caption": str, "label": int}``;
``caption`` is needed for CLIP training, ``label`` only for the held-out evaluations (zero-shot
classification, linear probe). Relative image paths resolve against ``image_folder``, else the data
file's directory, and may not escape it unless ``allow_outside_root``. Images decode lazily.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlmkit.data.embedded import media_root, resolve_data_path
from vlmkit.data.media import load_image, resolve_media_item
from vlmkit.data.records import BadSampleError, SkipCounter

logger = logging.getLogger(__name__)

__all__ = [
    "ClipCollator",
    "ImageCollator",
    "ImageRecord",
    "ImageRecordDataset",
    "read_image_records",
    "tokenize_captions",
]


@dataclass
class ImageRecord:
    """One image with its optional caption and class label; `source`/`index` say where it came from."""

    image: str | bytes
    caption: str | None
    label: int | None
    source: str
    index: int


def _load_rows(path: str) -> list:
    text = Path(path).read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: neither a JSON list nor JSON lines ({err})") from err
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of {{image, caption, label}} objects")
    return rows


def _convert(row, source: str, index: int, root: str, need_caption: bool, need_label: bool, allow: bool):
    if not isinstance(row, dict):
        raise BadSampleError(source, index, None, f"bad record: expected an object, got {type(row).__name__}")
    if "image" not in row:
        raise BadSampleError(source, index, "image", "missing field: every record needs an 'image'")
    image = resolve_media_item(
        row["image"], root, allow_outside_root=allow, source=source, index=index, field_name="image"
    )
    caption = row.get("caption")
    if need_caption and (not isinstance(caption, str) or not caption.strip()):
        raise BadSampleError(source, index, "caption", f"missing caption: expected text, got {caption!r}")
    label = row.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        raise BadSampleError(source, index, "label", f"bad label: expected an integer >= 0, got {label!r}")
    if need_label and label is None:
        raise BadSampleError(source, index, "label", "missing label: the evaluation needs class labels")
    return ImageRecord(image, caption, label, source, index)


def read_image_records(
    path: str,
    image_folder: str | None = None,
    *,
    need_caption: bool = False,
    need_label: bool = False,
    allow_outside_root: bool = False,
    on_bad_sample: str = "error",
    skips: SkipCounter | None = None,
) -> list[ImageRecord]:
    """Read image records from `path` (a file, or an embedded `vlmkit-data/...` name).

    Bad records raise `BadSampleError` naming file, index and field, or with `on_bad_sample="skip"`
    are counted in `skips` and dropped. Image files must exist; they are decoded later.
    """
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
    resolved = resolve_data_path(path)
    if not resolved or not os.path.isfile(resolved):
        raise FileNotFoundError(f"image data file not found: {path!r}; pass --data_path/--eval_data_path")
    root = media_root(path, image_folder) or os.path.dirname(os.path.abspath(resolved))
    skips = skips if skips is not None else SkipCounter()
    records = []
    for i, row in enumerate(_load_rows(resolved)):
        try:
            records.append(_convert(row, resolved, i, root, need_caption, need_label, allow_outside_root))
        except BadSampleError as err:
            if on_bad_sample == "error":
                raise
            skips.add(err)
    if not records:
        raise ValueError(f"{resolved}: no usable records ({skips.total} skipped: {skips.as_dict()})")
    return records


class ImageRecordDataset(Dataset):
    """Decodes and preprocesses images lazily.

    Items are ``{"pixel_values": (C, H, W), "caption": str | None, "label": int}`` (label -1 when
    absent), or None for an image that fails to decode under ``on_bad_sample="skip"``. With
    ``cache_images`` the preprocessed pixels are kept in memory after the first decode (for small
    datasets that fit in RAM; each data-loader worker holds its own copy).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        image_processor,
        *,
        on_bad_sample: str = "error",
        skips: SkipCounter | None = None,
        cache_images: bool = False,
    ):
        self.records = records
        self.image_processor = image_processor
        self.on_bad_sample = on_bad_sample
        self.skips = skips if skips is not None else SkipCounter()
        self.cache: dict[int, torch.Tensor | None] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.records)

    def _pixels(self, rec: ImageRecord) -> torch.Tensor | None:
        try:
            image = load_image(rec.image, source=rec.source, index=rec.index, field_name="image")
        except BadSampleError as err:
            if self.on_bad_sample == "error":
                raise
            self.skips.add(err)
            return None
        return self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]

    def __getitem__(self, i: int) -> dict | None:
        rec = self.records[i]
        if self.cache is not None and i in self.cache:
            pixels = self.cache[i]
        else:
            pixels = self._pixels(rec)
            if self.cache is not None:
                self.cache[i] = pixels  # a bad image is counted once and stays skipped
        if pixels is None:
            return None
        label = -1 if rec.label is None else rec.label
        return {"pixel_values": pixels, "caption": rec.caption, "label": label}

    def labels(self) -> torch.Tensor:
        """(N,) class labels of all records (-1 where absent)."""
        return torch.tensor([-1 if r.label is None else r.label for r in self.records])


class ImageCollator:
    """Stacks items into ``{"pixel_values": (B, C, H, W), "labels": (B,)}``; drops None items."""

    def __call__(self, items: list[dict | None]) -> dict:
        items = [it for it in items if it is not None]
        if not items:
            return {"empty": True}
        return {
            "pixel_values": torch.stack([it["pixel_values"] for it in items]),
            "labels": torch.tensor([it["label"] for it in items]),
        }


class ClipCollator(ImageCollator):
    """Adds tokenized captions: ``input_ids`` and ``attention_mask`` (B, T), right-padded.

    The tokenizer must end every caption with its end-of-text token (CLIP pools the text there);
    captions longer than `max_length` tokens are cut, keeping that final token.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: list[dict | None]) -> dict:
        batch = super().__call__(items)
        if batch.get("empty"):
            return batch
        captions = [it["caption"] for it in items if it is not None]
        batch.update(tokenize_captions(self.tokenizer, captions, self.max_length))
        return batch


def tokenize_captions(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenize `texts` to ``input_ids``/``attention_mask`` (B, T), each row ending in the EOS token."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    eos = tokenizer.eos_token_id
    if eos is not None:
        lengths = mask.sum(dim=1)
        last = ids[torch.arange(len(texts)), lengths - 1]
        cut = last != eos  # truncated rows lost their end token: put it back in the last slot
        ids[cut, lengths[cut] - 1] = eos
    return {"input_ids": ids, "attention_mask": mask}
