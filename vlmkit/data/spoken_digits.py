"""Embedded default audio data: the words "zero".."nine" synthesized offline with espeak-ng.

`build_spoken_digits_dataset(out_dir)` speaks every digit with several English accents (espeak-ng voices),
voice variants, speeds and pitches; one accent is held out for evaluation, so eval measures generalization
to an unheard accent. Each clip is resampled from espeak-ng's 22.05 kHz to `sample_rate`, trimmed of
silence, scaled to a random peak, placed at a random offset in a fixed `duration_s` window (speech longer
than the window keeps its first `duration_s` seconds; the default speeds stay under ~0.8 s), mixed with light
Gaussian noise, and written as 16-bit PCM mono WAV. All randomness is drawn per clip from (seed, clip index),
so the result does not depend on thread scheduling. Builds are atomic and idempotent like
`vlmkit.data.digits.build_digits_dataset`.
"""

from __future__ import annotations

import io
import math
import re
import shutil
import subprocess
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkit.data.digits import (
    DIGIT_WORDS,
    FORMAT_VERSION,
    MediaItem,
    build_atomically,
    caption_records,
    preference_records,
    prompt_records,
    qa_records,
    rng_for,
    write_json,
)
from vlmkit.data.records import AUDIO_TOKEN

# Accents available offline in Debian's espeak-ng (`espeak-ng --voices=en`); en-029 is Caribbean English.
DEFAULT_TRAIN_VOICES = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-us-nyc",
)
DEFAULT_EVAL_VOICE = "en-029"
DEFAULT_VARIANTS = ("", "+f3", "+m3")  # "" = the accent's default speaker; +f3/+m3 = espeak-ng variants
DEFAULT_SPEEDS = (150, 190)  # words per minute
DEFAULT_PITCHES = (35, 65)  # 0..99

AUDIO_CAPTIONS = [
    "the spoken digit {w}",
    "A voice saying the number {w}.",
    "Someone says {w}.",
    "A short recording of the word {w}.",
    "The number {n}, spoken aloud.",
]
AUDIO_STAGE1_INSTRUCTIONS = [
    "{token}",
    "{token}\nDescribe the audio briefly.",
    "{token}\nWhat is in this recording? Answer briefly.",
    "Describe the audio briefly.\n{token}",
]
AUDIO_QUESTIONS = [
    "Which digit is spoken?",
    "What number do you hear?",
    "What digit does the speaker say?",
    "Which number is said in the recording?",
    "Name the spoken digit.",
]
_MISSING = (
    "espeak-ng not found: install it with `apt-get install espeak-ng` (Debian/Ubuntu) or "
    "`brew install espeak-ng` (macOS), or use an already-built spoken digits directory."
)


@dataclass(frozen=True)
class _Clip:
    index: int
    split: str
    voice: str
    variant: str
    speed: int
    pitch: int
    label: int

    @property
    def name(self) -> str:
        variant = f"_{self.variant.lstrip('+')}" if self.variant else ""
        return f"{self.voice}{variant}_s{self.speed}_p{self.pitch}"

    @property
    def path(self) -> str:
        return f"audio/{self.split}/{self.label}/{self.name}.wav"


def find_espeak() -> str:
    """Path of the espeak-ng binary, or RuntimeError saying how to install it."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError(_MISSING)
    return binary


def _listed(binary: str, kind: str) -> set[str]:
    """Names `espeak-ng --voices[=kind]` lists: language tags, voice names and voice files (lowercased)."""
    out = subprocess.run([binary, f"--voices{kind}"], capture_output=True, text=True, check=False).stdout
    names = set()
    for line in out.lower().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            names.update([parts[1], parts[3], parts[4], parts[4].split("/")[-1]])
            names.update(re.findall(r"\((\S+) \d+\)", line))
    return names


def check_voices(binary: str, voices: Sequence[str]) -> None:
    """Raise RuntimeError naming any voice ("accent" or "accent+variant") that espeak-ng cannot speak with.

    Needed because espeak-ng falls back silently: an unknown "+variant" is ignored and an unknown accent
    may match a language by prefix ("no-such-voice" speaks Norwegian).
    """
    accents, variants = _listed(binary, ""), _listed(binary, "=variant")
    for voice in voices:
        accent, _, variant = voice.partition("+")
        ok = accent.lower() in accents and (not variant or variant.lower() in variants)
        if ok:  # listed voices can still fail to load (MBROLA voices without mbrola installed)
            probe = subprocess.run([binary, "-v", voice, "--stdout", "x"], capture_output=True, check=False)
            ok = probe.returncode == 0 and len(probe.stdout) > 44
        if not ok:
            raise RuntimeError(
                f"espeak-ng has no usable voice {voice!r}. List accents with `espeak-ng --voices=en` and "
                "variants (the part after '+') with `espeak-ng --voices=variant`."
            )


def synthesize(binary: str, word: str, voice: str, speed: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak `word` with espeak-ng. Returns (float32 samples in [-1, 1], shape (n,); sample rate)."""
    cmd = [binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(
            f"espeak-ng failed for voice {voice!r} (speed {speed}, pitch {pitch}): {err or 'no audio'}. "
            "List the installed voices with `espeak-ng --voices=en`."
        )
    # --stdout writes a streaming WAV header with a bogus length; wave reads what is actually there.
    with wave.open(io.BytesIO(proc.stdout)) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        data = w.readframes(w.getnframes())
    if width != 2 or channels != 1:
        raise RuntimeError(
            f"espeak-ng gave {channels} channels of {8 * width}-bit audio; expected mono 16-bit"
        )
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, rate


def fit_clip(
    x: np.ndarray,
    rate: int,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    duration_s: float = 1.0,
    noise_std: float = 0.005,
) -> np.ndarray:
    """Resample, trim silence, rescale, shift and add noise. Returns float32 (round(duration_s*sample_rate),).

    Peak is set to U(0.4, 0.9); the speech starts at a uniform offset that keeps it inside the window;
    speech longer than the window is cut to its first `duration_s` seconds.
    """
    from scipy.signal import resample_poly

    if rate != sample_rate:
        g = math.gcd(rate, sample_rate)
        x = resample_poly(x, sample_rate // g, rate // g).astype(np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak <= 0.0:
        raise RuntimeError("espeak-ng produced a silent clip")
    loud = np.nonzero(np.abs(x) > 0.02 * peak)[0]
    x = x[loud[0] : loud[-1] + 1] * (rng.uniform(0.4, 0.9) / peak)
    n = int(round(duration_s * sample_rate))
    x = x[:n]
    out = np.zeros(n, dtype=np.float32)
    start = int(rng.integers(0, n - len(x) + 1))
    out[start : start + len(x)] = x
    out += rng.normal(0.0, noise_std, size=n).astype(np.float32)
    return np.clip(out, -1.0, 1.0)


def write_wav(path: Path, x: np.ndarray, sample_rate: int) -> None:
    """Write float samples in [-1, 1] as 16-bit PCM mono WAV (stdlib `wave`)."""
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())


def build_spoken_digits_dataset(
    out_dir: str | Path,
    seed: int = 0,
    sample_rate: int = 16000,
    eval_voice: str = DEFAULT_EVAL_VOICE,
    train_voices: Sequence[str] = DEFAULT_TRAIN_VOICES,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    speeds: Sequence[int] = DEFAULT_SPEEDS,
    pitches: Sequence[int] = DEFAULT_PITCHES,
    duration_s: float = 1.0,
    noise_std: float = 0.005,
    num_workers: int = 4,
) -> dict[str, str]:
    """Build the spoken digits dataset under `out_dir` (idempotent, atomic, deterministic by `seed`).

    Clips: every digit x voice x variant x speed x pitch; `eval_voice` (all its variants) is the eval split.
    Defaults give 840 train and 120 eval clips. Audio: `audio/{train,eval}/<label>/<name>.wav`.
    JSON files (train and eval each): audio_stage1_*, audio_stage2_* (LLaVA with "audio"), audio_preference_*
    and audio_prompts_* (with "audios"), ssl_* ({"audio", "label", "voice", ...}); plus labels and manifest.
    Returns absolute paths keyed by file stem plus "root" and "manifest".
    """
    train_voices, variants = list(train_voices), list(variants)
    if not train_voices or not variants or not speeds or not pitches:
        raise ValueError("train_voices, variants, speeds and pitches must each name at least one value")
    if eval_voice in train_voices:
        raise ValueError(
            f"eval_voice {eval_voice!r} is also in train_voices; the eval accent must be held out"
        )
    if sample_rate <= 0 or duration_s <= 0:
        raise ValueError(f"sample_rate and duration_s must be positive, got {sample_rate}, {duration_s}")
    params = {
        "seed": seed,
        "sample_rate": sample_rate,
        "eval_voice": eval_voice,
        "train_voices": train_voices,
        "variants": variants,
        "speeds": [int(s) for s in speeds],
        "pitches": [int(p) for p in pitches],
        "duration_s": duration_s,
        "noise_std": noise_std,
        "format_version": FORMAT_VERSION,
    }
    return build_atomically(
        out_dir, "spoken_digits", params, lambda tmp: _build(tmp, params, max(1, num_workers))
    )


def _build(root: Path, params: dict, num_workers: int) -> dict:
    binary = find_espeak()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    accents = params["train_voices"] + [params["eval_voice"]]
    check_voices(binary, sorted({a + v for a in accents for v in params["variants"]}))
    clips: list[_Clip] = []
    voices = [("train", v) for v in params["train_voices"]] + [("eval", params["eval_voice"])]
    for split, voice in voices:
        for variant in params["variants"]:
            for speed in params["speeds"]:
                for pitch in params["pitches"]:
                    for label in range(10):
                        clips.append(_Clip(len(clips), split, voice, variant, speed, pitch, label))

    def make(clip: _Clip) -> None:
        x, rate = synthesize(
            binary, DIGIT_WORDS[clip.label], clip.voice + clip.variant, clip.speed, clip.pitch
        )
        rng = np.random.default_rng([params["seed"], clip.index])
        y = fit_clip(x, rate, rng, params["sample_rate"], params["duration_s"], params["noise_std"])
        (root / clip.path).parent.mkdir(parents=True, exist_ok=True)
        write_wav(root / clip.path, y, params["sample_rate"])

    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        list(pool.map(make, clips))  # re-raises the first failure

    seed, tok, counts = params["seed"], AUDIO_TOKEN, {}
    for split in ("train", "eval"):
        chosen = [c for c in clips if c.split == split]
        items = [MediaItem(c.path, c.label, f"spoken-{split}-{c.name}-{c.label}") for c in chosen]
        files = {
            "audio_stage1": caption_records(
                items,
                rng_for(seed, f"a_stage1_{split}"),
                tok,
                "audio",
                AUDIO_CAPTIONS,
                AUDIO_STAGE1_INSTRUCTIONS,
            ),
            "audio_stage2": qa_records(
                items,
                rng_for(seed, f"a_stage2_{split}"),
                tok,
                "audio",
                AUDIO_QUESTIONS,
                follow_up_prob=0.25 if split == "train" else 0.0,
            ),
            "audio_preference": preference_records(
                items, rng_for(seed, f"a_pref_{split}"), tok, "audios", AUDIO_QUESTIONS
            ),
            "audio_prompts": prompt_records(
                items, rng_for(seed, f"a_prompts_{split}"), tok, "audios", AUDIO_QUESTIONS
            ),
            "ssl": [
                {
                    "audio": c.path,
                    "label": c.label,
                    "voice": c.voice,
                    "variant": c.variant.lstrip("+"),
                    "speed": c.speed,
                    "pitch": c.pitch,
                }
                for c in chosen
            ],
        }
        for kind, records in files.items():
            write_json(root / f"{kind}_{split}.json", records)
            counts[f"{kind}_{split}"] = len(records)
    write_json(root / "labels.json", DIGIT_WORDS)
    return {
        "counts": counts,
        "num_clips": {s: sum(c.split == s for c in clips) for s in ("train", "eval")},
        "espeak_ng_version": version.strip(),
        "audio": f"16-bit PCM mono WAV, {params['sample_rate']} Hz, {params['duration_s']} s",
    }
