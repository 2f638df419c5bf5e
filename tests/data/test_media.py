"""Safe media loading: images to RGB, size guards, corrupt files, path containment, audio."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import wave
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from vlmkit.data.media import load_audio, load_image, resolve_media_item, resolve_media_path
from vlmkit.data.records import BadSampleError

LOC = {"source": "data.json", "index": 3}


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _write_wav(path, samples: np.ndarray, sr: int, width: int = 2) -> None:
    """Write int PCM; `samples` is float in [-1, 1], shape (n,) or (n, channels)."""
    x = samples[:, None] if samples.ndim == 1 else samples
    if width == 1:
        raw = np.clip(np.rint(x * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.rint(x * (2**23 - 1)).astype("<i4").reshape(-1)
        raw = b"".join(struct.pack("<i", int(v))[:3] for v in ints)
    else:
        raw = np.rint(x * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(x.shape[1])
        wf.setsampwidth(width)
        wf.setframerate(sr)
        wf.writeframes(raw)


def test_missing_image_names_file_record_and_field(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(BadSampleError) as exc:
        load_image(str(path), field_name="images[0]", **LOC)
    msg = str(exc.value)
    assert str(path) in msg and "record 3" in msg and "images[0]" in msg and "data.json" in msg
    assert exc.value.reason.startswith("image not found")


def test_truncated_jpeg_is_an_error(tmp_path):
    data = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(data, "JPEG", quality=95)  # noise: the scan data dominates the file
    path = tmp_path / "cut.jpg"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) * 2 // 3])
    with Image.open(path) as img:  # the header alone opens fine: only a full decode notices
        assert img.size == (64, 64)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(BadSampleError, match="corrupt image") as exc:
        load_image(str(path), **LOC)
    assert str(path) in str(exc.value)


def test_truncated_png_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    raw = _png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    path = tmp_path / "cut.png"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadSampleError, match="corrupt image"):
        load_image(str(path), **LOC)


def test_text_file_with_png_extension_is_an_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture")
    with pytest.raises(BadSampleError, match="not an image") as exc:
        load_image(str(path), **LOC)
    assert str(path) in str(exc.value)


def test_rgba_transparent_becomes_white(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0, 255)  # opaque red
    arr[0, 1] = (0, 0, 255, 0)  # fully transparent blue
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black -> grey
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = np.asarray(load_image(str(path), **LOC))
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(120 <= v <= 135 for v in out[1, 0])


def test_palette_with_transparency_becomes_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 255, 0, 10, 20, 30] + [0] * 762)
    img.putdata([0, 1])
    path = tmp_path / "pal.png"
    img.save(path, transparency=1)
    out = np.asarray(load_image(str(path), **LOC))
    assert tuple(out[0, 0]) == (0, 255, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)


def test_grayscale_modes_become_rgb(tmp_path):
    Image.fromarray(np.array([[7, 200]], dtype=np.uint8), "L").save(tmp_path / "l.png")
    out = np.asarray(load_image(str(tmp_path / "l.png"), **LOC))
    assert out.tolist() == [[[7, 7, 7], [200, 200, 200]]]
    Image.fromarray(np.array([[True, False]])).convert("1").save(tmp_path / "bw.png")
    out = np.asarray(load_image(str(tmp_path / "bw.png"), **LOC))
    assert out.tolist() == [[[255, 255, 255], [0, 0, 0]]]
    la = Image.fromarray(np.array([[[50, 255], [50, 0]]], dtype=np.uint8), "LA")
    out = np.asarray(load_image(la, **LOC))
    assert out.tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_16bit_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 65535, 32896, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(str(path), **LOC))[0, :, 0]
    assert out.tolist() == [0, 255, 128, 4]  # PIL's own convert would clip 1000 to 255
    as_int32 = Image.fromarray(arr.astype(np.int32))  # mode "I", still 16-bit data
    assert np.asarray(load_image(as_int32, **LOC))[0, :, 0].tolist() == [0, 255, 128, 4]


def _huge_png_header(path, width: int, height: int) -> None:
    """A valid PNG whose IHDR claims width x height, built from a 1x1 image (a few bytes on disk)."""
    raw = bytearray(_png_bytes(Image.new("L", (1, 1))))
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(raw))


def test_huge_image_refused_from_header_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    _huge_png_header(path, 30000, 30000)
    assert os.path.getsize(path) < 200
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    tracemalloc.start()
    try:
        with pytest.raises(BadSampleError, match="image too large") as exc:
            load_image(str(path), **LOC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert decoded == []
    assert peak < 50 * 2**20
    assert str(path) in str(exc.value)


def test_max_pixels_checked_before_decode(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    _huge_png_header(path, 5000, 4000)  # 20M pixels: below PIL's own bomb limit
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a refused image"))
    with pytest.raises(BadSampleError, match="5000x4000 = 20000000 pixels exceeds max_pixels=1000000"):
        load_image(str(path), max_pixels=1_000_000, **LOC)


def test_path_escape_with_dotdot_refused(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    with pytest.raises(BadSampleError, match="--allow_outside_media_root true") as exc:
        resolve_media_path("../secret.png", str(root), allow_outside_root=False, field_name="image", **LOC)
    assert "record 3" in str(exc.value) and "'image'" in str(exc.value)
    ok = resolve_media_path("../secret.png", str(root), allow_outside_root=True, field_name="image", **LOC)
    assert ok == str(tmp_path / "secret.png")


def test_absolute_path_outside_root_refused_inside_allowed(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    with pytest.raises(BadSampleError, match="outside the media folder"):
        resolve_media_path("/etc/passwd", str(root), allow_outside_root=False, field_name="image", **LOC)
    inside = str(root / "sub" / "a.png")
    assert (
        resolve_media_path(inside, str(root), allow_outside_root=False, field_name="image", **LOC) == inside
    )
    rel = resolve_media_path("sub/./a.png", str(root), allow_outside_root=False, field_name="image", **LOC)
    assert rel == inside


def test_symlink_pointing_outside_root_refused(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(BadSampleError, match="outside root"):
        resolve_media_path("link.png", str(root), allow_outside_root=False, field_name="image", **LOC)


def test_remote_url_refused():
    with pytest.raises(BadSampleError, match="remote media not supported"):
        resolve_media_path("https://x.org/a.png", "/data", allow_outside_root=True, field_name="image", **LOC)


def test_resolve_media_item_checks_existence_and_decodes_data_urls(tmp_path):
    with pytest.raises(BadSampleError, match="media file not found"):
        resolve_media_item("a.png", str(tmp_path), field_name="images[0]", **LOC)
    png = _png_bytes(Image.new("RGB", (3, 2), (1, 2, 3)))
    url = "data:image/png;base64," + __import__("base64").b64encode(png).decode()
    raw = resolve_media_item(url, str(tmp_path), field_name="images[0]", **LOC)
    assert np.asarray(load_image(raw, **LOC)).tolist() == [[[1, 2, 3]] * 3] * 2


def _dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def test_audio_resampled_keeps_length_and_frequency(tmp_path):
    sr, secs = 44100, 0.5
    t = np.arange(int(sr * secs)) / sr
    _write_wav(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), sr)
    x = load_audio(str(tmp_path / "tone.wav"), target_sr=16000, **LOC)
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) == 8000
    assert abs(_dominant_hz(x, 16000) - 440) < 5
    assert 0.45 < np.abs(x[100:-100]).max() < 0.55


@pytest.mark.parametrize("width", [1, 3, 4])
def test_audio_pcm_widths(tmp_path, width):
    t = np.arange(1600) / 16000
    sig = 0.5 * np.sin(2 * np.pi * 300 * t)
    _write_wav(tmp_path / "w.wav", sig, 16000, width=width)
    x = load_audio(str(tmp_path / "w.wav"), **LOC)
    assert np.allclose(x, sig, atol=0.02)


def test_audio_zero_length_is_an_error(tmp_path):
    _write_wav(tmp_path / "empty.wav", np.zeros(0), 16000)
    with pytest.raises(BadSampleError, match="empty audio") as exc:
        load_audio(str(tmp_path / "empty.wav"), **LOC)
    assert "'audios'" in str(exc.value)
    with pytest.raises(BadSampleError, match="empty audio"):
        load_audio(np.zeros(0, dtype=np.float32), **LOC)


def test_audio_stereo_to_mono(tmp_path):
    left = np.full(800, 0.5)
    right = np.full(800, -0.1)
    _write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000)
    x = load_audio(str(tmp_path / "st.wav"), **LOC)
    assert x.shape == (800,)
    assert np.allclose(x, 0.2, atol=1e-3)


def test_audio_too_long_and_missing(tmp_path):
    _write_wav(tmp_path / "long.wav", np.zeros(16000 * 3), 16000)
    with pytest.raises(BadSampleError, match="audio too long"):
        load_audio(str(tmp_path / "long.wav"), max_seconds=2.0, **LOC)
    with pytest.raises(BadSampleError, match="audio not found"):
        load_audio(str(tmp_path / "missing.wav"), **LOC)
    with pytest.raises(BadSampleError, match="unreadable audio"):
        (tmp_path / "junk.wav").write_bytes(b"RIFF....junk")
        load_audio(str(tmp_path / "junk.wav"), **LOC)


def test_audio_from_array_and_hf_dict():
    x = load_audio({"array": np.ones(8000), "sampling_rate": 8000}, target_sr=16000, **LOC)
    assert len(x) == 16000
    stereo = np.stack([np.ones(100), np.zeros(100)])  # (channels, samples)
    assert np.allclose(load_audio(stereo, **LOC), 0.5)
