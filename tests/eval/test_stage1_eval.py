"""Stage-1 measurements: text-only batches, the collapse statistic."""

from __future__ import annotations

import pytest
import torch

from vlmkit.eval.stage1 import mean_pairwise_cosine, without_media_tokens


def test_without_media_tokens_removes_placeholders_and_repads():
    media, pad = 50, 0
    batch = {
        "input_ids": torch.tensor([[5, media, media, 6, 7], [5, media, media, 8, pad]]),
        "labels": torch.tensor([[-100, -100, -100, 6, 7], [-100, -100, -100, 8, -100]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
        "media": torch.zeros(2, 3),
    }
    out = without_media_tokens(batch, media, pad)
    assert out["input_ids"].tolist() == [[5, 6, 7], [5, 8, pad]]
    assert out["labels"].tolist() == [[-100, 6, 7], [-100, 8, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["media"] is None


def test_mean_pairwise_cosine():
    same = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    assert mean_pairwise_cosine(same) == pytest.approx(1.0)
    orthogonal = torch.eye(3)
    assert mean_pairwise_cosine(orthogonal) == pytest.approx(0.0)
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # pairs: 0, 1/sqrt2, 1/sqrt2
    assert mean_pairwise_cosine(mixed) == pytest.approx(2 / (3 * 2**0.5))
    with pytest.raises(ValueError):
        mean_pairwise_cosine(torch.ones(1, 4))
