"""Samples through each family's processor: assistant-only labels, mixed batches, truncation, pixel budgets.

Decision checked here: the supervised tokens of an assistant turn are the answer as the template writes it
(with the space some templates put after "ASSISTANT:" / "Assistant:") followed by the family's end-of-turn
token; nothing the template writes after that token, and nothing of the prompt, is supervised.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.records import BadSampleError, Sample, Turn
from vlmkit.data.tokenize import IGNORE_INDEX, SampleDropped
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.templates import END_OF_TURN
from vlmkit.training.losses import token_loss_sum
from vlmkit.training.native_sft import NativeSFTDataset

FAMILIES = [
    "llava",
    "llava_next",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "idefics3",
    "paligemma",
    "gemma3",
]
SPACE_BEFORE_ANSWER = {"llava", "llava_next", "idefics3"}
ANSWERS = ["The digit is 7.", "no, it is odd"]


def _image(size: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _two_turns() -> Sample:
    return Sample(
        [Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", ANSWERS[0]),
         Turn("user", "Is it even?"), Turn("assistant", ANSWERS[1])],
        images=[_image()],
    )  # fmt: skip


def _spans(labels: torch.Tensor) -> list[list[int]]:
    spans, current = [], []
    for t in labels.tolist():
        if t == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(t)
    return spans + ([current] if current else [])


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_labels_cover_exactly_the_assistant_answers(family, native_vlm):
    model, processor, _ = native_vlm(family)
    tok = processor.tokenizer
    encoded = NativeEncoder(processor, family).encode(_two_turns())
    labels = encoded["labels"][0]
    space = " " if family in SPACE_BEFORE_ANSWER else ""
    expected = [tok(space + a + END_OF_TURN[family], add_special_tokens=False)["input_ids"] for a in ANSWERS]
    assert int((labels != IGNORE_INDEX).sum()) == sum(len(e) for e in expected)
    assert _spans(labels) == expected
    for span, answer in zip(_spans(labels), ANSWERS):
        assert tok.decode(span, skip_special_tokens=True).strip() == answer
        assert span[-1] == tok.convert_tokens_to_ids(END_OF_TURN[family])
    # Supervised positions hold the input tokens themselves (the loss shifts them).
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], encoded["input_ids"][0][supervised])


def _mixed(family: str) -> list[Sample]:
    samples = [
        _two_turns(),
        Sample(
            [Turn("user", "<image>\n<image>\nSame digit?"), Turn("assistant", "yes")],
            images=[_image(seed=1), _image(48, seed=2)],
        ),  # fmt: skip
    ]
    if family != "paligemma":  # PaliGemma needs an image in every sample
        samples.append(Sample([Turn("user", "Say a digit."), Turn("assistant", "seven")]))
    return samples


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_gives_each_sample_its_own_loss(family, native_vlm):
    """Padding and media merging are right when the batch loss is the sum of the one-sample losses."""
    model, processor, _ = native_vlm(family)
    encoder = NativeEncoder(processor, family)
    items = [encoder.encode(s) for s in _mixed(family)]
    collate = NativeCollator(processor.tokenizer.pad_token_id, family)
    model.eval()

    def loss(batch):
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return token_loss_sum(logits, batch["labels"])

    batch = collate(items)
    assert batch["input_ids"].shape[0] == len(items)
    for row, item in zip(batch["labels"], items):
        assert torch.equal(row[row != IGNORE_INDEX], item["labels"][0][item["labels"][0] != IGNORE_INDEX])
    separate = sum(loss(collate([it])) for it in items)
    assert torch.isfinite(separate)
    torch.testing.assert_close(loss(batch), separate, rtol=2e-4, atol=2e-3)


def test_qwen2_vl_pixel_budget_sets_the_grid(native_vlm):
    _, processor, _ = native_vlm("qwen2_vl")
    sample = Sample([Turn("user", "<image>\nWhat?"), Turn("assistant", "7")], images=[_image(64)])
    default = NativeEncoder(processor, "qwen2_vl").encode(sample)
    assert default["image_grid_thw"].tolist() == [[1, 4, 4]]  # 16-pixel patches
    from vlmkit.models.native.loading import load_processor

    small = NativeEncoder(load_processor(native_vlm("qwen2_vl")[2]), "qwen2_vl", max_pixels=32 * 32)
    encoded = small.encode(sample)
    assert encoded["image_grid_thw"].tolist() == [[1, 2, 2]]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((encoded["input_ids"] == image_id).sum()) == 1  # 4 patches merged 2x2
    assert int((default["input_ids"] == image_id).sum()) == 4
    with pytest.raises(ValueError, match="Qwen2-VL-style processors, not CLIPImageProcessorPil"):
        NativeEncoder(native_vlm("llava")[1], "llava", max_pixels=32 * 32)


def test_truncation_never_cuts_media(native_vlm):
    _, processor, _ = native_vlm("llava")
    question = "zero one two three four five six seven eight nine <image>\nWhat?"
    long_answer = Sample([Turn("user", question), Turn("assistant", "seven " * 40)], images=[_image()])
    full = NativeEncoder(processor, "llava").encode(long_answer)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    image_at = full["input_ids"][0].tolist().index(image_id)
    assert 10 < image_at < 40
    cut = NativeEncoder(processor, "llava", max_length=40).encode(long_answer)
    assert cut["input_ids"].shape[1] == 40
    assert torch.equal(cut["input_ids"][0], full["input_ids"][0][:40])
    assert torch.equal(cut["labels"][0], full["labels"][0][:40])
    assert int((cut["input_ids"] == image_id).sum()) == int((full["input_ids"] == image_id).sum())
    with pytest.raises(BadSampleError, match="record 0, field 'max_length'.*cut through media"):
        NativeEncoder(processor, "llava", max_length=10).encode(long_answer)
    dropping = NativeEncoder(processor, "llava", max_length=10, truncation="drop")
    with pytest.raises(SampleDropped):
        dropping.encode(long_answer)
    short = Sample([Turn("user", "Hi"), Turn("assistant", "7")])
    dataset = NativeSFTDataset([long_answer, short], dropping)
    assert len(dataset) == 1 and dataset.skips.as_dict() == {"too long": 1}


def test_bad_samples_name_the_record(native_vlm):
    _, processor, _ = native_vlm("qwen2_vl")
    encoder = NativeEncoder(processor, "qwen2_vl")
    missing = Sample([Turn("user", "<image>\nWhat?"), Turn("assistant", "7")], source="d.json", index=3)
    with pytest.raises(
        BadSampleError, match=r"d.json, record 3, field 'images'.*1 <image> placeholders but 0"
    ):
        encoder.encode(missing)
    no_answer = Sample([Turn("user", "Hi")], source="d.json", index=4)
    with pytest.raises(BadSampleError, match="record 4.*no assistant turn"):
        encoder.encode(no_answer)
