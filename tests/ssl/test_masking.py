"""Tests for vlmkit.ssl.masking: MAE patch masks, wav2vec2 span masks and negative sampling."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkit.ssl.masking import keep_patches, random_patch_mask, sample_negatives, span_mask


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool tensor as (start, length)."""
    runs, start = [], None
    for t, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            runs.append((start, t - start))
            start = None
    return runs


def test_random_patch_mask_counts_and_restore():
    gen = torch.Generator().manual_seed(0)
    ids_keep, mask, ids_restore = random_patch_mask(4, 10, 0.75, generator=gen)
    # round(10 * 0.75) = round(7.5) = 8 masked (banker's rounding), 2 kept
    assert ids_keep.shape == (4, 2) and mask.shape == (4, 10) and ids_restore.shape == (4, 10)
    assert mask.sum(dim=1).tolist() == [8.0] * 4
    for b in range(4):
        assert mask[b, ids_keep[b]].sum() == 0  # kept patches are the unmasked ones
    assert len({tuple(r) for r in ids_keep.tolist()}) > 1  # per-sample shuffles differ
    # restore: visible tokens followed by placeholders go back to their original positions
    x = torch.arange(10.0).expand(4, 10).unsqueeze(-1)  # (4, 10, 1), value = position
    visible = keep_patches(x, ids_keep)
    filled = torch.cat([visible, torch.full((4, 8, 1), -1.0)], dim=1)
    restored = torch.gather(filled, 1, ids_restore.unsqueeze(-1)).squeeze(-1)
    expected = torch.where(mask.bool(), torch.tensor(-1.0), torch.arange(10.0))
    torch.testing.assert_close(restored, expected)


def test_random_patch_mask_deterministic_and_validates():
    a = random_patch_mask(2, 196, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_patch_mask(2, 196, 0.75, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[1].sum(dim=1).tolist() == [147.0, 147.0]
    with pytest.raises(ValueError, match="one patch stays visible"):
        random_patch_mask(1, 4, 0.9)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_patch_mask(1, 4, 1.0)


def test_span_mask_never_touches_padding_and_runs_are_long_enough():
    gen = torch.Generator().manual_seed(0)
    lengths = [200, 137, 64, 12, 9]
    attention = torch.zeros(5, 200, dtype=torch.long)
    for b, n in enumerate(lengths):
        attention[b, :n] = 1
    for _ in range(20):
        mask = span_mask((5, 200), 0.65, 10, attention_mask=attention, generator=gen)
        assert mask.dtype == torch.bool and mask.shape == (5, 200)
        assert not (mask & ~attention.bool()).any()
        for b, n in enumerate(lengths):
            if n >= 10:  # room for a span: min_masks=2 guarantees masking
                assert mask[b].any()
            else:
                assert not mask[b].any()  # row 4 (9 frames) cannot hold a 10-frame span
            for _, run in _runs(mask[b]):
                assert run >= 10


def test_span_mask_single_span_has_exact_length():
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        mask = span_mask((3, 50), 0.0, 7, min_masks=1, generator=gen)
        for b in range(3):
            runs = _runs(mask[b])
            assert len(runs) == 1 and runs[0][1] == 7


def test_span_mask_respects_non_contiguous_padding():
    attention = torch.tensor([[1] * 5 + [0] * 3 + [1] * 12])  # a hole in the middle
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):
        mask = span_mask((1, 20), 0.5, 4, attention_mask=attention, generator=gen)
        assert not mask[0, 5:8].any()


def test_span_mask_ratio_is_in_expected_band():
    # 0.65 * 1000 / 10 = 65 spans of 10 among 991 starts: expected coverage ~ 1 - exp(-0.65) = 0.478
    mask = span_mask((32, 1000), 0.65, 10, generator=torch.Generator().manual_seed(0))
    ratio = mask.float().mean().item()
    assert abs(ratio - (1 - math.exp(-0.65))) < 0.03
    assert 0.40 < ratio < 0.56


def test_span_mask_deterministic_with_seed():
    a = span_mask((4, 100), 0.3, 5, generator=torch.Generator().manual_seed(7))
    b = span_mask((4, 100), 0.3, 5, generator=torch.Generator().manual_seed(7))
    c = span_mask((4, 100), 0.3, 5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="frame-level shape"):
        span_mask((4, 100), 0.3, 5, attention_mask=torch.ones(4, 99))


def test_sample_negatives_never_positive_same_row_masked_only():
    gen = torch.Generator().manual_seed(0)
    attention = torch.ones(3, 60, dtype=torch.long)
    attention[1, 40:] = 0
    attention[2, 25:] = 0
    batch, length, k = 3, 60, 20
    for _ in range(30):
        mask = span_mask((batch, length), 0.4, 5, attention_mask=attention, generator=gen)
        neg = sample_negatives(mask, k, generator=gen)
        assert neg.shape == (batch, length, k) and neg.dtype == torch.long
        flat_mask = mask.flatten()
        for b in range(batch):
            for t in mask[b].nonzero().flatten().tolist():
                draws = neg[b, t]
                own = b * length + t
                assert (draws != own).all()  # never the positive
                assert ((draws // length) == b).all()  # same utterance
                assert flat_mask[draws].all()  # masked (hence valid) frames only
                assert attention.flatten()[draws].bool().all()
            unmasked = (~mask[b]).nonzero().flatten()
            own_idx = (b * length + unmasked).unsqueeze(1).expand(-1, k)
            assert torch.equal(neg[b, unmasked], own_idx)


def test_sample_negatives_is_uniform_over_other_masked_frames():
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, [1, 4, 6, 9]] = True
    neg = sample_negatives(mask, 3000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(neg[0, 4], minlength=10).float() / 3000
    assert counts[4] == 0 and counts[[0, 2, 3, 5, 7, 8]].sum() == 0
    torch.testing.assert_close(counts[[1, 6, 9]], torch.full((3,), 1 / 3), atol=0.03, rtol=0)
    single = torch.zeros(1, 5, dtype=torch.bool)
    single[0, 2] = True  # one masked frame: nothing to draw, filled with itself
    assert sample_negatives(single, 2).tolist() == [[[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]]]
