"""PPO maths against hand-computed values."""

import math

import pytest
import torch

from vlmkit.rlhf.ppo_math import (
    apply_missing_eos_penalty,
    compute_gae,
    compute_rewards,
    entropy_from_logits,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# ---- masked statistics -------------------------------------------------------------------------


def test_masked_mean_and_var_ignore_masked_positions():
    x, mask = t([[2.0, 4.0, 6.0, 100.0]]), torch.tensor([[True, True, True, False]])
    assert masked_mean(x, mask).item() == 4.0
    # unbiased: ((2-4)^2 + 0 + (6-4)^2) / (3 - 1) = 4;  biased: 8 / 3
    assert masked_var(x, mask).item() == pytest.approx(4.0)
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(8.0 / 3.0)
    x2, mask2 = t([[1.0, 3.0], [5.0, -9.0]]), t([[1, 1], [1, 0]])
    torch.testing.assert_close(masked_mean(x2, mask2, dim=1), t([2.0, 5.0]))
    with pytest.raises(ValueError, match="all-false"):
        masked_mean(x, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(x, torch.tensor([[True, False, False, False]]))
    with pytest.raises(ValueError, match="share one shape"):
        masked_mean(x, mask[:, :2])


def test_masked_whiten_uses_only_masked_positions():
    mask = torch.tensor([[True, True, True, False]])
    # mean 4, unbiased std 2 -> (2, 4, 6) -> (-1, 0, 1); the masked-out slot comes back as 0
    out = masked_whiten(t([[2.0, 4.0, 6.0, 100.0]]), mask)
    torch.testing.assert_close(out, t([[-1.0, 0.0, 1.0, 0.0]]))
    other = masked_whiten(t([[2.0, 4.0, 6.0, -5e6]]), mask)
    torch.testing.assert_close(other, out)  # padding value has no influence
    # shift_mean=False keeps the mean: (-1, 0, 1) + 4
    torch.testing.assert_close(
        masked_whiten(t([[2.0, 4.0, 6.0, 100.0]]), mask, shift_mean=False), t([[3.0, 4.0, 5.0, 0.0]])
    )


# ---- rewards -----------------------------------------------------------------------------------


def test_compute_rewards_places_score_at_last_valid_token():
    ref = t([[-1.0, -2.0, -0.5, -3.0], [-0.7, -1.1, -2.0, -2.0]])
    # log(p / p_ref): row 0 (0.5, 0, 1.0, pad 7), row 1 (0.2, 0.4, pad 9, pad 9)
    logp = ref + t([[0.5, 0.0, 1.0, 7.0], [0.2, 0.4, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    rewards, kl = compute_rewards(t([1.0, -2.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, t([[0.5, 0.0, 1.0, 0.0], [0.2, 0.4, 0.0, 0.0]]))
    # row 0: -0.1*(0.5, 0, 1.0) with +1.0 on token 2 -> (-0.05, 0, 0.9, 0)
    # row 1: -0.1*(0.2, 0.4) with -2.0 on token 1     -> (-0.02, -2.04, 0, 0)
    torch.testing.assert_close(rewards, t([[-0.05, 0.0, 0.9, 0.0], [-0.02, -2.04, 0.0, 0.0]]))


def test_compute_rewards_estimator_and_errors():
    ref = t([[math.log(0.25)]])
    logp = t([[math.log(0.5)]])
    rewards, kl = compute_rewards(t([0.0]), logp, ref, torch.ones(1, 1), kl_coef=1.0, estimator="k3")
    # k3 with r = 0.25 / 0.5: (0.5 - 1) - ln 0.5
    assert kl.item() == pytest.approx(-0.5 + math.log(2.0)) and rewards.item() == pytest.approx(-kl.item())
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        compute_rewards(
            t([1.0, 2.0]), t([[0.0, 0.0]] * 2), t([[0.0, 0.0]] * 2), torch.tensor([[1, 0], [0, 0]]), 0.1
        )
    with pytest.raises(ValueError, match="scores must have shape"):
        compute_rewards(t([1.0]), t([[0.0, 0.0]] * 2), t([[0.0, 0.0]] * 2), torch.ones(2, 2), 0.1)


# ---- GAE ---------------------------------------------------------------------------------------


def test_gae_three_tokens_by_hand():
    # gamma = 0.9, lam = 0.8, so gamma * lam = 0.72; rewards (1, 0, 2), values (0.5, 1.0, 1.5)
    # t=2: delta = 2 + 0.9*0   - 1.5 = 0.5                 A2 = 0.5
    # t=1: delta = 0 + 0.9*1.5 - 1.0 = 0.35                A1 = 0.35 + 0.72*0.5  = 0.71
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4                 A0 = 1.4  + 0.72*0.71 = 1.9112
    # returns = A + V = (2.4112, 1.71, 2.0)
    rewards, values = t([[1.0, 0.0, 2.0]]), t([[0.5, 1.0, 1.5]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, t([[1.9112, 0.71, 0.5]]))
    torch.testing.assert_close(ret, t([[2.4112, 1.71, 2.0]]))
    # lam = 1: returns are the discounted Monte-Carlo returns (2.62, 1.8, 2), whatever the values
    _, ret_mc = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=1.0)
    torch.testing.assert_close(ret_mc, t([[2.62, 1.8, 2.0]]))


def test_gae_padding_has_no_influence():
    rewards = t([[1.0, 0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 2.0, 55.0, -3.0]])
    values = t([[0.5, 1.0, 1.5, 0.0, 0.0], [0.5, 1.0, 1.5, 99.0, 42.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected_adv = t([[1.9112, 0.71, 0.5, 0.0, 0.0]] * 2)
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, t([[2.4112, 1.71, 2.0, 0.0, 0.0]] * 2))
    # left padding: the same 3-token episode after one padded slot (value 7 there is ignored)
    left = compute_gae(t([[0.0, 1.0, 0.0, 2.0]]), t([[7.0, 0.5, 1.0, 1.5]]), t([[0, 1, 1, 1]]), 0.9, 0.8)[0]
    torch.testing.assert_close(left, t([[0.0, 1.9112, 0.71, 0.5]]))


# ---- losses ------------------------------------------------------------------------------------


def test_policy_loss_clipped_and_unclipped_by_hand():
    # ratios (1.1, 1.5, 0.5, 1.5), advantages (2, 2, -1, -1), clip 0.2, last token masked out
    ratio = t([[1.1, 1.5, 0.5, 1.5, 30.0]])
    adv = t([[2.0, 2.0, -1.0, -1.0, 1000.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    old = torch.zeros_like(ratio)
    logp = ratio.log().requires_grad_(True)
    loss, stats = policy_loss(logp, old, adv, mask, clip_range=0.2)
    # per token max(-A*r, -A*clip(r, 0.8, 1.2)):
    #   r=1.1, A=2:  max(-2.2, -2.2) = -2.2   (inside the clip)
    #   r=1.5, A=2:  max(-3.0, -2.4) = -2.4   (clipped: no credit beyond 1.2)
    #   r=0.5, A=-1: max( 0.5,  0.8) =  0.8   (clipped)
    #   r=1.5, A=-1: max( 1.5,  1.2) =  1.5   (outside the range but unclipped: pessimistic side)
    # mean = (-2.2 - 2.4 + 0.8 + 1.5) / 4 = -0.575
    assert loss.item() == pytest.approx(-0.575)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    # approx_kl = mean((r - 1) - ln r) = (0.0046898 + 0.0945349 + 0.1931472 + 0.0945349) / 4
    assert stats["approx_kl"].item() == pytest.approx(0.0967267, abs=1e-7)
    loss.backward()
    # d loss / d logp = -A * r / 4 where unclipped, 0 where the clip is active or masked
    torch.testing.assert_close(logp.grad, t([[-2.0 * 1.1 / 4, 0.0, 0.0, 1.5 / 4, 0.0]]))


def test_policy_loss_at_ratio_one_is_minus_mean_advantage():
    adv, mask = t([[1.0, -3.0, 0.5]]), torch.ones(1, 3)
    loss, stats = policy_loss(
        torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64), adv, mask, 0.2
    )
    assert loss.item() == pytest.approx(0.5) and stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0


def test_value_loss_clipped_by_hand():
    old, mask = t([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[1, 1, 1, 0]])
    values = t([[1.1, 1.5, 1.5, 50.0]]).requires_grad_(True)
    returns = t([[2.0, 2.0, 1.0, -50.0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range_value=0.2)
    # v=1.1, R=2: (0.9)^2 = 0.81 both ways (inside the clip)           -> 0.81
    # v=1.5, R=2: (0.5)^2 = 0.25, clipped v=1.2: (0.8)^2 = 0.64          -> 0.64 (clipped)
    # v=1.5, R=1: (0.5)^2 = 0.25, clipped v=1.2: (0.2)^2 = 0.04          -> 0.25
    # loss = 0.5 * (0.81 + 0.64 + 0.25) / 3 = 0.2833333
    assert loss.item() == pytest.approx(1.70 / 6)
    assert stats["value_clip_fraction"].item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dv 0.5*(v-R)^2 / 3 = (v - R) / 3 on unclipped tokens; 0 on the clipped and the masked one
    torch.testing.assert_close(values.grad, t([[-0.9 / 3, 0.0, 0.5 / 3, 0.0]]))


# ---- logits helpers ----------------------------------------------------------------------------


def test_logprobs_from_logits_matches_manual():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    labels = torch.tensor([[0, 4, 2], [1, 1, -100]])
    out = logprobs_from_logits(logits, labels)
    for b in range(2):
        for s in range(3):
            if labels[b, s] < 0:
                assert out[b, s].item() == 0.0
                continue
            z = logits[b, s]
            manual = math.log(math.exp(z[labels[b, s]].item()) / sum(math.exp(v) for v in z.tolist()))
            assert out[b, s].item() == pytest.approx(manual, abs=1e-5)
    assert out.dtype == torch.float32
    bf16 = logprobs_from_logits(logits.bfloat16(), labels.clamp_min(0))
    assert bf16.dtype == torch.float32
    with pytest.raises(ValueError, match="labels"):
        logprobs_from_logits(logits, labels[:, :2])


def test_entropy_from_logits():
    V = 8
    uniform = torch.zeros(1, 1, V)
    peaked = torch.tensor([[[50.0] + [0.0] * (V - 1)]])
    logits = torch.cat([uniform, peaked, uniform], dim=1)  # (1, 3, V)
    # tokens 0 and 1 valid: (ln 8 + ~0) / 2
    ent = entropy_from_logits(logits, torch.tensor([[1, 1, 0]]))
    assert ent.item() == pytest.approx(math.log(V) / 2, abs=1e-6)
    assert entropy_from_logits(logits, torch.tensor([[1, 0, 1]])).item() == pytest.approx(
        math.log(V), abs=1e-6
    )


def test_explained_variance():
    returns, mask = t([[1.0, 2.0, 3.0, 4.0, 1e3]]), torch.tensor([[1, 1, 1, 1, 0]])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask) == pytest.approx(0.0)
    # residuals (1, -1, 1, -1): var 1; Var(returns over 1..4) = 1.25 -> 1 - 1 / 1.25 = 0.2
    values = returns - t([[1.0, -1.0, 1.0, -1.0, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(0.2)
    assert math.isnan(explained_variance(returns, torch.ones(1, 5, dtype=torch.float64), mask))


def test_apply_missing_eos_penalty():
    scores = t([1.0, 1.0, 1.0])
    ids = torch.tensor([[5, 2, 0], [5, 6, 7], [2, 0, 0]])
    out = apply_missing_eos_penalty(scores, ids, eos_token_id=2, penalty=0.5)
    torch.testing.assert_close(out, t([1.0, 0.5, 1.0]))
    assert scores.tolist() == [1.0, 1.0, 1.0]  # input untouched
    # pad id == eos id: without the mask the padding would look like an EOS
    ids_pad = torch.tensor([[5, 6, 2], [5, 6, 2]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(
        apply_missing_eos_penalty(scores[:2], ids_pad, 2, 0.5, mask=mask), t([1.0, 0.5])
    )
    with pytest.raises(ValueError, match=">= 0"):
        apply_missing_eos_penalty(scores, ids, 2, -1.0)
