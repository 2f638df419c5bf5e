"""GRPO/RLOO maths against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vlmkit.rlhf.grpo_math import aggregate_loss, clipped_token_loss, group_advantages, loss_sum_and_count

# Two groups of G=3: rewards (1, 0, 0) and (1, 1, 1).
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])


def test_group_scaled_advantages_by_hand():
    # group 1: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    out = group_advantages(REWARDS, 3, scale_rewards="group", eps=0.0)
    std = math.sqrt(1 / 3)
    expected = [(2 / 3) / std, (-1 / 3) / std, (-1 / 3) / std, 0.0, 0.0, 0.0]
    assert out.advantages.tolist() == pytest.approx(expected, abs=1e-6)
    assert (out.zero_std_groups, out.num_groups) == (1, 2)


def test_std_zero_group_gets_exactly_zero_advantage_with_any_scaling():
    for scale in ("group", "batch", "none"):
        for baseline in ("mean", "rloo"):
            adv = group_advantages(
                torch.tensor([0.1, 0.1, 0.1, 0.0, 1.0, 0.0]), 3, scale, baseline
            ).advantages
            assert adv[:3].tolist() == [0.0, 0.0, 0.0], (scale, baseline)
            assert adv[3:].abs().sum() > 0


def test_unscaled_and_batch_scaled_advantages_by_hand():
    none = group_advantages(REWARDS, 3, scale_rewards="none").advantages
    assert none.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, 0, 0, 0], abs=1e-6)
    # batch std over the six rewards (four 1s, two 0s): mean 2/3, unbiased var = (4/9 * 2 + 1/9 * 4) / 5 = 4/15
    batch = group_advantages(REWARDS, 3, scale_rewards="batch", eps=0.0).advantages
    std = math.sqrt(4 / 15)
    assert batch.tolist() == pytest.approx([(2 / 3) / std, (-1 / 3) / std, (-1 / 3) / std, 0, 0, 0], abs=1e-6)


def test_rloo_baseline_is_leave_one_out_mean():
    # group (3, 1, 2): baselines (1.5, 2.5, 2) -> advantages (1.5, -1.5, 0)
    out = group_advantages(torch.tensor([3.0, 1.0, 2.0]), 3, scale_rewards="none", baseline="rloo")
    assert out.advantages.tolist() == pytest.approx([1.5, -1.5, 0.0])


def test_bad_group_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="num_generations=4"):
        group_advantages(REWARDS, 4)
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(REWARDS, 3, scale_rewards="sometimes")
    with pytest.raises(ValueError, match="loss_type"):
        loss_sum_and_count(torch.zeros(1, 1), torch.ones(1, 1), "mean")


def _logratio(ratios: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(ratios))


def test_clip_higher_bounds_by_hand():
    # ratios 1.5 with A=+1: clipped at 1 + eps_high; 0.5 with A=-1: clipped at 1 - eps (min of -0.5, -0.8).
    logprobs = _logratio([[1.5, 0.5]])
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    pos, stats = clipped_token_loss(logprobs, old, torch.tensor([1.0]), mask, epsilon=0.2, epsilon_high=0.28)
    assert pos[0].tolist() == pytest.approx([-1.28, -0.5])  # min(1.5, 1.28) and min(0.5, 0.8)
    assert stats["clip_high_fraction"] == pytest.approx(0.5)
    neg, stats = clipped_token_loss(logprobs, old, torch.tensor([-1.0]), mask, epsilon=0.2, epsilon_high=0.28)
    assert neg[0].tolist() == pytest.approx([1.5, 0.8])  # -min(-1.5, -1.28), -min(-0.5, -0.8)
    assert stats["clip_low_fraction"] == pytest.approx(0.5)
    symmetric, _ = clipped_token_loss(logprobs, old, torch.tensor([1.0]), mask, epsilon=0.2)
    assert symmetric[0].tolist() == pytest.approx([-1.2, -0.5])


def test_k3_penalty_added_with_beta():
    logprobs = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, stats = clipped_token_loss(
        logprobs, logprobs, torch.tensor([0.0]), mask, ref_logprobs=ref, beta=0.1
    )
    k3 = 0.5 - 1 - math.log(0.5)  # r = p_ref / p = 0.5: (r - 1) - log r
    assert stats["kl"] == pytest.approx(k3, abs=1e-6)
    assert loss.item() == pytest.approx(0.1 * k3, abs=1e-6)
    with pytest.raises(ValueError, match="ref_logprobs"):
        clipped_token_loss(logprobs, logprobs, torch.tensor([0.0]), mask, beta=0.1)


def test_loss_type_normalisations_by_hand():
    # sequence 1: tokens (1, 3) real; sequence 2: token (5) real, one pad (value 100 must be ignored)
    per_token = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    assert aggregate_loss(per_token, mask, "grpo").item() == pytest.approx((2.0 + 5.0) / 2)
    assert aggregate_loss(per_token, mask, "dapo").item() == pytest.approx(9.0 / 3)
    assert aggregate_loss(per_token, mask, "dr_grpo", max_completion_length=4).item() == pytest.approx(
        9.0 / 8
    )
    total, count = loss_sum_and_count(per_token, mask, "dapo")
    assert (total.item(), count) == (9.0, 3)
    with pytest.raises(ValueError, match="max_completion_length"):
        aggregate_loss(per_token, mask, "dr_grpo")


def test_gradient_is_zero_for_zero_advantage_groups():
    logprobs = torch.zeros(3, 2, requires_grad=True)
    adv = group_advantages(torch.ones(3), 3).advantages
    loss, _ = clipped_token_loss(logprobs, logprobs.detach(), adv, torch.ones(3, 2, dtype=torch.bool))
    aggregate_loss(loss, torch.ones(3, 2)).backward()
    assert logprobs.grad.abs().sum().item() == 0.0
