"""Assistant labels found on the template's text (tokenizer alone) are the ones the processor renders give.

Decision checked here: for the families whose processor only repeats the image token, the fast path (prefixes
rendered without processing images again) yields exactly the slow path's input ids and labels, on single
images, several images, any-res images and text-only samples; for any other family the processor renders
every prefix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.records import Sample, Turn
from vlmkit.models.native import encoding
from vlmkit.models.native.encoding import REPEATS_IMAGE_TOKEN, NativeEncoder, expanded_positions


def _image(height: int = 32, width: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


SAMPLES = [
    Sample([Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", "The digit is 7."),
            Turn("user", "Is it even?"), Turn("assistant", "no, it is odd"), Turn("user", "Sure?"),
            Turn("assistant", "yes")], images=[_image()]),
    Sample([Turn("system", "Answer briefly."), Turn("user", "Say a digit."), Turn("assistant", "seven")]),
    Sample([Turn("user", "<image>\nFirst. <image>\nSecond: same digit?"), Turn("assistant", "yes")],
           images=[_image(seed=1), _image(48, 64, seed=2)]),
]  # fmt: skip


def test_expanded_positions_maps_repeated_image_tokens_only():
    assert expanded_positions([5, 9, 6, 7], [5, 9, 9, 9, 6, 7], 9) == [0, 1, 4, 5]
    assert expanded_positions([5, 9, 6], [5, 9, 6], 9) == [0, 1, 2]
    assert expanded_positions([5, 9, 6], [5, 8, 9, 6], 9) is None  # another token inserted
    assert expanded_positions([5, 9, 6], [5, 9, 9, 6, 1], 9) is None  # a token appended
    assert expanded_positions([5, 9, 9, 6], [5, 9, 9, 9, 6], 9) is None  # adjacent images: ambiguous


@pytest.mark.slow
@pytest.mark.parametrize("family", REPEATS_IMAGE_TOKEN)
def test_fast_labels_equal_the_processor_rendered_ones(family, native_vlm, monkeypatch):
    _, processor, _ = native_vlm(family)
    encoder = NativeEncoder(processor, family)
    runs = []
    real_run = encoder._run
    monkeypatch.setattr(encoder, "_run", lambda *a, **k: runs.append(1) or real_run(*a, **k))
    fast = [encoder.encode(s) for s in SAMPLES]
    assert len(runs) == len(SAMPLES)  # one processor call per sample: the fast path was taken
    monkeypatch.setattr(encoding, "expanded_positions", lambda *a: None)
    slow = [encoder.encode(s) for s in SAMPLES]
    assert len(runs) > 2 * len(SAMPLES)
    for a, b in zip(fast, slow):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
        assert (a["labels"] != -100).sum() > 0
