"""Safe, lazy media loading: images to 8-bit RGB, audio to mono float32, paths kept inside their root.

Every failure is a `BadSampleError` naming the data file, record index and field, so a bad image in a
multi-hour run says where it came from. Reasons start with a short category ("image not found: ...")
that `SkipCounter` groups by.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
import warnings
import wave
from typing import Any

import numpy as np
from PIL import Image

from vlmkit.data.records import BadSampleError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def resolve_media_path(
    rel: str,
    root: str | None,
    *,
    allow_outside_root: bool = False,
    source: str,
    index: int | None,
    field_name: str,
) -> str:
    """Join a media path from a record with its root folder and return the absolute path.

    Refuses remote URLs (there is no network) and, unless `allow_outside_root`, any path whose
    symlink-resolved location is outside `root` (`../` escapes, absolute paths elsewhere, symlinks
    pointing out). `file://` prefixes are stripped. With `root=None` the path is taken relative to the
    current directory and not contained.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise BadSampleError(
            source, index, field_name, f"bad media path: expected a non-empty string, got {rel!r}"
        )
    if rel.startswith("file://"):
        rel = rel[len("file://") :]
    elif _URL.match(rel):
        raise BadSampleError(
            source,
            index,
            field_name,
            f"remote media not supported: {rel!r}; there is no network at training time, "
            "download the file and give its local path",
        )
    if root is None:
        return os.path.abspath(rel)
    joined = os.path.abspath(os.path.join(root, rel))
    if not allow_outside_root:
        real_root, real = os.path.realpath(root), os.path.realpath(joined)
        if os.path.commonpath([real_root, real]) != real_root:
            raise BadSampleError(
                source,
                index,
                field_name,
                f"media path outside root: {rel!r} resolves to {real}, outside the media folder {real_root}; "
                "fix the path, or pass --allow_outside_media_root true if this is intended",
            )
    return joined


def resolve_media_item(
    item: Any,
    root: str | None,
    *,
    allow_outside_root: bool = False,
    check_files: bool = True,
    source: str,
    index: int | None,
    field_name: str,
) -> Any:
    """Turn one media entry of a record into what `load_image` / `load_audio` take, without decoding.

    Paths go through `resolve_media_path` (and must exist when `check_files`); `data:` URLs and
    `{"bytes": ...}` dicts become raw bytes; `{"path": ...}` dicts are paths; PIL images, arrays and decoded
    audio dicts (`{"array", "sampling_rate"}`) pass through.
    """
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            return bytes(item["bytes"])
        if item.get("array") is not None:
            return item
        item = item.get("path")
    if isinstance(item, str) and item.startswith("data:"):
        try:
            return base64.b64decode(item.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as err:
            raise BadSampleError(
                source, index, field_name, "bad data URL: expected 'data:<mime>;base64,<data>'"
            ) from err
    if isinstance(item, str):
        path = resolve_media_path(
            item,
            root,
            allow_outside_root=allow_outside_root,
            source=source,
            index=index,
            field_name=field_name,
        )
        if check_files and not os.path.isfile(path):
            reason = (
                f"media file not found: {path}; check the path and --image_folder/--audio_folder "
                "(--eval_image_folder/--eval_audio_folder for held-out data)"
            )
            raise BadSampleError(source, index, field_name, reason)
        return path
    if isinstance(item, Image.Image) or hasattr(item, "shape"):
        return item
    reason = f"bad media item: expected a path, bytes, image or array, got {type(item).__name__}"
    raise BadSampleError(source, index, field_name, reason)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled (not clipped)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.min() >= 0 and arr.max() <= 65535):
            arr = arr / 257.0  # full 16-bit range -> 0..255, so 65535 -> 255
        elif mode == "F" and arr.min() >= 0 and arr.max() <= 1:
            arr = arr * 255.0
        else:  # 32-bit int or float outside a known range: stretch min..max
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _check_pixels(img: Image.Image, max_pixels: int, where: tuple) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise BadSampleError(
            *where,
            f"image too large: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}; "
            "resize the image (the limit guards against decompression bombs)",
        )


def load_image(
    path_or_image: Any,
    *,
    source: str,
    index: int | None,
    field_name: str = "images",
    max_pixels: int = 64_000_000,
) -> Image.Image:
    """Decode an image fully and return it as an 8-bit RGB `PIL.Image`.

    Accepts a file path, raw bytes, a `{"bytes": ..., "path": ...}` dict (Hugging Face `Image(decode=False)`)
    or a PIL image. The pixel count is checked from the header before any pixel data is decoded; PIL's
    decompression-bomb warning is an error too. Missing, truncated, corrupt or non-image files raise
    `BadSampleError` naming the file, `source`, `index` and `field_name`.
    """
    where = (source, index, field_name)
    obj = path_or_image
    if isinstance(obj, dict):
        obj = obj.get("bytes") or obj.get("path")
    if isinstance(obj, Image.Image):
        _check_pixels(obj, max_pixels, where)
        try:
            obj.load()
            return _to_rgb(obj)
        except Exception as err:
            raise BadSampleError(*where, f"corrupt image: in-memory image failed to decode ({err})") from err
    if isinstance(obj, (bytes, bytearray)):
        name, fp = "<bytes>", io.BytesIO(obj)
    elif isinstance(obj, (str, os.PathLike)):
        name = fp = os.fspath(obj)
        if not os.path.isfile(name):
            raise BadSampleError(*where, f"image not found: {name}; check the path and image_folder")
    else:
        raise BadSampleError(
            *where, f"bad image value: expected a path, bytes or PIL image, got {type(obj).__name__}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                _check_pixels(img, max_pixels, where)  # header only: nothing decoded yet
                img.load()  # forces the full decode, so truncated files fail here, not in a worker later
                return _to_rgb(img)
    except BadSampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadSampleError(
            *where, f"image too large: {name}: {err}; resize it or raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from err
    except Image.UnidentifiedImageError as err:
        raise BadSampleError(*where, f"not an image: {name} is not a format PIL can read") from err
    except Exception as err:  # decoders raise OSError, SyntaxError, ValueError, zlib.error ...
        raise BadSampleError(*where, f"corrupt image: {name} failed to decode ({err})") from err


def _read_wav(fp: Any, name: str, max_seconds: float, where: tuple) -> tuple[np.ndarray, int]:
    """Read PCM WAV (8/16/24/32-bit) with the stdlib; returns (frames x channels float32, rate)."""
    try:
        with wave.open(fp, "rb") as wf:
            sr, width, channels, n = wf.getframerate(), wf.getsampwidth(), wf.getnchannels(), wf.getnframes()
            if sr > 0 and n / sr > max_seconds:
                raise BadSampleError(
                    *where, f"audio too long: {name} is {n / sr:.1f}s > max_seconds={max_seconds}"
                )
            raw = wf.readframes(n)
    except (wave.Error, EOFError) as err:
        raise BadSampleError(
            *where, f"unreadable audio: {name} is not PCM WAV ({err}); convert it or `pip install soundfile`"
        ) from err
    usable = len(raw) // (width * channels) * (width * channels)
    buf = np.frombuffer(raw[:usable], dtype=np.uint8)
    if width == 1:  # 8-bit WAV is unsigned
        x = (buf.astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # little-endian 24-bit: widen to int32 by putting the bytes in the top three
        b = buf.reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)).astype(np.float32) / 2**31
    elif width in (2, 4):
        x = np.frombuffer(raw[:usable], dtype=f"<i{width}").astype(np.float32) / 2 ** (8 * width - 1)
    else:
        raise BadSampleError(*where, f"unreadable audio: {name} has unsupported sample width {width} bytes")
    return x.reshape(-1, channels), sr


def _resample(x: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """Polyphase (windowed-sinc) resampling via scipy; linear interpolation if scipy is missing."""
    if sr == target_sr:
        return x
    try:
        from scipy.signal import resample_poly
    except ImportError:
        n_out = max(1, round(len(x) * target_sr / sr))
        return np.interp(np.arange(n_out) * (sr / target_sr), np.arange(len(x)), x).astype(np.float32)
    g = math.gcd(sr, target_sr)
    return resample_poly(x, target_sr // g, sr // g).astype(np.float32)


def load_audio(
    path_or_array: Any,
    *,
    target_sr: int = 16000,
    source: str,
    index: int | None,
    field_name: str = "audios",
    max_seconds: float = 60.0,
) -> np.ndarray:
    """Load audio as a mono float32 array at `target_sr`; shape (samples,).

    Accepts a file path, WAV bytes, a `{"bytes"|"path"|"array", "sampling_rate"}` dict (Hugging Face
    `Audio`), an `(array, rate)` tuple or an array already at `target_sr`. WAV is read with the stdlib
    `wave` module (PCM 8/16/24/32-bit); other formats need `soundfile`. Channels are averaged; empty,
    over-long (`max_seconds`) or non-finite audio raises `BadSampleError`.
    """
    where = (source, index, field_name)
    obj, sr, name = path_or_array, target_sr, "<array>"
    if isinstance(obj, dict):
        sr = obj.get("sampling_rate") or target_sr
        obj = next((obj[k] for k in ("array", "bytes", "path") if obj.get(k) is not None), None)
    if isinstance(obj, tuple) and len(obj) == 2:
        obj, sr = obj
    if isinstance(obj, (str, os.PathLike, bytes, bytearray)):
        if isinstance(obj, (bytes, bytearray)):
            name, fp = "<bytes>", io.BytesIO(obj)
        else:
            name = fp = os.fspath(obj)
            if not os.path.isfile(name):
                raise BadSampleError(*where, f"audio not found: {name}; check the path and audio_folder")
        try:
            import soundfile
        except ImportError:
            x, sr = _read_wav(fp, name, max_seconds, where)
        else:
            try:
                x, sr = soundfile.read(fp, dtype="float32", always_2d=True)
            except Exception as err:
                raise BadSampleError(*where, f"unreadable audio: {name} ({err})") from err
    elif isinstance(obj, (np.ndarray, list)) or hasattr(obj, "numpy"):
        x = np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj, dtype=np.float32)
        if x.ndim == 2 and x.shape[0] < x.shape[1] and x.shape[0] <= 8:
            x = x.T  # (channels, samples) -> (samples, channels)
        if x.ndim not in (1, 2):
            raise BadSampleError(*where, f"bad audio: expected a 1-D or 2-D array, got shape {x.shape}")
        x = x[:, None] if x.ndim == 1 else x
    else:
        raise BadSampleError(
            *where, f"bad audio value: expected a path, bytes or array, got {type(obj).__name__}"
        )
    if x.size == 0:
        raise BadSampleError(*where, f"empty audio: {name} has zero samples")
    if not sr or sr <= 0:
        raise BadSampleError(*where, f"bad audio: {name} has sampling rate {sr}")
    if len(x) / sr > max_seconds:
        raise BadSampleError(
            *where, f"audio too long: {name} is {len(x) / sr:.1f}s > max_seconds={max_seconds}"
        )
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if not np.all(np.isfinite(mono)):
        raise BadSampleError(*where, f"bad audio: {name} contains NaN or infinite samples")
    return np.ascontiguousarray(_resample(mono.astype(np.float32), int(sr), target_sr), dtype=np.float32)
