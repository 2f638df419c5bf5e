"""AudioClipDataset's bad input: errors name file, record and field; `on_bad_sample: skip` counts each bad
record once and drops it."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from vlmkit.data.records import BadSampleError, SkipCounter
from vlmkit.ssl.audio_data import AudioClipDataset, collate_clips
from vlmkit.ssl.wav2vec2_pretraining import build_feature_extractor

RATE = 16000


def write_clip(path: Path, seed: int, seconds: float = 0.2) -> None:
    """A mono 16-bit PCM wav of noise plus a tone (the tone's pitch follows the seed)."""
    t = np.arange(int(RATE * seconds)) / RATE
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (200 + 150 * (seed % 2)) * t) + 0.05 * rng.standard_normal(len(t))
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(RATE)
        f.writeframes((x * 32767).astype(np.int16).tobytes())


def write_clips(
    folder: Path, name: str, n: int, *, missing_file: bool = False, missing_field: bool = False
) -> Path:
    """A JSON list of n good {audio, label} records, optionally followed by a missing file and a record
    without an audio field."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        write_clip(folder / f"{name}_{i}.wav", i)
        records.append({"audio": f"{name}_{i}.wav", "label": i % 2})
    if missing_file:
        records.append({"audio": "not_there.wav", "label": 0})
    if missing_field:
        records.append({"label": 1})
    path = folder / f"{name}.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def feature_extractor():
    return build_feature_extractor(None, RATE)


def test_bad_records_raise_naming_file_record_and_field(tmp_path, feature_extractor):
    path = write_clips(tmp_path, "clips", 2, missing_field=True)
    with pytest.raises(BadSampleError, match=r"clips\.json, record 2, field 'audio'"):
        AudioClipDataset(str(path), feature_extractor, num_samples=3200)
    path = write_clips(tmp_path, "clips", 2, missing_file=True)
    dataset = AudioClipDataset(str(path), feature_extractor, num_samples=3200)
    with pytest.raises(BadSampleError, match=r"clips\.json, record 2, field 'audio': audio not found"):
        dataset[2]


def test_skip_drops_and_counts_each_bad_record_once(tmp_path, feature_extractor):
    path = write_clips(tmp_path, "clips", 3, missing_file=True, missing_field=True)
    skips = SkipCounter()
    dataset = AudioClipDataset(
        str(path), feature_extractor, num_samples=3200, on_bad_sample="skip", skips=skips
    )
    assert len(dataset) == 4 and skips.total == 1  # the record without an audio field is dropped at once
    for _ in range(3):  # three epochs read the missing file: still one skip
        assert dataset[3] is None
    assert skips.total == 2 and skips.as_dict() == {"missing field": 1, "audio not found": 1}
    batch = collate_clips([dataset[0], dataset[3], dataset[1]])
    assert batch["input_values"].shape == (2, 3200) and batch["labels"].tolist() == [0, 1]
    assert collate_clips([dataset[3]]) == {"empty": True}
