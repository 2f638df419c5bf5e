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
from vlmkit.data.records import BadSampleError

__all__ = ["AudioClipDataset", "collate_clips", "fit_length", "read_clip_records"]


def read_clip_records(path: str) -> tuple[list[dict], str]:
    """Read a JSON list (or JSON-lines file) of ``{"audio", "label"}`` records.

    Returns the records and the resolved file path. Raises ``BadSampleError`` naming the record
    whose ``audio`` field is missing.
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
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "audio" not in record:
            raise BadSampleError(resolved, i, "audio", "missing field: every record needs an 'audio' path")
    return records, resolved


def fit_length(x: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut or zero-pad a mono clip (L,) to (num_samples,)."""
    return np.pad(x[:num_samples], (0, max(0, num_samples - len(x))))


class AudioClipDataset(Dataset):
    """Fixed-length, normalised clips with integer labels (-1 when a record has none).

    Items are ``{"input_values": (num_samples,) float32, "label": int}``. Audio is decoded lazily;
    paths are relative to ``audio_folder`` (default: the data file's folder).
    """

    def __init__(
        self,
        path: str,
        feature_extractor,
        *,
        num_samples: int = 16000,
        audio_folder: str | None = None,
        allow_outside_root: bool = False,
    ):
        self.records, self.source = read_clip_records(path)
        self.root = media_root(path, audio_folder) or str(Path(self.source).parent)
        self.feature_extractor = feature_extractor
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.num_samples = num_samples
        self.allow_outside_root = allow_outside_root

    def __len__(self) -> int:
        return len(self.records)

    def labels(self) -> torch.Tensor:
        """(N,) long labels in record order."""
        return torch.tensor([int(r.get("label", -1)) for r in self.records])

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        path = resolve_media_path(
            record["audio"], self.root, allow_outside_root=self.allow_outside_root,
            source=self.source, index=i, field_name="audio",
        )  # fmt: skip
        x = load_audio(path, target_sr=self.sampling_rate, source=self.source, index=i, field_name="audio")
        x = fit_length(x, self.num_samples)
        values = self.feature_extractor(x, sampling_rate=self.sampling_rate, return_tensors="np")
        return {
            "input_values": torch.from_numpy(np.asarray(values["input_values"][0], dtype=np.float32)),
            "label": int(record.get("label", -1)),
        }


def collate_clips(items: list[dict]) -> dict:
    """Stack clips: ``{"input_values": (B, L), "labels": (B,)}``."""
    return {
        "input_values": torch.stack([it["input_values"] for it in items]),
        "labels": torch.tensor([it["label"] for it in items]),
    }
