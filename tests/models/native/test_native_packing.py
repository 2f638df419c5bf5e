"""Packed rows of native-VLM samples compute exactly what the samples compute alone.

Decision checked here: every supported family gives each packed sample the logits (and so the loss) it has
unpacked, with the same supervised tokens; families whose attention a causal block mask cannot reproduce
are refused by name, and a KV cache over packed rows is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.records import Sample, Turn
from vlmkit.data.tokenize import IGNORE_INDEX
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.packing import NativePackedCollator, check_packable, mrope_index, native_forward
from vlmkit.training.loop import count_supervised_tokens
from vlmkit.training.losses import token_loss_sum

PACKED_FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3"]


def _image(height: int = 32, width: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _samples() -> list[Sample]:
    """One image and two turns, text only, two images of different sizes, one wide image."""
    return [
        Sample([Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", "The digit is 7."),
                Turn("user", "Is it even?"), Turn("assistant", "no, it is odd")], images=[_image()]),
        Sample([Turn("user", "Say a digit."), Turn("assistant", "seven")]),
        Sample([Turn("user", "<image>\n<image>\nSame digit?"), Turn("assistant", "yes")],
               images=[_image(seed=1), _image(48, 48, seed=2)]),
        Sample([Turn("user", "Read the digit in the image. <image>"), Turn("assistant", "3")],
               images=[_image(32, 64, seed=3)]),
    ]  # fmt: skip


def _sample_logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return native_forward(model, batch).logits


@pytest.mark.slow
@pytest.mark.parametrize("family", PACKED_FAMILIES)
def test_packed_samples_get_their_unpacked_logits_and_losses(family, native_vlm):
    model, processor, _ = native_vlm(family)
    model.eval()
    items = [NativeEncoder(processor, family).encode(s) for s in _samples()]
    pad = processor.tokenizer.pad_token_id
    packed_collate = NativePackedCollator(pad, family, rope_index=mrope_index(model))
    # Two packed rows of unequal length: [0, 1, 2] and [3] (the second padded with a dummy sequence).
    batch = packed_collate([items[:3], items[3:]])
    lengths = [it["input_ids"].shape[1] for it in items]
    assert batch["input_ids"].shape == (2, sum(lengths[:3]))
    assert "attention_mask" not in batch
    packed_logits = _sample_logits(model, batch)

    unpacked = NativeCollator(pad, family)
    starts = [(0, 0), (0, lengths[0]), (0, lengths[0] + lengths[1]), (1, 0)]
    packed_sum = torch.zeros(())
    for item, (row, start), n in zip(items, starts, lengths):
        alone = unpacked([item])
        expected = _sample_logits(model, alone)[0]
        got = packed_logits[row, start : start + n]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(batch["input_ids"][row, start : start + n], item["input_ids"][0])
        assert torch.equal(batch["labels"][row, start : start + n], item["labels"][0])
        packed_sum += token_loss_sum(got[None], item["labels"])
    unpacked_sum = sum(token_loss_sum(_sample_logits(model, unpacked([it])), it["labels"]) for it in items)
    torch.testing.assert_close(
        token_loss_sum(packed_logits, batch["labels"]), unpacked_sum, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(packed_sum, unpacked_sum, rtol=1e-5, atol=1e-5)
    assert count_supervised_tokens(batch) == count_supervised_tokens(unpacked(items))


@pytest.mark.slow
def test_qwen2_vl_rows_carry_per_sample_mrope_positions(native_vlm):
    """Row 0 restarts at every sample; rows 1-3 are each sample's own 3-D positions, not a running count."""
    model, processor, _ = native_vlm("qwen2_vl")
    items = [NativeEncoder(processor, "qwen2_vl").encode(s) for s in _samples()]
    batch = NativePackedCollator(processor.tokenizer.pad_token_id, "qwen2_vl", rope_index=mrope_index(model))(
        [items]
    )
    positions = batch["position_ids"]
    assert positions.shape == (4, 1, batch["input_ids"].shape[1])
    start = 0
    for item in items:
        n = item["input_ids"].shape[1]
        alone, _ = model.model.get_rope_index(item["input_ids"], item["mm_token_type_ids"],
                                              image_grid_thw=item.get("image_grid_thw"))  # fmt: skip
        assert torch.equal(positions[0, 0, start : start + n], torch.arange(n))
        assert torch.equal(positions[1:, 0, start : start + n], alone[:, 0])
        start += n
    # The wide image's tokens share a temporal position and differ in height and width.
    assert not torch.equal(positions[1], positions[0]) and not torch.equal(positions[2], positions[3])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_eager_attention_gets_the_same_packed_logits(family, native_vlm):
    """Eager attention adds the mask to its scores: the block mask is additive there, not boolean."""
    from transformers import AutoModelForImageTextToText

    _, processor, path = native_vlm(family)
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    assert model.config.get_text_config()._attn_implementation == "eager"
    items = [NativeEncoder(processor, family).encode(s) for s in _samples()[:2]]
    pad = processor.tokenizer.pad_token_id
    packed = _sample_logits(model, NativePackedCollator(pad, family, rope_index=mrope_index(model))([items]))
    n = items[0]["input_ids"].shape[1]
    for got, item in ((packed[0, :n], items[0]), (packed[0, n:], items[1])):
        expected = _sample_logits(model, NativeCollator(pad, family)([item]))[0]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava_next", "idefics3", "qwen2_vl"])
def test_flattened_batch_is_one_row_with_the_same_logits(family, native_vlm):
    """flatten (flash-attn varlen) puts every row's samples in one row; media stay in sample order."""
    model, processor, _ = native_vlm(family)
    model.eval()
    items = [NativeEncoder(processor, family).encode(s) for s in _samples()]
    pad, rope_index = processor.tokenizer.pad_token_id, mrope_index(model)
    rows = NativePackedCollator(pad, family, rope_index=rope_index)([items[:2], items[2:]])
    flat = NativePackedCollator(pad, family, rope_index=rope_index, flatten=True)([items[:2], items[2:]])
    assert flat["input_ids"].shape == (1, sum(it["input_ids"].shape[1] for it in items))
    split = sum(it["input_ids"].shape[1] for it in items[:2])
    flat_logits, row_logits = _sample_logits(model, flat)[0], _sample_logits(model, rows)
    torch.testing.assert_close(flat_logits[:split], row_logits[0, :split], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        flat_logits[split:], row_logits[1, : len(flat_logits) - split], rtol=1e-5, atol=1e-5
    )


def test_a_one_dimensional_family_has_no_mrope_index(native_vlm):
    assert mrope_index(native_vlm("llava")[0]) is None


@pytest.mark.parametrize("family", ["paligemma", "gemma3", "some_new_vlm"])
def test_families_packing_cannot_reproduce_are_refused_by_name(family):
    with pytest.raises(
        ValueError, match=f"--packing is not available for native {family} models.*without --packing"
    ):
        check_packable(family)
    with pytest.raises(ValueError, match=family):
        NativePackedCollator(0, family)


@pytest.mark.slow
def test_use_cache_with_packed_rows_is_refused(native_vlm):
    model, processor, _ = native_vlm("llava")
    items = [NativeEncoder(processor, "llava").encode(s) for s in _samples()[:2]]
    batch = NativePackedCollator(processor.tokenizer.pad_token_id, "llava")([items])
    with pytest.raises(ValueError, match="use_cache=True with packed rows"):
        native_forward(model, batch, use_cache=True)
    assert (batch["labels"] != IGNORE_INDEX).any()
