"""The bad-input matrix through the real path: readers -> SFTDataset -> collator (and the stage-2 recipe).

Each bad record sits at index 2 between good ones. With `on_bad_sample: error` the error names the data
file, the record and the field; with `skip` the record is dropped and counted once under its category.
Unit tests of the single pieces live in test_media.py, test_readers.py and test_tokenize.py.
"""

from __future__ import annotations

import io
import json
import math
import resource
import struct
import wave
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmkit.config.parser import ConfigError
from vlmkit.config.recipes import Stage2Config
from vlmkit.data.loading import sft_dataset
from vlmkit.data.records import BadSampleError, SkipCounter
from vlmkit.data.sft_dataset import SFTCollator
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import MediaSpec, VLMProcessor, ensure_special_tokens, load_media_processor

QUESTION = {"from": "human", "value": "<image>\nWhat colour is this?"}


def _png(path: Path, color=(200, 30, 30), size=(16, 16), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def _record(image: str | list | None = "images/good.png", turns=None) -> dict:
    rec = {"conversations": turns or [QUESTION, {"from": "gpt", "value": "red"}]}
    if image is not None:
        rec["image" if isinstance(image, str) else "images"] = image
    return rec


def _png_bomb(path: Path, side: int = 30_000) -> Path:
    """A real 1-bit PNG of side x side zero pixels: ~110 kB on disk, 2.7 GB once decoded to RGB."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row, comp, parts = b"\0" * (1 + (side + 7) // 8), zlib.compressobj(9), []
    for _ in range(side // 1000):
        parts.append(comp.compress(row * 1000))
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = b"".join(parts) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _bad_file(kind: str):
    def make(root: Path) -> dict:
        target = root / "images" / ("bad.jpg" if "jpeg" in kind or kind == "not-an-image" else "bad.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "truncated-jpeg":
            buf = io.BytesIO()
            Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "JPEG")
            target.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        elif kind == "truncated-png":
            data = _png(root / "tmp.png", size=(64, 64)).read_bytes()
            target.write_bytes(data[: len(data) - 30])
        elif kind == "corrupt-png":
            data = bytearray(_png(root / "tmp.png", size=(64, 64)).read_bytes())
            start = data.index(b"IDAT") + 8
            data[start : start + 8] = b"\xff" * 8  # garbage in the compressed pixels
            target.write_bytes(bytes(data))
        elif kind == "not-an-image":
            target.write_text("this is a text file, not a JPEG\n")
        elif kind == "bomb":
            _png_bomb(target)
        return _record(f"images/{target.name}")

    return make


# case id -> (bad record factory, category counted under skip, field named by the error)
CASES = {
    "missing-image": (lambda root: _record("images/nope.png"), "media file not found", "images[0]"),
    "truncated-jpeg": (_bad_file("truncated-jpeg"), "corrupt image", "images"),
    "truncated-png": (_bad_file("truncated-png"), "corrupt image", "images"),
    "corrupt-png": (_bad_file("corrupt-png"), "corrupt image", "images"),
    "not-an-image": (_bad_file("not-an-image"), "not an image", "images"),
    "decompression-bomb": (_bad_file("bomb"), "image too large", "images"),
    "path-dotdot": (lambda root: _record("../outside.png"), "media path outside root", "images[0]"),
    "path-absolute": (
        lambda root: _record(str(root.parent / "outside.png")),
        "media path outside root",
        "images[0]",
    ),
    "missing-conversations": (lambda root: {"image": "images/good.png"}, "missing field", "conversations"),
    "unknown-role": (
        lambda root: _record(turns=[{"from": "robot", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]),
        "unknown role",
        "conversations[0]",
    ),
    "empty-assistant": (
        lambda root: _record(turns=[QUESTION, {"from": "gpt", "value": "  "}]),
        "empty assistant turn",
        "conversations[1]",
    ),
    "more-placeholders": (
        lambda root: _record(turns=[{"from": "human", "value": "<image><image> which?"}, {"from": "gpt", "value": "a"}]),
        "placeholder count mismatch",
        "images",
    ),
    "fewer-placeholders": (
        lambda root: _record(["images/good.png", "images/good.png"], turns=[{"from": "human", "value": "which?"}, {"from": "gpt", "value": "a"}]),
        "placeholder count mismatch",
        "images",
    ),
    "too-long-for-image": (
        lambda root: _record(
            turns=[{"from": "human", "value": "describe " * 60 + "<image>"}, {"from": "gpt", "value": "red"}]
        ),
        "too long",
        "max_length",
    ),
}  # fmt: skip


@pytest.fixture
def processor():
    """The tiny LLM's tokenizer and the tiny CLIP's image processor, as build_vlm pairs them (no model)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("vlmkit-tiny/llama"))
    ensure_special_tokens(tokenizer)
    media = load_media_processor(resolve_model_path("vlmkit-tiny/clip-vision"), "image")
    return VLMProcessor(tokenizer, media, MediaSpec("image", num_media_tokens=16))


def _dataset_with(root: Path, bad: dict) -> Path:
    _png(root / "images" / "good.png")
    _png(root.parent / "outside.png")
    records = [_record(), _record(), bad, _record()]
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def _cfg(path: Path, **kw) -> Stage2Config:
    return Stage2Config(data_path=str(path), max_length=kw.pop("max_length", 96), **kw)


def _materialise(ds, processor) -> dict:
    """What the training loop does with the dataset: every item through the collator."""
    return SFTCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])


@pytest.mark.parametrize("case", list(CASES))
def test_bad_record_error_names_file_record_and_field(tmp_path, processor, case):
    make, category, field = CASES[case]
    path = _dataset_with(tmp_path / "data", make(tmp_path / "data"))
    with pytest.raises(BadSampleError) as info:
        ds = sft_dataset(_cfg(path), str(path), processor, SkipCounter())
        _materialise(ds, processor)
    err = info.value
    assert (err.source, err.index, err.field_name) == (str(path), 2, field), str(err)
    assert err.reason.startswith(category), str(err)
    assert f"{path}, record 2, field '{field}'" in str(err)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_record_is_skipped_and_counted_once(tmp_path, processor, case):
    make, category, _ = CASES[case]
    path = _dataset_with(tmp_path / "data", make(tmp_path / "data"))
    skips = SkipCounter()
    ds = sft_dataset(_cfg(path, on_bad_sample="skip"), str(path), processor, skips)
    for _epoch in range(2):
        batch = _materialise(ds, processor)
    assert batch["input_ids"].shape[0] == 3 and batch["media"].shape[0] == 3
    assert skips.as_dict() == {category: 1}


def test_too_long_sample_is_a_counted_drop_with_truncation_drop(tmp_path, processor):
    path = _dataset_with(tmp_path / "data", CASES["too-long-for-image"][0](tmp_path / "data"))
    skips = SkipCounter()
    ds = sft_dataset(_cfg(path, truncation="drop"), str(path), processor, skips)  # on_bad_sample: error
    assert len(ds) == 3 and skips.as_dict() == {"too long": 1}


def test_outside_paths_load_when_allowed(tmp_path, processor):
    root = tmp_path / "data"
    path = _dataset_with(root, _record("../outside.png"))
    records = json.loads(path.read_text()) + [_record(str(root.parent / "outside.png"))]
    path.write_text(json.dumps(records))
    ds = sft_dataset(_cfg(path, allow_outside_media_root=True), str(path), processor, SkipCounter())
    assert _materialise(ds, processor)["media"].shape[0] == 5


def test_decompression_bomb_is_refused_with_bounded_memory(tmp_path, processor):
    path = _dataset_with(tmp_path / "data", _bad_file("bomb")(tmp_path / "data"))
    assert (tmp_path / "data" / "images" / "bad.png").stat().st_size < 1_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    ds = sft_dataset(_cfg(path, on_bad_sample="skip"), str(path), processor, SkipCounter())
    with pytest.raises(BadSampleError, match="image too large"):
        sft_dataset(_cfg(path), str(path), processor, SkipCounter())[2]
    _materialise(ds, processor)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB: the image was decoded"


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [
        ("RGBA", (0, 0, 255, 0), (255, 255, 255)),  # fully transparent: white, not the hidden blue
        ("RGBA", (0, 0, 255, 255), (0, 0, 255)),
        ("LA", (100, 255), (100, 100, 100)),
        ("L", 77, (77, 77, 77)),
        ("P", None, (10, 20, 30)),
        ("I;16", 65535, (255, 255, 255)),  # 16-bit full scale: scaled, not clipped to 255/65535
        ("I;16", 257 * 40, (40, 40, 40)),
    ],
)
def test_image_modes_reach_the_batch_as_the_right_rgb(tmp_path, processor, mode, pixel, expected):
    root = tmp_path / "data"
    image_path = root / "images" / "odd.png"
    image_path.parent.mkdir(parents=True)
    if mode == "P":
        img = Image.new("P", (16, 16), 3)
        img.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    else:
        img = Image.new(mode, (16, 16), pixel)
    img.save(image_path)
    assert Image.open(image_path).mode == mode
    path = _dataset_with(root, _record("images/odd.png"))
    ds = sft_dataset(_cfg(path), str(path), processor, SkipCounter())
    got = _materialise(ds, processor)["media"][2]
    want = processor.process_media([Image.new("RGB", (16, 16), expected)])[0]
    assert np.allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_malformed_json_names_line(tmp_path, processor):
    path = tmp_path / "data.json"
    path.write_text('[{"conversations": []},\n {"conversations": [}\n]')
    with pytest.raises(BadSampleError, match=r"data.json: invalid JSON: line 2"):
        sft_dataset(_cfg(path, on_bad_sample="skip"), str(path), processor, SkipCounter())


def test_malformed_jsonl_line_is_named_or_skipped(tmp_path, processor):
    _png(tmp_path / "images" / "good.png")
    lines = [json.dumps(_record()) for _ in range(3)]
    lines.insert(2, '{"conversations": [oops]')
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadSampleError, match=r"data.jsonl, record 2: invalid JSON: line 3"):
        sft_dataset(_cfg(path), str(path), processor, SkipCounter())
    skips = SkipCounter()
    ds = sft_dataset(_cfg(path, on_bad_sample="skip"), str(path), processor, skips)
    assert len(ds) == 3 and skips.as_dict() == {"invalid JSON": 1}


def test_chat_template_without_assistant_turns_is_an_error(tmp_path, processor):
    processor.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    path = _dataset_with(tmp_path / "data", _record())
    with pytest.raises(BadSampleError, match="record 0.*tokenization mismatch"):
        sft_dataset(_cfg(path), str(path), processor, SkipCounter())
    with pytest.raises(ValueError, match="no usable samples left"):  # skipping every record is no way out
        sft_dataset(_cfg(path, on_bad_sample="skip"), str(path), processor, SkipCounter())


def test_empty_dataset_after_filtering_is_an_error(tmp_path, processor):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([_record("images/nope.png"), {"image": "x.png"}]))
    with pytest.raises(BadSampleError, match="no usable records: 2 read, 2 skipped"):
        sft_dataset(_cfg(path, on_bad_sample="skip"), str(path), processor, SkipCounter())


def _wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(1), wf.setsampwidth(2), wf.setframerate(rate)
        wf.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_audio_wrong_rate_is_resampled_and_empty_audio_is_named(tmp_path):
    from transformers import AutoTokenizer, Wav2Vec2FeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("vlmkit-tiny/llama"))
    ensure_special_tokens(tokenizer)
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
    processor = VLMProcessor(tokenizer, extractor, MediaSpec("audio", num_media_tokens=4))
    root = tmp_path / "data"
    t8 = np.arange(4000) / 8000
    _wav(root / "clips" / "8k.wav", 0.5 * np.sin(2 * math.pi * 440 * t8), 8000)
    _wav(root / "clips" / "empty.wav", np.zeros(0), 16000)
    turns = [{"from": "human", "value": "<audio>\nWhich digit?"}, {"from": "gpt", "value": "4"}]
    path = root / "data.json"
    path.write_text(json.dumps([{"audio": "clips/8k.wav", "conversations": turns}] * 2 + [{"audio": "clips/empty.wav", "conversations": turns}]))  # fmt: skip

    with pytest.raises(BadSampleError, match=r"data.json, record 2, field 'audios': empty audio"):
        _materialise(sft_dataset(_cfg(path), str(path), processor, SkipCounter()), processor)
    skips = SkipCounter()
    ds = sft_dataset(_cfg(path, on_bad_sample="skip"), str(path), processor, skips)
    batch = _materialise(ds, processor)
    assert skips.as_dict() == {"empty audio": 1} and batch["media"].shape == (2, 16000)
    t16 = np.arange(8000) / 16000
    want = processor.process_media([0.5 * np.sin(2 * math.pi * 440 * t16).astype(np.float32)])[0]
    got = batch["media"][0]
    assert np.corrcoef(got[200:7800], want[200:7800])[0, 1] > 0.999  # 0.5 s at 16 kHz, same tone
    assert float(got[8100:].abs().max()) < 0.05 * float(got[:8000].abs().max())  # then padding


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "learning_rat: 0.1\n",
            r"unknown key 'learning_rat'. Did you mean: learning_rate.*Valid keys: .*max_steps",
        ),
        ("max_steps: ten\n", r"field 'max_steps': expects an integer"),
        ("use_lora: maybe\n", r"field 'use_lora': expects true/false"),
    ],
)
def test_recipe_config_with_unknown_key_or_wrong_type_is_refused(tmp_path, recipe, yaml_text, message):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message) as info:
        recipe("llava_stage2").main(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert str(config) in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_recipe_run_with_skips_reports_how_many_and_why(tmp_path, recipe):
    root = tmp_path / "data"
    for i in range(9):
        _png(root / "images" / f"{i}.png", color=(20 * i, 100, 200))
    records = [_record(f"images/{i}.png") for i in range(9)]
    records.insert(3, _bad_file("corrupt-png")(root))  # found bad when the loop loads it, every epoch
    records.insert(5, _record("images/nope.png"))
    records.insert(7, CASES["unknown-role"][0](root))
    path = root / "data.json"
    path.write_text(json.dumps(records))
    out = tmp_path / "out"
    argv = [
        "--vision_tower", "vlmkit-tiny/clip-vision", "--language_model", "vlmkit-tiny/llama",
        "--data_path", str(path), "--eval_data_path", "none", "--output_dir", str(out),
        "--report_to", "none", "--on_bad_sample", "skip", "--per_device_train_batch_size", "2",
        "--max_steps", "10", "--max_length", "96",  # 10 usable samples, 5 batches: two epochs
    ]  # fmt: skip
    metrics = recipe("llava_stage2").main(argv)
    expected = {"corrupt image": 1, "media file not found": 1, "unknown role": 1}
    assert metrics["skipped_samples"] == 3
    assert json.loads((out / "metrics.json").read_text())["skipped_samples"] == 3
    assert json.loads((out / "skipped.json").read_text()) == expected
