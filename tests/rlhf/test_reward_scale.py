"""vlmkit.rlhf.reward_scale: the least-squares critic calibration and the fixed score normalisation, against
hand-computed values; a critic on a reward model's scale starts with explained variance below 0, after the fit
at rho^2 >= 0."""

import pytest
import torch
from torch import nn

from vlmkit.rlhf.ppo_math import explained_variance
from vlmkit.rlhf.reward_scale import (
    RewardScale,
    affine_fit_sums,
    monte_carlo_returns,
    rescale_linear_,
    solve_affine_fit,
)


def test_monte_carlo_returns_sum_the_rewards_to_the_end_of_each_response():
    rewards = torch.tensor([[0.5, -1.0, 2.0], [1.0, 3.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    expected = torch.tensor([[1.5, 1.0, 2.0], [4.0, 3.0, 0.0]])
    assert torch.allclose(monte_carlo_returns(rewards, mask, 1.0), expected)
    halved = torch.tensor([[0.5 - 0.5 + 0.5, -1.0 + 1.0, 2.0], [1.0 + 1.5, 3.0, 0.0]])
    assert torch.allclose(monte_carlo_returns(rewards, mask, 0.5), halved)


def test_affine_fit_recovers_scale_and_offset_and_ignores_masked_tokens():
    values = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, -99.0]])
    returns = 2.0 * values - 1.0
    returns[:, 2] = 1000.0  # masked out: must not move the fit
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    sums = affine_fit_sums(values, returns, mask)
    assert sums.tolist() == [4.0, 10.0, 16.0, 30.0, 50.0]  # n, sum v, sum G, sum v^2, sum vG by hand
    assert solve_affine_fit(sums) == pytest.approx((2.0, -1.0))
    # Sums of two halves (two processes) give the fit of the whole.
    both = affine_fit_sums(values[:1], returns[:1], mask[:1]) + affine_fit_sums(
        values[1:], returns[1:], mask[1:]
    )
    assert solve_affine_fit(both) == pytest.approx((2.0, -1.0))


def test_constant_values_keep_their_scale_and_move_to_the_mean_return():
    values, returns, mask = torch.full((2, 2), 0.25), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.ones(2, 2)
    assert solve_affine_fit(affine_fit_sums(values, returns, mask)) == pytest.approx((1.0, 2.5 - 0.25))
    with pytest.raises(ValueError, match="no response tokens"):
        solve_affine_fit(affine_fit_sums(values, returns, torch.zeros(2, 2)))


def test_a_critic_on_the_reward_models_scale_explains_variance_after_the_fit():
    """Values that track the returns (correlation ~0.5) but on a 6x scale and shifted: explained variance is
    far below 0; after the fit it is the squared correlation, as least squares with an intercept guarantees."""
    g = torch.Generator().manual_seed(0)
    returns = torch.randn(256, 2, generator=g)
    values = 6.0 * (0.5 * returns + 0.87 * torch.randn(256, 2, generator=g)) - 4.0
    mask = torch.ones(256, 2)
    assert explained_variance(values, returns, mask) < -10
    scale, shift = solve_affine_fit(affine_fit_sums(values, returns, mask))
    fitted = explained_variance(scale * values + shift, returns, mask)
    rho = torch.corrcoef(torch.stack([values.flatten(), returns.flatten()]))[0, 1].item()
    assert fitted == pytest.approx(rho**2, abs=1e-6) and fitted > 0.15


def test_rescaling_a_linear_head_maps_its_outputs():
    torch.manual_seed(0)
    head, x = nn.Linear(4, 1), torch.randn(5, 4)
    before = head(x).detach()
    rescale_linear_(head, 0.5, -2.0)
    assert torch.allclose(head(x), 0.5 * before - 2.0, atol=1e-6)


def test_scores_are_standardised_with_the_first_batch_only_and_the_state_round_trips():
    scale = RewardScale(normalize_scores=True, calibrate_critic=True)
    first = torch.tensor([-3.0, -1.0, 1.0, 3.0])  # mean 0, unbiased std sqrt(20/3)
    std = (20.0 / 3.0) ** 0.5
    with pytest.raises(RuntimeError, match="before fit"):
        scale.normalize(first)
    assert scale.needs_statistics
    scale.fit(first)
    assert not scale.needs_statistics and torch.allclose(scale.normalize(first), first / std)
    later = torch.tensor([10.0, 20.0])
    assert torch.allclose(scale.normalize(later), later / std)  # still the first batch's statistics
    assert scale.critic_pending
    scale.critic_fit = (0.2, 0.1)
    restored = RewardScale(normalize_scores=True, calibrate_critic=True)
    restored.load_state_dict(scale.state_dict())
    assert not restored.critic_pending and torch.allclose(restored.normalize(later), later / std)
    constant = RewardScale(normalize_scores=True, calibrate_critic=False)
    constant.fit(torch.full((4,), 0.25))  # no spread: centred, not divided by zero
    assert torch.equal(constant.normalize(torch.tensor([0.25, 1.25])), torch.tensor([0.0, 1.0]))
    off = RewardScale(normalize_scores=False, calibrate_critic=False)
    assert not off.needs_statistics and torch.equal(off.normalize(later), later) and not off.critic_pending
