"""The GRPO loop on a tiny VLM: updates follow the group-relative advantages, groups with equal rewards teach
nothing (and are counted), accumulation invariance with token-level normalisation, the NaN guard, and exact
resume of policy, optimizer and the rollout RNG."""

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.config.args import ModelArgs
from vlmkit.config.grpo import GRPOConfig
from vlmkit.data.records import Sample, Turn
from vlmkit.models.build import build_vlm
from vlmkit.rlhf import grpo_trainer
from vlmkit.rlhf.grpo_trainer import GRPOTrainer
from vlmkit.rlhf.rewards import FunctionReward, RewardSet
from vlmkit.rlhf.rollout import hf_generate
from vlmkit.rlhf.value_model import ActorCritic, frozen_reference
from vlmkit.training.accelerator import make_accelerator

G = 4


def _prompts(n: int = 8) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
        out.append(
            Sample([Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", str(i % 10))], [image])
        )
    return out


def text_parity(completions, references, prompts):
    """A reward that differs between completions of the same prompt: the parity of the text's characters."""
    return [float(sum(map(ord, c)) % 2) for c in completions]


def constant(completions, references, prompts):
    return [1.0 for _ in completions]


@pytest.fixture(scope="module")
def base_policy():
    torch.manual_seed(0)
    return build_vlm(ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama"))


def make_trainer(base_policy, tmp_path, reward=text_parity, **overrides) -> GRPOTrainer:
    fields = dict(
        reward_funcs=[f"{__name__}:{reward.__name__}"], output_dir=str(tmp_path), per_device_train_batch_size=8,
        gradient_accumulation_steps=2, num_generations=G, max_new_tokens=3, learning_rate=1e-3,
        mixed_precision="no", report_to=["none"], seed=3, beta=0.04, temperature=1.0,
    )  # fmt: skip
    fields.update(overrides)
    cfg = GRPOConfig(**fields)
    accelerator = make_accelerator(
        output_dir=cfg.output_dir,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision="no",
    )
    policy, processor = copy.deepcopy(base_policy[0]), base_policy[1]
    reference = frozen_reference(policy, None, accelerator) if cfg.beta > 0 else None
    rewards = RewardSet([(reward.__name__, 1.0, FunctionReward(reward, reward.__name__))])
    return GRPOTrainer(
        cfg, accelerator, ActorCritic(policy), processor, rewards, _prompts(), reference=reference
    )


def _sequence_logprobs(trainer, rollout):
    with torch.no_grad():
        logprobs, _, _ = trainer.forward(rollout)
    return (logprobs * rollout.response_mask).sum(1)


def test_prompts_come_in_whole_groups(base_policy, tmp_path):
    trainer = make_trainer(base_policy, tmp_path)
    prompts = trainer.prompts_for_step(0)
    assert len(prompts) == 16 and all(prompts[i] is prompts[i - i % G] for i in range(16))


def test_update_follows_the_group_relative_advantages(base_policy, tmp_path):
    trainer = make_trainer(base_policy, tmp_path, beta=0.0)
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.prompts_for_step(0))
    assert exp.zero_std_groups < exp.num_groups and exp.ref_logprobs is None and exp.old_logprobs is None
    for g in range(exp.num_groups):  # advantages are centred within each group
        assert abs(exp.advantages[g * G : (g + 1) * G].sum().item()) < 1e-4
    before = _sequence_logprobs(trainer, exp.rollout)
    stats = trainer.update(exp, 0)
    change = _sequence_logprobs(trainer, exp.rollout) - before
    assert change[exp.advantages > 0].mean() > 0 > change[exp.advantages < 0].mean(), (change, exp.advantages)
    assert stats["clip_fraction"] == 0.0  # one iteration: the ratio is exactly 1


def test_equal_reward_groups_are_counted_and_leave_the_policy_unchanged(base_policy, tmp_path):
    trainer = make_trainer(base_policy, tmp_path, reward=constant)
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.prompts_for_step(0))
    assert exp.zero_std_groups == exp.num_groups == 4 and exp.advantages.abs().sum() == 0
    before = copy.deepcopy(trainer.bare.policy.state_dict())
    trainer.update(exp, 0)
    after = trainer.bare.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # k3 has zero gradient at the reference
    assert trainer.rollout_stats(exp)["zero_std_group_fraction"] == 1.0


def test_each_reward_source_is_logged_apart_and_the_weighted_sum_is_the_reward(base_policy, tmp_path):
    trainer = make_trainer(base_policy, tmp_path)
    trainer.reward = RewardSet(
        [("text_parity", 1.0, FunctionReward(text_parity, "text_parity")),
         ("constant", 0.5, FunctionReward(constant, "constant"))]
    )  # fmt: skip
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.prompts_for_step(0))
    stats = trainer.rollout_stats(exp)
    parity = torch.tensor(text_parity(exp.rollout.texts, None, None))
    assert stats["reward_text_parity"] == pytest.approx(parity.mean().item())
    assert stats["reward_constant"] == 1.0
    assert stats["reward_mean"] == pytest.approx(parity.mean().item() + 0.5)
    assert stats["bad_reward_text_parity"] == stats["bad_reward_constant"] == 0


def test_generation_engine_is_hf_generate_and_use_vllm_is_refused(base_policy, tmp_path):
    """TRL's `use_vllm` is recognised and refused, naming what generates instead: no vLLM engine ships."""
    assert make_trainer(base_policy, tmp_path).engine is hf_generate
    with pytest.raises(ValueError, match="use_vllm: vlmkit ships no vLLM rollout engine.*RolloutEngine"):
        make_trainer(base_policy, tmp_path, use_vllm=True)


def test_reused_batches_clip_and_keep_their_sampling_log_probs(base_policy, tmp_path):
    trainer = make_trainer(base_policy, tmp_path, num_iterations=3, learning_rate=2e-2, epsilon_high=0.28)
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.prompts_for_step(0))
    mask = exp.mask
    assert torch.allclose(exp.old_logprobs[mask], exp.ref_logprobs[mask], atol=1e-6)  # nothing moved yet
    stats = trainer.update(exp, 0)
    assert stats["clip_fraction"] > 0  # later iterations see ratios outside [1 - eps, 1 + eps_high]
    assert stats["kl"] > 0


def _first_step_gradients(trainer, exp) -> dict:
    grads, step = {}, trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if trainer.accelerator.sync_gradients and not grads:
            grads.update(
                {n: p.grad.clone() for n, p in trainer.bare.named_parameters() if p.grad is not None}
            )
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.update(exp, 0)
    return grads


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_batch_times_accumulation_gives_the_same_update(base_policy, tmp_path, loss_type):
    """16 x 1 and 4 x 4 (micro-batch x accumulation): the same gradient for every loss normalisation."""
    a = make_trainer(base_policy, tmp_path / "a", per_device_train_batch_size=16, gradient_accumulation_steps=1,
                     loss_type=loss_type)  # fmt: skip
    torch.manual_seed(0)
    exp = a.make_experience(a.prompts_for_step(0))
    exp.rollout.response_mask[::2, 1:] = (
        False  # completions of different lengths: the token weighting matters
    )
    grads_a = _first_step_gradients(a, exp)
    b = make_trainer(base_policy, tmp_path / "b", per_device_train_batch_size=4, gradient_accumulation_steps=4,
                     loss_type=loss_type)  # fmt: skip
    grads_b = _first_step_gradients(b, exp)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    scale = max(g.abs().max().item() for g in grads_a.values())
    diff = max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a)
    assert scale > 1e-5 and diff <= 1e-6 * max(1.0, scale), (diff, scale)


def test_a_nan_update_is_skipped_and_counted(base_policy, tmp_path, monkeypatch):
    trainer = make_trainer(base_policy, tmp_path, max_steps=3, logging_steps=1)
    real, calls = grpo_trainer.clipped_token_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss, stats = real(*args, **kwargs)
        return (loss * math.nan if len(calls) in (3, 4) else loss), stats  # both micro-batches of step 2

    monkeypatch.setattr(grpo_trainer, "clipped_token_loss", poisoned)
    result = trainer.train()
    assert result.bad_steps == 1 and [r.get("skipped") for r in result.history] == [None, "bad", None]
    assert all(torch.isfinite(v).all() for v in trainer.bare.state_dict().values())


PARTS = ["--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision",
         "--language_model", "vlmkit-tiny/llama"]  # fmt: skip


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(recipe, tmp_path):
    """Steps 3-4 after resuming from checkpoint-2 match the uninterrupted run: policy and sampled rollouts."""
    common = PARTS + [
        "--reward_funcs", f"{__name__}:text_parity", "--data_path", "vlmkit-data/digits/prompts_train.json",
        "--eval_data_path", "none", "--per_device_train_batch_size", "8", "--num_generations", "4",
        "--max_new_tokens", "3", "--learning_rate", "1e-3", "--max_steps", "4", "--num_iterations", "2",
        "--report_to", "none", "--seed", "5",
    ]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    recipe("grpo").main(common + ["--output_dir", str(full), "--save_steps", "2"])
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    recipe("grpo").main(common + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    log_full = [json.loads(x) for x in (full / "train_log.jsonl").read_text().splitlines()]
    log_resumed = [json.loads(x) for x in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_resumed] == [3, 4]
    for key in ("reward_mean", "kl", "response_length", "loss", "entropy", "zero_std_groups"):
        for a, b in zip(log_full[2:], log_resumed):
            assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    for name in ("language_model/model.safetensors", "connector.safetensors"):
        a, b = load_file(str(full / name)), load_file(str(resumed / name))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name
    assert not (full / "value_model").exists()  # critic-free
