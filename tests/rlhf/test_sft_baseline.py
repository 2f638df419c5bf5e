"""The compute-matched SFT baseline of an RL run: it reads the RL run's prompts in the same order and takes the
same number of optimizer updates on the same number of samples, trains on exactly the tokens stage-2 SFT
supervises, and is compared with the RL run prompt by prompt; DPO's baseline loss is the term RPO adds."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.rlhf.test_dpo import batch_for
from vlmkit.config.args import ModelArgs
from vlmkit.config.grpo import GRPOConfig
from vlmkit.config.ppo import PPOConfig
from vlmkit.data.records import Sample, Turn
from vlmkit.data.tokenize import IGNORE_INDEX, tokenize_sample
from vlmkit.models.build import build_vlm
from vlmkit.rlhf.dpo import ChosenNLL, DPOLoss, ReferencePolicy
from vlmkit.rlhf.grpo_trainer import GRPOTrainer
from vlmkit.rlhf.ppo_trainer import PPOTrainer
from vlmkit.rlhf.rewards import FunctionReward
from vlmkit.rlhf.sft_baseline import (
    BASELINE_DIR,
    answer_tokens,
    check_sft_baseline,
    compare_with_sft_baseline,
    paired_comparison,
)
from vlmkit.rlhf.value_model import ActorCritic, build_actor_critic, frozen_reference
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.freeze import set_trainable


def _prompts(n: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
        turns = [Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", str(i % 3))]
        out.append(Sample(turns, [image], source="prompts", index=i))
    return out


def match_reward(completions, references, prompts):
    return [float(c.strip() == r) for c, r in zip(completions, references)]


@pytest.fixture(scope="module")
def base_policy():
    torch.manual_seed(0)
    return build_vlm(ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama"))


COMMON = dict(
    reward_funcs=[f"{__name__}:match_reward"], per_device_train_batch_size=4, gradient_accumulation_steps=1,
    max_new_tokens=3, learning_rate=1e-3, mixed_precision="no", report_to=["none"], seed=3, max_steps=2,
    sft_baseline=True, eval_data_path="held_out.json",
)  # fmt: skip
# Per RL step: PPO samples 4 x 1 x 2 = 8 responses and takes 3 passes x 2 mini-batches = 6 updates; GRPO samples
# 2 prompts x 4 = 8 completions and takes 2 passes x 2 = 4 updates.
METHODS = {
    "ppo": (PPOConfig, dict(num_mini_batches=2, num_ppo_epochs=3), 6),
    "grpo": (GRPOConfig, dict(steps_per_generation=2, num_generations=4, num_iterations=2, beta=0.04), 4),
}


def make_rl_trainer(method: str, base_policy, tmp_path):
    config, fields, _ = METHODS[method]
    cfg = config(output_dir=str(tmp_path), **COMMON, **fields)
    accelerator = make_accelerator(
        output_dir=cfg.output_dir, gradient_accumulation_steps=1, mixed_precision="no"
    )
    policy, processor = copy.deepcopy(base_policy[0]), base_policy[1]
    reference = frozen_reference(policy, None, accelerator)
    reward = FunctionReward(match_reward)
    if method == "ppo":
        model = build_actor_critic(policy, "policy_head")
        return PPOTrainer(cfg, accelerator, model, processor, reward, _prompts(12), reference=reference)
    set_trainable(policy, "instruct", tune_connector=True)
    return GRPOTrainer(
        cfg, accelerator, ActorCritic(policy), processor, reward, _prompts(12), reference=reference
    )


def record_calls(trainer, seen: list, updates: list) -> None:
    """Log the prompts each step's experience is made from, and every optimizer update begun."""
    make, begin = trainer.make_experience, trainer.stepper.begin
    trainer.make_experience = lambda samples: seen.append([s.index for s in samples]) or make(samples)
    trainer.stepper.begin = lambda items, step: updates.append(step) or begin(items, step)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_baseline_takes_the_rl_runs_updates_on_its_prompts(method, base_policy, tmp_path, monkeypatch):
    rl = make_rl_trainer(method, base_policy, tmp_path)
    rl_prompts, rl_updates = [], []
    record_calls(rl, rl_prompts, rl_updates)
    rl.train()
    held_out = _prompts(6, seed=1)
    rl_accuracy = rl.evaluate(held_out)["accuracy"]

    base_prompts, base_updates = [], []
    from vlmkit.rlhf import sft_baseline

    built = sft_baseline.SFTBaselineTrainer

    def recording(*args, **kwargs):
        trainer = built(*args, **kwargs)
        record_calls(trainer, base_prompts, base_updates)
        return trainer

    monkeypatch.setattr(sft_baseline, "SFTBaselineTrainer", recording)
    start = copy.deepcopy(base_policy[0])
    metrics = compare_with_sft_baseline(rl, held_out, lambda: start)

    per_step = METHODS[method][2]
    assert len(rl_updates) == 2 * per_step  # the RL run's optimizer updates, counted where they happen
    assert base_updates == rl_updates  # the same number of updates, step by step
    assert metrics["baseline_updates"] == len(rl_updates)
    assert base_prompts == rl_prompts and len(rl_prompts[0]) == rl.cfg.rollout_batch_size  # same rows, order
    assert (
        metrics["baseline_samples"] == 2 * rl.cfg.rollout_batch_size
    )  # what the recipe's train_samples counts
    moved = [not torch.equal(a, b) for a, b in zip(start.parameters(), base_policy[0].parameters())]
    assert any(moved)  # the baseline trained the copy of the RL run's start it was given
    gain = rl_accuracy - metrics["baseline_eval_accuracy"]
    assert metrics["baseline_accuracy_rl_minus_sft"] == pytest.approx(gain, abs=1e-9)
    assert {"baseline_eval_reward", "baseline_eval_kl", "baseline_beaten"} <= set(metrics)
    log = [
        json.loads(line) for line in (tmp_path / BASELINE_DIR / "train_log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == [1, 2] and log[-1]["loss"] < log[0]["loss"]  # it learns the answers


def test_answer_tokens_are_what_stage2_sft_supervises(base_policy):
    tokenizer = base_policy[1].tokenizer
    sample = _prompts(1)[0]
    tokenized = tokenize_sample(sample, tokenizer, modality="image", num_media_tokens=4, max_length=512)
    supervised = [t for t in tokenized.labels if t != IGNORE_INDEX]
    assert answer_tokens(sample, tokenizer) == supervised
    assert supervised[-1] == tokenizer.eos_token_id and len(supervised) >= 2  # the answer, then EOS
    with pytest.raises(Exception, match="reference answers"):
        answer_tokens(
            Sample([Turn("user", "<image>\nWhich?")], sample.images, source="p.json", index=7), tokenizer
        )


def test_paired_comparison_by_hand():
    # d = [1, 0, 1, 0]: gain 0.5, sample std sqrt(1/3), stderr sqrt(1/3) / 2 = 0.2887 -> 0.5 < 1.96 x 0.2887
    result = paired_comparison([True, True, True, False], [False, True, False, False])
    assert result["baseline_accuracy_rl_minus_sft"] == pytest.approx(0.5)
    assert result["baseline_accuracy_rl_minus_sft_stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)
    assert result["baseline_beaten"] is False  # a gain inside the noise is not a win
    many = paired_comparison([True] * 12 + [False] * 8, [False] * 12 + [False] * 8)
    assert many["baseline_accuracy_rl_minus_sft"] == pytest.approx(0.6) and many["baseline_beaten"] is True
    worse = paired_comparison([False] * 10, [True] * 10)
    assert worse["baseline_accuracy_rl_minus_sft"] == -1.0 and worse["baseline_beaten"] is False
    with pytest.raises(ValueError, match="equal"):
        paired_comparison([True], [True, False])


def test_the_baseline_needs_held_out_data(tmp_path):
    cfg = PPOConfig(output_dir=str(tmp_path), reward_funcs=["digit_match"], sft_baseline=True)
    accelerator = make_accelerator(
        output_dir=str(tmp_path), gradient_accumulation_steps=1, mixed_precision="no"
    )
    with pytest.raises(ValueError, match="--eval_data_path"):
        check_sft_baseline(cfg, accelerator, held_out=False)
    check_sft_baseline(cfg, accelerator, held_out=True)  # refused only for what it lacks


def test_dpo_baseline_loss_is_the_term_rpo_adds(base_policy):
    """ChosenNLL = DPO+NLL (rpo_alpha 1) - DPO (rpo_alpha 0) on the same batch: the SFT baseline trains on the
    chosen answers exactly as RPO's NLL term does, and never runs the rejected answers."""
    policy = copy.deepcopy(base_policy[0]).eval()
    reference = ReferencePolicy(policy, adapters_off=False)
    _, _, batch = batch_for(base_policy[1])
    with torch.no_grad():
        dpo, _ = DPOLoss(reference, beta=0.1)(policy, batch)
        rpo, _ = DPOLoss(reference, beta=0.1, rpo_alpha=1.0)(policy, batch)
        nll, extras = ChosenNLL()(policy, batch)
    assert nll.item() == pytest.approx(rpo.item() - dpo.item(), rel=1e-5)
    assert extras["chosen_nll"] == pytest.approx(nll.item() / batch["num_pairs"], rel=1e-5)
