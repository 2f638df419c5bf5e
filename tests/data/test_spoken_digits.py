"""The embedded spoken digits dataset: WAV format, held-out accent, determinism and a missing espeak-ng."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from vlmkit.data.digits import DIGIT_WORDS, digit_named_in
from vlmkit.data.spoken_digits import build_spoken_digits_dataset, fit_clip

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
SMALL = {
    "train_voices": ("en-us", "en-gb-scotland"),
    "eval_voice": "en-029",
    "variants": ("", "+f3"),
    "speeds": (170,),
    "pitches": (50,),
}


def _load(paths: dict[str, str], stem: str) -> list | dict:
    return json.loads(Path(paths[stem]).read_text())


def _read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path)) as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    return x, rate, channels, width


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return build_spoken_digits_dataset(tmp_path_factory.mktemp("spoken") / "data", seed=0, **SMALL)


@needs_espeak
def test_valid_16khz_mono_one_second_wavs(built):
    root = Path(built["root"])
    ssl = _load(built, "ssl_train") + _load(built, "ssl_eval")
    assert len(ssl) == 2 * 2 * 10 + 1 * 2 * 10
    for r in ssl:
        x, rate, channels, width = _read_wav(root / r["audio"])
        assert (rate, channels, width, len(x)) == (16000, 1, 2, 16000)
        assert 0.35 < np.abs(x).max() < 0.95  # rescaled speech, not silence or clipping
        assert int(Path(r["audio"]).parent.name) == r["label"]
        frames = np.abs(x).reshape(100, 160).max(axis=1)  # 10 ms frames
        assert 0.15 < (frames > 0.05).mean() < 0.8  # speech occupies part of the window, noise the rest


@needs_espeak
def test_eval_accent_is_held_out_and_records_match(built):
    train, evl = _load(built, "ssl_train"), _load(built, "ssl_eval")
    assert {r["voice"] for r in train} == {"en-us", "en-gb-scotland"}
    assert {r["voice"] for r in evl} == {"en-029"}
    assert {r["label"] for r in train} == {r["label"] for r in evl} == set(range(10))
    assert not {r["audio"] for r in train} & {r["audio"] for r in evl}
    for split in ("train", "eval"):
        stage2 = _load(built, f"audio_stage2_{split}")
        assert len(stage2) == len(_load(built, f"ssl_{split}"))
        for r in stage2:
            assert r["conversations"][0]["value"].count("<audio>") == 1
            assert r["conversations"][1]["value"] == Path(r["audio"]).parent.name
        for r in _load(built, f"audio_stage1_{split}"):
            d = Path(r["audio"]).parent.name
            caption = r["conversations"][1]["value"]
            assert DIGIT_WORDS[int(d)] in caption or f" {d}," in caption
        for r in _load(built, f"audio_preference_{split}"):
            d = Path(r["audios"][0]).parent.name
            assert digit_named_in(r["chosen"]) == d != digit_named_in(r["rejected"])
            assert "<audio>" in r["prompt"]
        for r in _load(built, f"audio_prompts_{split}"):
            assert r["answer"] == Path(r["audios"][0]).parent.name and len(r["audios"]) == 1
    assert _load(built, "labels") == DIGIT_WORDS


@needs_espeak
def test_determinism_and_sample_rate(built, tmp_path):
    fp = _load(built, "manifest")["fingerprint"]
    assert (
        _load(build_spoken_digits_dataset(tmp_path / "a", seed=0, **SMALL), "manifest")["fingerprint"] == fp
    )
    small = {**SMALL, "variants": ("",)}
    other = build_spoken_digits_dataset(tmp_path / "b", seed=3, sample_rate=8000, duration_s=0.75, **small)
    assert _load(other, "manifest")["fingerprint"] != fp
    x, rate, _, _ = _read_wav(Path(other["root"]) / _load(other, "ssl_eval")[0]["audio"])
    assert (rate, len(x)) == (8000, 6000)


@needs_espeak
@pytest.mark.parametrize(
    ("change", "bad"),
    [
        ({"train_voices": ("no-such-voice",)}, "no-such-voice"),
        ({"variants": ("", "+nosuchvariant")}, "nosuch"),
    ],
)
def test_unknown_voice_or_variant_is_named(tmp_path, change, bad):
    with pytest.raises(RuntimeError, match=bad):  # espeak-ng itself falls back silently for a bad variant
        build_spoken_digits_dataset(tmp_path / "x", **{**SMALL, **change})
    assert list(tmp_path.iterdir()) == []  # the temporary build directory was removed


def test_missing_espeak_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="espeak-ng not found.*apt-get install espeak-ng"):
        build_spoken_digits_dataset(tmp_path / "out", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_never_replaces_another_dataset(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "digits", "params": {}}))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_spoken_digits_dataset(tmp_path, **SMALL)
    assert json.loads((tmp_path / "manifest.json").read_text())["name"] == "digits"


def test_eval_voice_must_be_held_out(tmp_path):
    with pytest.raises(ValueError, match="held out"):
        build_spoken_digits_dataset(tmp_path, **{**SMALL, "eval_voice": "en-us"})


def test_fit_clip_resamples_shifts_and_crops():
    t = np.arange(int(0.3 * 22050)) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    starts = set()
    for i in range(5):
        y = fit_clip(tone, 22050, np.random.default_rng(i), noise_std=0.0)
        assert y.shape == (16000,) and y.dtype == np.float32
        loud = np.nonzero(np.abs(y) > 0.01)[0]
        assert abs((loud[-1] - loud[0]) / 16000 - 0.3) < 0.01  # 0.3 s of tone survives resampling
        starts.add(int(loud[0]))
    assert len(starts) == 5  # random time shift
    long = np.tile(tone, 10)  # 3 s: cropped to the window
    y = fit_clip(long, 22050, np.random.default_rng(0), noise_std=0.0)
    assert y.shape == (16000,) and (np.abs(y[:100]) > 0).any() and (np.abs(y[-100:]) > 0).any()
    noisy = fit_clip(tone, 22050, np.random.default_rng(0), noise_std=0.01)
    assert 0.005 < float(np.std(noisy[np.abs(noisy) < 0.05])) < 0.02
