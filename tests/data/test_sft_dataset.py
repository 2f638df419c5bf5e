"""SFTDataset and SFTCollator: padding, label masking, media order, bad-sample skipping."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmkit.data.records import BadSampleError, Sample, SkipCounter, Turn
from vlmkit.data.sft_dataset import SFTCollator, SFTDataset, pad_sequences
from vlmkit.data.tokenize import IGNORE_INDEX
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import MediaSpec, VLMProcessor, load_media_processor
from vlmkit.models.tiny import build_tokenizer

N_MEDIA = 4
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def processor():
    media = load_media_processor(resolve_model_path("vlmkit-tiny/clip-vision"), "image")
    return VLMProcessor(build_tokenizer(), media, MediaSpec(modality="image", num_media_tokens=N_MEDIA))


@pytest.fixture
def images(tmp_path):
    paths = {}
    for name, rgb in COLORS.items():
        paths[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (20, 12), rgb).save(paths[name])
    return paths


def _sample(question, answer, images, index):
    return Sample(
        [Turn("user", question), Turn("assistant", answer)], images=images, index=index, source="d.json"
    )


def _color(pixels: torch.Tensor) -> str:
    """Which of red/green/blue a (C, H, W) normalised image is: the channel with the highest mean."""
    return ["red", "green", "blue"][int(pixels.mean(dim=(1, 2)).argmax())]


def test_pad_sequences_right_and_left():
    seqs = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert pad_sequences(seqs, 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_sequences(seqs, 9, left=True).tolist() == [[1, 2, 3], [9, 9, 4]]


def test_collator_pads_masks_and_stacks_media_in_placeholder_order(processor, images):
    samples = [
        _sample("<image>\nfirst\n<image>\nsecond", "a long answer here", [images["red"], images["green"]], 0),
        _sample("<image>\nwhat?", "b", [images["blue"]], 1),
        _sample("no image at all", "text only", [], 2),
    ]
    ds = SFTDataset(samples, processor, max_length=256)
    items = [ds[i] for i in range(3)]
    assert items[2]["media"] is None
    pad = processor.tokenizer.pad_token_id
    batch = SFTCollator(pad)(items)
    lengths = [len(it["input_ids"]) for it in items]
    width = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (3, width)
    for row, n in enumerate(lengths):
        assert batch["input_ids"][row, :n].tolist() == items[row]["input_ids"].tolist()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert (batch["input_ids"][row, n:] == pad).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
        assert batch["labels"][row, :n].tolist() == items[row]["labels"].tolist()
    media_id = processor.media_token_id
    assert int((batch["input_ids"] == media_id).sum()) == 3 * N_MEDIA
    assert batch["media"].shape == (3, 3, 32, 32)
    assert [_color(m) for m in batch["media"]] == ["red", "green", "blue"]


def test_batch_without_media_has_none(processor):
    ds = SFTDataset([_sample("hello", "hi", [], 0), _sample("hey", "yo", [], 1)], processor, max_length=64)
    batch = SFTCollator(processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["media"] is None and batch["input_ids"].shape[0] == 2


def test_text_problems_raise_or_are_skipped_and_counted(processor, images):
    samples = [
        _sample("<image>\nok", "1", [images["red"]], 0),
        _sample("<image>\n<image>\ntwo placeholders", "2", [images["red"]], 1),  # count mismatch
        _sample("<image>\nok", "3", [images["green"]], 2),
    ]
    with pytest.raises(BadSampleError, match="record 1"):
        SFTDataset(samples, processor, max_length=64)
    skips = SkipCounter()
    ds = SFTDataset(samples, processor, max_length=64, on_bad_sample="skip", skips=skips)
    assert len(ds) == 2 and [it.index for it in ds.items] == [0, 2]
    assert skips.total == 1 and "placeholders" in next(iter(skips.as_dict()))


def test_missing_image_skipped_at_load_time_and_dropped_by_the_collator(processor, images, tmp_path):
    missing = str(tmp_path / "gone.png")
    samples = [
        _sample("<image>\nq", "1", [images["red"]], 0),
        _sample("<image>\nq", "2", [missing], 1),
        _sample("<image>\nq", "3", [images["blue"]], 2),
    ]
    strict = SFTDataset(samples, processor, max_length=64)
    with pytest.raises(BadSampleError, match="record 1.*image not found"):
        strict[1]
    skips = SkipCounter()
    ds = SFTDataset(samples, processor, max_length=64, on_bad_sample="skip", skips=skips)
    assert len(ds) == 3  # media are decoded lazily
    collate = SFTCollator(processor.tokenizer.pad_token_id)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["input_ids"].shape[0] == 2
    assert [_color(m) for m in batch["media"]] == ["red", "blue"]
    assert skips.total == 1
    next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)))  # a second epoch
    assert skips.total == 1  # the bad record is counted once
    assert collate([None, None]) == {"empty": True}


def test_truncation_drop_is_counted_even_in_error_mode(processor, images):
    long_question = "Which number is shown in the image? " * 10
    samples = [
        _sample(long_question + "<image>", "1", [images["red"]], 0),  # the image falls past max_length
        _sample("<image>\nshort", "2", [images["green"]], 1),
    ]
    skips = SkipCounter()
    ds = SFTDataset(samples, processor, max_length=40, truncation="drop", skips=skips)
    assert len(ds) == 1 and ds.items[0].index == 1
    assert skips.total == 1
    with pytest.raises(BadSampleError, match="record 0.*truncation: drop"):
        SFTDataset(samples, processor, max_length=40, truncation="error")


def test_nothing_usable_is_an_error(processor):
    with pytest.raises(ValueError, match="no usable samples"):
        SFTDataset([_sample("<image>\nq", "1", [], 0)], processor, max_length=64, on_bad_sample="skip")
    with pytest.raises(ValueError, match="on_bad_sample"):
        SFTDataset([_sample("q", "1", [], 0)], processor, max_length=64, on_bad_sample="ignore")
