"""Audio clips for stage-0 speech pretraining: a labelled-clip dataset and its collator.

Records are JSON objects ``{"audio": <path>, "label": <int>, ...}`` (the embedded
``vlmkit-data/spoken_digits/ssl_{train,eval}.json``); the label is only read by the linear probe,
never by pretraining. Every clip is cut or zero-padded to a fixed length and normalised the way the
saved ``Wav2Vec2FeatureExtractor`` normalises it, so stage 1 sees exactly what stage 0 trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vlmkit.data.embedded import media_root, resolve_data_path
from vlmkit.data.media import load_audio, resolve_media_path
from vlmkit.data.records import BadSampleError, SkipCounter

__all__ = ["AudioClipDataset", "collate_clips", "fit_length", "read_clip_records"]


def read_clip_records(
    path: str, *, on_bad_sample: str = "error", skips: SkipCounter | None = None
) -> tuple[list[dict], str]:
    """Read a JSON list (or JSON-lines file) of ``{"audio", "label"}`` records.

    Returns the usable records (each with its position in the file under ``_index``, for error messages)
    and the resolved file path. A record without an ``audio`` field raises
    ``BadSampleError`` naming it, or with ``on_bad_sample="skip"`` is counted in ``skips`` and dropped.
    """
    resolved = resolve_data_path(path)
    if not resolved or not Path(resolved).is_file():
        raise FileNotFoundError(f"audio data file not found: {path!r}; give a JSON list of {{audio, label}}")
    text = Path(resolved).read_text()
    if resolved.endswith(".jsonl"):
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        records = json.loads(text)
    if not isinstance(records, list) or not records:
        raise ValueError(f"{resolved}: expected a non-empty JSON list of {{audio, label}} records")
    usable = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "audio" not in record:
            err = BadSampleError(resolved, i, "audio", "missing field: every record needs an 'audio' path")
            if on_bad_sample != "skip":
                raise err
            if skips is not None:
                skips.add(err)
            continue
        usable.append({**record, "_index": i})
    if not usable:
        raise ValueError(f"{resolved}: no usable {{audio, label}} record (every record was skipped)")
    return usable, resolved


def fit_length(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut or zero-pad a mono clip (L,) to (num_samples,)."""
    return np.pad(x[:num_samples], (0, max(0, num_samples - len(x))))


class AudioClipDataset(Dataset):
    """Fixed-length, normalised clips with integer labels (-1 when a record has none).

    Items are ``{"input_values": (num_samples,) float32, "label": int}``. Audio is decoded lazily;
    paths are relative to ``audio_folder`` (default: the data file's folder). A record whose audio is
    missing or unreadable raises ``BadSampleError`` naming it, or with ``on_bad_sample="skip"`` yields None
    (dropped by `collate_clips`) and is counted in ``skips`` once, however many epochs read it.
    """

    def __init__(
        self,
        path: str,
        feature_extractor,
        *,
        num_samples: int = 16000,
        audio_folder: str | None = None,
        allow_outside_root: bool = False,
        on_bad_sample: str = "error",
        skips: SkipCounter | None = None,
    ):
        self.records, self.source = read_clip_records(path, on_bad_sample=on_bad_sample, skips=skips)
        self.root = media_root(path, audio_folder) or str(Path(self.source).parent)
        self.feature_extractor = feature_extractor
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.num_samples = num_samples
        self.allow_outside_root = allow_outside_root
        self.on_bad_sample, self.skips = on_bad_sample, skips
        self.bad: set[int] = set()  # records found unusable, counted once

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> torch.Tensor:
        """(N,) long labels in record order."""
        return torch.tensor([int(r.get("label", -1)) for r in self.records])

    def __getitem__(self, i: int) -> dict | None:
        if i in self.bad:
            return None
        record = self.records[i]
        where = dict(source=self.source, index=record["_index"], field_name="audio")
        try:
            path = resolve_media_path(
                record["audio"], self.root, allow_outside_root=self.allow_outside_root, **where
            )
            x = load_audio(path, target_sr=self.sampling_rate, **where)
        except BadSampleError as err:
            if self.on_bad_sample != "skip":
                raise
            self.bad.add(i)
            if self.skips is not None:
                self.skips.add(err)
            return None
        x = fit_length(x, self.num_samples)
        values = self.feature_extractor(x, sampling_rate=self.sampling_rate, return_tensors="np")
        return {
            "input_values": torch.from_numpy(np.asarray(values["input_values"][0], dtype=np.float32)),
            "label": int(record.get("label", -1)),
        }


def collate_clips(items: list[dict | None]) -> dict:
    """Stack clips: ``{"input_values": (B, L), "labels": (B,)}``; skipped (None) items are dropped, and a batch
    of skipped items only is ``{"empty": True}``."""
    items = [it for it in items if it is not None]
    if not items:
        return {"empty": True}
    return {
        "input_values": torch.stack([it["input_values"] for it in items]),
        "labels": torch.tensor([it["label"] for it in items]),
    }
