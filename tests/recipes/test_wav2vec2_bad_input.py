"""recipes/wav2vec2_pretrain.py finishes the run contract without an eval set, and honours on_bad_sample."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

RATE, SAMPLES = 16000, 3200  # 0.2 s clips: 9 latent frames
TINY = [
    "--hidden_size", "32", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "64",
    "--conv_dim", "16,16,16,16,16,16,16", "--codevector_dim", "16", "--proj_codevector_dim", "16",
    "--num_codevectors_per_group", "8", "--mask_length", "2", "--num_negatives", "4",
    "--audio_samples", str(SAMPLES), "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
    "--max_steps", "2", "--logging_steps", "1", "--report_to", "none",
]  # fmt: skip


def write_clips(folder: Path, name: str, n: int, bad: list[dict] = ()) -> str:
    """A JSON list of n tone-plus-noise clips labelled 0/1 by pitch, then the `bad` records."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(SAMPLES) / RATE
    records = []
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * (i % 2)) * t)
        x = x + 0.05 * np.random.default_rng(i).standard_normal(SAMPLES)
        with wave.open(str(folder / f"{name}_{i}.wav"), "wb") as f:
            f.setnchannels(1), f.setsampwidth(2), f.setframerate(RATE)
            f.writeframes((x * 32767).astype(np.int16).tobytes())
        records.append({"audio": f"{name}_{i}.wav", "label": i % 2})
    path = folder / f"{name}.json"
    path.write_text(json.dumps(records + list(bad)))
    return str(path)


@pytest.mark.slow
def test_without_eval_data_the_run_still_writes_metrics_and_card(recipe, tmp_path):
    out = tmp_path / "out"
    data = write_clips(tmp_path / "clips", "train", 8)
    metrics = recipe("wav2vec2_pretrain").main(
        [*TINY, "--data_path", data, "--eval_data_path", "none", "--output_dir", str(out)]
    )
    assert metrics["global_step"] == 2 and not any(k.startswith("eval_") for k in metrics), metrics
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in ("README.md", "loss.png", "model.safetensors", "preprocessor_config.json", "config.yaml"):
        assert (out / name).is_file(), name


BAD = [{"audio": "not_there.wav", "label": 0}, {"label": 1}]  # a missing file, a record without audio


@pytest.mark.slow
def test_bad_clips_stop_the_run_naming_the_record_or_are_skipped_and_counted(recipe, tmp_path):
    data = write_clips(tmp_path / "clips", "train", 8, bad=BAD)
    held_out = write_clips(tmp_path / "clips", "eval", 6)
    args = [*TINY, "--data_path", data, "--eval_data_path", held_out]
    # The first bad record (index 8, a missing file) is named, before any training step.
    with pytest.raises(ValueError, match=r"train\.json, record 8, field 'audio': media file not found"):
        recipe("wav2vec2_pretrain").main([*args, "--output_dir", str(tmp_path / "error")])

    out = tmp_path / "skip"
    metrics = recipe("wav2vec2_pretrain").main([*args, "--output_dir", str(out), "--on_bad_sample", "skip"])
    # Each bad record counted once, though training and the probe both read the training clips.
    assert metrics["skipped_samples"] == 2, metrics
    assert json.loads((out / "skipped.json").read_text()) == {"missing field": 1, "audio not found": 1}
    assert 0.0 <= metrics["eval_linear_probe_accuracy"] <= 1.0 and "eval_codebook_perplexity" in metrics
