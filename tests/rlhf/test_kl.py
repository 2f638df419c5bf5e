"""KL estimators and KL controllers, against hand-computed values."""

import math

import pytest
import torch

from vlmkit.rlhf.kl import (
    AdaptiveKLController,
    FixedKLController,
    build_kl_controller,
    kl_estimate,
)

LN2 = math.log(2.0)


def _lp(*probs: float) -> torch.Tensor:
    return torch.tensor([list(probs)], dtype=torch.float64).log()


def test_estimators_on_known_probabilities():
    # token 0: p = 0.5,  p_ref = 0.25 -> log(p/p_ref) = ln 2,  r = p_ref/p = 0.5
    # token 1: p = 0.25, p_ref = 0.5  -> log(p/p_ref) = -ln 2, r = 2
    logp, ref = _lp(0.5, 0.25), _lp(0.25, 0.5)
    k1 = kl_estimate(logp, ref, "k1")
    k2 = kl_estimate(logp, ref, "k2")
    k3 = kl_estimate(logp, ref, "k3")
    torch.testing.assert_close(k1, torch.tensor([[LN2, -LN2]], dtype=torch.float64))
    # k2 = 0.5 * (ln 2)^2 = 0.2402265 for both tokens
    torch.testing.assert_close(k2, torch.tensor([[0.2402265069591007] * 2], dtype=torch.float64))
    # k3: (0.5 - 1) - ln 0.5 = 0.1931472;  (2 - 1) - ln 2 = 0.3068528
    torch.testing.assert_close(
        k3, torch.tensor([[0.1931471805599453, 0.3068528194400547]], dtype=torch.float64)
    )
    assert kl_estimate(logp, ref).equal(k1)  # k1 is the default


def test_k3_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 32, generator=g, dtype=torch.float64) * 3
    ref = torch.randn(64, 32, generator=g, dtype=torch.float64) * 3
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert (kl_estimate(logp, ref, "k2") >= 0).all()
    assert (kl_estimate(logp, ref, "k1") < 0).any()  # k1 can be negative per token
    assert kl_estimate(logp, logp, "k3").abs().max() == 0


def test_k1_and_k3_expectations_equal_true_kl():
    # Under x ~ p, E[k1] = E[k3] = KL(p || q) exactly (E_p[q/p - 1] = 0); E[k2] is only close.
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(10, generator=g, dtype=torch.float64), -1)
    logq = torch.log_softmax(torch.randn(10, generator=g, dtype=torch.float64), -1)
    p = logp.exp()
    true_kl = (p * (logp - logq)).sum()
    torch.testing.assert_close(
        true_kl, torch.nn.functional.kl_div(logq, logp, log_target=True, reduction="sum")
    )
    e_k1 = (p * kl_estimate(logp, logq, "k1")).sum()
    e_k3 = (p * kl_estimate(logp, logq, "k3")).sum()
    torch.testing.assert_close(e_k1, true_kl)
    torch.testing.assert_close(e_k3, true_kl)
    assert true_kl > 0.05


def test_k3_precise_for_close_distributions():
    logp = torch.tensor([-1.0], dtype=torch.float32)
    ref = logp - 1e-4
    # (r - 1) - log r with log r = 1e-4 is ~ 0.5e-8; a naive exp(x) - 1 - x loses it in float32.
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.tensor([5.0e-9]), rtol=1e-2, atol=0)


def test_unknown_estimator_and_shape_mismatch():
    with pytest.raises(ValueError, match=r"'k4'.*\['k1', 'k2', 'k3'\]"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), "k4")
    with pytest.raises(ValueError, match="same shape"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 3))


def test_fixed_controller_does_not_move():
    c = FixedKLController(0.05)
    c.update(current_kl=100.0, n_steps=1000)
    assert c.value == 0.05
    fresh = FixedKLController(1.0)
    fresh.load_state_dict(c.state_dict())
    assert fresh.value == 0.05


def test_adaptive_controller_hand_values():
    c = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    # KL 12 vs target 6: error = 12/6 - 1 = 1.0, clipped to 0.2; mult = 1 + 0.2 * 256 / 10000 = 1.00512
    c.update(current_kl=12.0, n_steps=256)
    assert c.value == pytest.approx(0.1 * 1.00512, rel=1e-12)
    # KL 6.6: error = 0.1 (inside the clip); mult = 1 + 0.1 * 100 / 10000 = 1.001
    c.update(current_kl=6.6, n_steps=100)
    assert c.value == pytest.approx(0.1 * 1.00512 * 1.001, rel=1e-12)
    # KL 0: error = -1 clipped to -0.2; mult = 1 - 0.2 * 500 / 10000 = 0.99
    before = c.value
    c.update(current_kl=0.0, n_steps=500)
    assert c.value == pytest.approx(before * 0.99, rel=1e-12)
    # At target nothing changes.
    before = c.value
    c.update(current_kl=6.0, n_steps=500)
    assert c.value == pytest.approx(before, rel=1e-15)


def test_adaptive_clip_bounds_the_step():
    huge, big = AdaptiveKLController(1.0, 1.0, 100), AdaptiveKLController(1.0, 1.0, 100)
    huge.update(current_kl=1e6, n_steps=10)
    big.update(current_kl=1.2, n_steps=10)  # exactly at the +0.2 clip
    assert huge.value == pytest.approx(1.02) and big.value == pytest.approx(1.02)


def test_adaptive_state_dict_roundtrip_resumes_exactly():
    kls = [3.0, 9.5, 7.1, 0.4, 6.2, 12.0]
    full = AdaptiveKLController(0.2, 6.0, 1000)
    for kl in kls:
        full.update(kl, 64)
    half = AdaptiveKLController(0.2, 6.0, 1000)
    for kl in kls[:3]:
        half.update(kl, 64)
    resumed = AdaptiveKLController(9.0, 1.0, 1)  # deliberately different settings
    resumed.load_state_dict(half.state_dict())
    for kl in kls[3:]:
        resumed.update(kl, 64)
    assert resumed.value == full.value  # bit-exact
    assert resumed.state_dict() == full.state_dict()
    with pytest.raises(ValueError, match="missing"):
        resumed.load_state_dict({"value": 1.0})


def test_build_kl_controller_registry():
    assert isinstance(build_kl_controller("fixed", 0.1), FixedKLController)
    c = build_kl_controller("adaptive", 0.1, target=6.0, horizon=10000)
    assert isinstance(c, AdaptiveKLController) and (c.target, c.horizon) == (6.0, 10000)
    with pytest.raises(ValueError, match=r"'ppo'.*\['adaptive', 'fixed'\]"):
        build_kl_controller("ppo", 0.1)
    with pytest.raises(ValueError, match="target and horizon"):
        build_kl_controller("adaptive", 0.1)
    with pytest.raises(ValueError, match="target must be > 0"):
        AdaptiveKLController(0.1, 0.0, 10)
