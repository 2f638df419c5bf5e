"""Tests for vlmkit.ssl.wav2vec2_objective against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkit.ssl.wav2vec2_objective import (
    codebook_perplexity,
    contrastive_logits,
    contrastive_loss,
    diversity_loss,
    gumbel_temperature,
)


def test_contrastive_loss_matches_hand_computation():
    quantized = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    context = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])
    negatives = torch.tensor([[[1, 2], [0, 2], [0, 1]]])  # flat indices, never the frame itself
    mask = torch.tensor([[True, True, False]])
    logits = contrastive_logits(context, quantized, negatives, temperature=0.5)
    r2 = math.sqrt(2)
    # frame 0: c=[1,0] vs q0=[1,0] (cos 1), q1=[0,1] (cos 0), q2=[1,1] (cos 1/sqrt2); / 0.5
    frame0 = [2.0, 0.0, r2]
    # frame 1: c=[1,1] vs q1=[0,1] (cos 1/sqrt2), q0=[1,0] (cos 1/sqrt2), q2=[1,1] (cos 1); / 0.5
    frame1 = [r2, r2, 2.0]
    torch.testing.assert_close(logits[0, 0], torch.tensor(frame0))
    torch.testing.assert_close(logits[0, 1], torch.tensor(frame1))
    ce0 = -frame0[0] + math.log(sum(math.exp(v) for v in frame0))  # -2 + log(7.3891 + 1 + 4.1133) = 0.5259
    ce1 = -frame1[0] + math.log(
        sum(math.exp(v) for v in frame1)
    )  # -1.4142 + log(2 * 4.1133 + 7.3891) = 1.3341
    expected = (ce0 + ce1) / 2  # frame 2 is not masked: not counted
    assert expected == pytest.approx(0.9300, abs=1e-3)
    assert contrastive_loss(logits, mask).item() == pytest.approx(expected, rel=1e-5)


def test_identical_negatives_get_minus_inf():
    # frames 0 and 1 share a codeword; frame 2 differs
    quantized = torch.tensor([[[1.0, 2.0], [1.0, 2.0], [3.0, -1.0]]], requires_grad=True)
    context = torch.tensor([[[0.5, 1.0], [1.0, 0.0], [0.0, 1.0]]], requires_grad=True)
    negatives = torch.tensor([[[1, 2, 0], [2, 2, 2], [0, 1, 2]]])
    logits = contrastive_logits(context, quantized, negatives, temperature=1.0)
    assert torch.isinf(logits[0, 0, 1]) and logits[0, 0, 1] < 0  # same codeword as the positive
    assert torch.isinf(logits[0, 0, 3])  # the frame itself
    assert torch.isfinite(logits[0, 0, :1]).all() and torch.isfinite(logits[0, 0, 2])
    assert torch.isfinite(logits[0, 1]).all()
    assert torch.isinf(logits[0, 2, 3]) and torch.isfinite(logits[0, 2, :3]).all()
    loss = contrastive_loss(logits, torch.ones(1, 3, dtype=torch.bool))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(context.grad).all() and torch.isfinite(quantized.grad).all()
    # frame 0 competes only with frame 2's codeword: cos([.5,1],[1,2]) = 1,
    # cos([.5,1],[3,-1]) = 0.5 / (sqrt(1.25) * sqrt(10)) = 0.1414; CE = log(1 + exp(0.1414 - 1))
    expected0 = math.log1p(math.exp(0.5 / math.sqrt(12.5) - 1.0))
    only0 = contrastive_loss(logits, torch.tensor([[True, False, False]]))
    assert only0.item() == pytest.approx(expected0, rel=1e-5)


def test_contrastive_loss_rejects_no_masked_frames():
    logits = torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="no masked frame"):
        contrastive_loss(logits, torch.zeros(1, 4, dtype=torch.bool))


def test_diversity_loss_uniform_and_collapsed():
    groups, vocab = 2, 8
    uniform = torch.full((5, groups, vocab), 1.0 / vocab)
    ppl = codebook_perplexity(uniform)
    assert ppl.item() == pytest.approx(groups * vocab, rel=1e-4)
    assert diversity_loss(ppl, groups, vocab).item() == pytest.approx(0.0, abs=1e-4)
    collapsed = torch.zeros(5, groups, vocab)
    collapsed[:, 0, 3] = 1.0
    collapsed[:, 1, 6] = 1.0
    ppl = codebook_perplexity(collapsed)
    assert ppl.item() == pytest.approx(groups, rel=1e-4)
    # (G*V - G) / (G*V) = (16 - 2) / 16
    assert diversity_loss(ppl, groups, vocab).item() == pytest.approx(14 / 16, rel=1e-4)


def test_codebook_perplexity_hand_value_and_mask():
    # one group, V=2; frames use code 0 and code 1 with certainty, a third (unmasked) uses code 0
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])  # (3, 1, 2)
    mask = torch.tensor([True, True, False])
    # masked average = [0.5, 0.5]: perplexity 2
    assert codebook_perplexity(probs, mask).item() == pytest.approx(2.0, rel=1e-5)
    # unmasked average = [2/3, 1/3]: exp(-(2/3 ln 2/3 + 1/3 ln 1/3)) = 1.8899
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert codebook_perplexity(probs).item() == pytest.approx(math.exp(h), rel=1e-5)
    # (B, T, G, V) inputs with a (B, T) mask
    assert codebook_perplexity(probs.view(1, 3, 1, 2), mask.view(1, 3)).item() == pytest.approx(2.0)


def test_gumbel_temperature_schedule():
    assert gumbel_temperature(0) == 2.0
    # 2 * 0.999995**100000 = 2 * exp(100000 * ln 0.999995) = 2 * exp(-0.5000013) = 1.21306
    assert gumbel_temperature(100_000) == pytest.approx(1.21306, abs=1e-4)
    # floor reached at step ln(0.25) / ln(0.999995) = 277258.5
    assert gumbel_temperature(277_258) > 0.5
    assert gumbel_temperature(277_259) == 0.5
    assert gumbel_temperature(10**7) == 0.5
    assert gumbel_temperature(10, max_temp=1.0, min_temp=0.1, decay=0.5) == 0.1
    assert gumbel_temperature(1, max_temp=1.0, min_temp=0.1, decay=0.5) == 0.5
