"""PPO with a learned reward and a critic started from that reward model, on a tiny VLM: the critic starts on the
reward model's scale (here 40x and shifted, as a Bradley-Terry head may be) and explains less of the returns than
a constant would; the first-batch fit puts it on the returns' scale (explained variance >= 0 from the first
step), the scores are standardised with the first batch's statistics, and the gold accuracy of the rollouts is
logged beside the proxy reward."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.args import ModelArgs
from vlmkit.config.ppo import PPOConfig
from vlmkit.data.records import Sample, Turn
from vlmkit.models.build import build_vlm
from vlmkit.rlhf.ppo_math import explained_variance
from vlmkit.rlhf.ppo_trainer import PPOTrainer
from vlmkit.rlhf.reward_model import RewardModel
from vlmkit.rlhf.rewards import ModelReward, RewardSet
from vlmkit.rlhf.value_model import ActorCritic, frozen_reference
from vlmkit.rlhf.verifiable import exact_answer
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.freeze import set_trainable

pytestmark = pytest.mark.slow  # two tiny PPO trainers with a reward model and a critic (~10 s)

SCALE, SHIFT = 40.0, 15.0  # how far off the reward model's scale is from order-1 returns


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    policy, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    reward_model = RewardModel(copy.deepcopy(policy))
    with torch.no_grad():
        reward_model.score_head.weight.mul_(SCALE)
        reward_model.score_head.bias.fill_(SHIFT)
    return policy, processor, reward_model


def _prompts(n: int = 32) -> list[Sample]:
    rng = np.random.default_rng(0)
    return [
        Sample(
            [Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", str(i % 10))],
            [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")],
            index=i,
        )
        for i in range(n)
    ]


def _trainer(parts, tmp_path, **overrides) -> PPOTrainer:
    policy, processor, reward_model = parts
    fields = dict(
        reward_model_name_or_path="in-memory", output_dir=str(tmp_path), per_device_train_batch_size=8,
        num_mini_batches=4, num_ppo_epochs=1, max_new_tokens=3, learning_rate=1e-3, mixed_precision="no",
        report_to=["none"], seed=3, value_model="reward_model", temperature=1.0,
    )  # fmt: skip
    cfg = PPOConfig(**{**fields, **overrides})
    accelerator = make_accelerator(
        output_dir=cfg.output_dir, gradient_accumulation_steps=1, mixed_precision="no"
    )
    policy = copy.deepcopy(policy)
    set_trainable(policy, "instruct", tune_connector=True)
    critic = copy.deepcopy(reward_model)
    set_trainable(critic, "reward")
    reward = RewardSet([("reward_model", 1.0, ModelReward(copy.deepcopy(reward_model).eval(), processor))])
    reference = frozen_reference(policy, None, accelerator)
    return PPOTrainer(
        cfg,
        accelerator,
        ActorCritic(policy, critic=critic),
        processor,
        reward,
        _prompts(),
        reference=reference,
    )


def _first_experience(trainer):
    torch.manual_seed(0)
    return trainer.make_experience(trainer.prompts_for_step(0))


def test_critic_on_the_reward_models_scale_is_fitted_to_the_returns(parts, tmp_path):
    raw = _trainer(parts, tmp_path / "raw", calibrate_critic=False, normalize_scores=True)
    fitted = _trainer(parts, tmp_path / "fit", calibrate_critic=True, normalize_scores=True)
    exp_raw, exp_fit = _first_experience(raw), _first_experience(fitted)
    assert torch.equal(exp_raw.rollout.response_ids, exp_fit.rollout.response_ids)  # the same rollouts
    assert explained_variance(exp_raw.values, exp_raw.returns, exp_raw.mask) < -10
    assert explained_variance(exp_fit.values, exp_fit.returns, exp_fit.mask) >= 0
    scale, shift = fitted.scale.critic_fit
    assert abs(scale) < 1 / SCALE  # undoes the reward model's 40x and the standardisation's 1/std
    # The head itself was mapped, so the update's fresh values are the calibrated ones.
    with torch.no_grad():
        _, _, values = fitted.forward(exp_fit.rollout, with_values=True)
    assert torch.allclose(values * exp_fit.mask, exp_fit.values, atol=1e-4)
    # Scores are standardised with this first batch; the log keeps them in the reward model's units.
    normalized = (exp_fit.scores - fitted.scale.mean) / fitted.scale.std
    assert abs(normalized.mean().item()) < 1e-5 and normalized.std().item() == pytest.approx(1.0, abs=1e-5)
    assert exp_fit.scores.std().item() > 5  # raw RM units (SCALE x the tiny model's features)
    # A second experience neither refits the critic nor the statistics.
    stats = (fitted.scale.mean, fitted.scale.std, fitted.scale.critic_fit)
    fitted.make_experience(fitted.prompts_for_step(1))
    assert (fitted.scale.mean, fitted.scale.std, fitted.scale.critic_fit) == stats


def test_gold_accuracy_of_the_rollouts_is_logged_beside_the_proxy_reward(parts, tmp_path):
    trainer = _trainer(parts, tmp_path, normalize_scores=True)
    exp = _first_experience(trainer)
    stats = trainer.rollout_stats(exp)
    gold = exact_answer(exp.rollout.texts, exp.rollout.references)
    assert stats["gold_accuracy"] == pytest.approx(sum(gold) / len(gold))
    assert stats["score_mean"] == pytest.approx(exp.scores.mean().item())
    assert stats["explained_variance"] >= 0
