"""LM metrics: the unigram baseline against hand-computed values, and the model's held-out loss."""

from __future__ import annotations

import math

import torch

from vlmkit.eval.language import perplexity, unigram_loss


def test_unigram_loss_matches_add_one_counts():
    # predicted tokens: 0, 0, 1 (the first of a block is never predicted)
    train = torch.tensor([[9, 0, 0, 1]])
    held_out = torch.tensor([[9, 0, 2]])  # predicted: 0, 2
    vocab = 3
    p0, p2 = (2 + 1) / (3 + vocab), (0 + 1) / (3 + vocab)
    expected = -(math.log(p0) + math.log(p2)) / 2
    assert math.isclose(unigram_loss(train, held_out, vocab), expected, rel_tol=1e-9)


def test_perplexity_is_exp_and_capped():
    assert math.isclose(perplexity(math.log(7.0)), 7.0)
    assert math.isfinite(perplexity(1e9))
