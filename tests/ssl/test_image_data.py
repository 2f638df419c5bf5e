"""Tests for vlmkit.ssl.image_data: reading image records, lazy decoding, collators."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlmkit.data.records import BadSampleError, SkipCounter
from vlmkit.ssl.clip_model import build_caption_tokenizer, clip_image_processor
from vlmkit.ssl.image_data import ClipCollator, ImageCollator, ImageRecordDataset, read_image_records


def _write(tmp_path, rows, name="data.json"):
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return str(path)


def test_reads_records_relative_to_the_data_file(tmp_path):
    rows = [{"image": f"img/{i}.png", "caption": f"digit {i}", "label": i} for i in range(3)]
    records = read_image_records(_write(tmp_path, rows), need_caption=True, need_label=True)
    assert [r.label for r in records] == [0, 1, 2]
    assert records[1].image == str(tmp_path / "img" / "1.png")
    assert records[2].index == 2 and records[2].source.endswith("data.json")


def test_jsonl_and_missing_label_are_fine_without_need_label(tmp_path):
    _write(tmp_path, [])
    path = tmp_path / "data.jsonl"
    path.write_text('{"image": "img/0.png"}\n{"image": "img/1.png", "label": 4}\n')
    records = read_image_records(str(path))
    assert [r.label for r in records] == [None, 4]
    dataset = ImageRecordDataset(records, clip_image_processor(32))
    assert dataset.labels().tolist() == [-1, 4]


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ({"image": "img/0.png"}, "caption", "missing caption"),
        ({"image": "img/0.png", "caption": "x", "label": "seven"}, "label", "bad label"),
        ({"caption": "x"}, "image", "missing field"),
        ({"image": "img/9.png", "caption": "x"}, "image", "media file not found"),
        ({"image": "../outside.png", "caption": "x"}, "image", "media path outside root"),
    ],
)
def test_bad_records_name_file_index_and_field(tmp_path, row, field, reason):
    good = {"image": "img/1.png", "caption": "one"}
    path = _write(tmp_path, [good, row])
    with pytest.raises(BadSampleError) as info:
        read_image_records(path, need_caption=True)
    err = info.value
    assert (err.index, err.field_name) == (1, field)
    assert err.reason.startswith(reason) and "data.json" in str(err)
    skips = SkipCounter()
    kept = read_image_records(path, need_caption=True, on_bad_sample="skip", skips=skips)
    assert len(kept) == 1 and skips.total == 1


def test_corrupt_image_is_skipped_at_decode_time_and_dropped_by_the_collator(tmp_path):
    rows = [{"image": f"img/{i}.png", "caption": f"digit {i}", "label": i} for i in range(3)]
    path = _write(tmp_path, rows)
    (tmp_path / "img" / "1.png").write_bytes(b"not a png")
    records = read_image_records(path, need_caption=True)
    strict = ImageRecordDataset(records, clip_image_processor(32))
    with pytest.raises(BadSampleError, match="corrupt|cannot identify|image"):
        strict[1]
    skips = SkipCounter()
    lenient = ImageRecordDataset(records, clip_image_processor(32), on_bad_sample="skip", skips=skips)
    items = [lenient[i] for i in range(3)]
    assert items[1] is None and skips.total == 1
    tokenizer = build_caption_tokenizer(["digit 0", "digit 2"], vocab_size=270)
    batch = ClipCollator(tokenizer, max_length=8)(items)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["labels"].tolist() == [0, 2]
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"].shape == batch["input_ids"].shape
    assert ImageCollator()([None]) == {"empty": True}


def test_image_collator_stacks_pixels_and_labels(tmp_path):
    rows = [{"image": f"img/{i}.png", "label": i} for i in range(3)]
    dataset = ImageRecordDataset(read_image_records(_write(tmp_path, rows)), clip_image_processor(32))
    batch = ImageCollator()([dataset[0], dataset[2]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 2]
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])
