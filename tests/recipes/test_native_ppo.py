"""PPO on native transformers VLMs through the real recipe (`recipes/ppo.py`): policy, frozen reference (a
copy, or the LoRA adapters off) and a value head on the policy, rewarded by the verifiable digit reward (plus a
brevity reward so that the untrained stand-in's responses differ) on embedded digits prompts. The saved policy
and value head reload; plain transformers / peft answer as the trained policy did."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.test_native_grpo import small_prompts  # noqa: F401 - the shared prompts fixture
from vlmkit.data.readers import read_dataset
from vlmkit.eval.answers import generate_answers
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_native_checkpoint
from vlmkit.models.native.tiny import build_tiny_native
from vlmkit.rlhf.native_reward import NativeRewardModel
from vlmkit.rlhf.value_model import load_value_head


@pytest.mark.slow
@pytest.mark.parametrize("family,mode", [("qwen2_vl", "lora"), ("llava", "full")])
def test_native_ppo_trains_saves_and_reloads(recipe, small_prompts, family, mode, tmp_path):  # noqa: F811
    out = tmp_path / "ppo"
    lora = ["--use_lora", "true"] if mode == "lora" else []
    metrics = recipe("ppo").main([
        "--model_name_or_path", f"vlmkit-tiny/native-{family}",
        "--reward_funcs", "digit_match,tests.recipes.test_native_grpo:brevity", "--value_model", "policy_head",
        "--missing_eos_penalty", "1.0", "--data_path", small_prompts["train"],
        "--eval_data_path", small_prompts["eval"], "--image_folder", small_prompts["images"],
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--max_new_tokens", "3", "--learning_rate", "1e-3", "--report_to", "none", *lora,
    ])  # fmt: skip
    assert metrics["global_step"] == 2 and metrics["bad_steps"] == 0
    assert {"eval_accuracy", "eval_accuracy_before", "eval_reward", "eval_reward_before"} <= set(metrics)
    assert metrics["eval_kl"] != 0.0  # the policy moved from its frozen start (k1 estimate: either sign)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all({"value_loss", "kl", "reward_digit_match", "reward_brevity"} <= set(r) for r in log)
    files = {p.name for p in out.iterdir()}
    if mode == "lora":
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
        assert all("lora_" in k for k in load_file(str(out / "adapter_model.safetensors")))
    else:
        assert "model.safetensors" in files
    assert load_value_head(out).weight.abs().sum() > 0  # trained from its zero start
    model, processor = load_native_checkpoint(out)
    shown = json.loads((out / "eval_examples.json").read_text())
    prompts = read_dataset(small_prompts["eval"], small_prompts["images"])[: len(shown)]
    answers = [
        a for a, _ in generate_answers(model, NativeEncoder(processor, family), prompts, max_new_tokens=3)
    ]
    assert answers == [row["prediction"] for row in shown]


@pytest.mark.slow
def test_native_ppo_with_a_native_reward_model_and_its_critic(recipe, small_prompts, tmp_path):  # noqa: F811
    """The reward model scores the responses and starts the critic (value_model=reward_model), LoRA policy."""
    torch.manual_seed(0)
    vlm, processor = load_native_checkpoint(build_tiny_native("qwen2_vl"))
    reward_dir = tmp_path / "reward_model"
    NativeRewardModel(vlm).save_pretrained(reward_dir)
    NativeEncoder(processor, "qwen2_vl").save_pretrained(reward_dir)  # the processor files
    out = tmp_path / "ppo"
    metrics = recipe("ppo").main([
        "--model_name_or_path", "vlmkit-tiny/native-qwen2_vl", "--reward_model_name_or_path", str(reward_dir),
        "--value_model", "reward_model", "--data_path", small_prompts["train"],
        "--eval_data_path", small_prompts["eval"], "--image_folder", small_prompts["images"],
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--max_new_tokens", "3", "--learning_rate", "1e-3", "--use_lora", "true", "--report_to", "none",
        "--sft_baseline", "true",
    ])  # fmt: skip
    assert metrics["global_step"] == 2 and metrics["bad_steps"] == 0
    # the compute-matched SFT baseline (LoRA from the same start, the run's prompts and updates)
    assert metrics["baseline_samples"] == metrics["train_samples"] and metrics["baseline_updates"] > 0
    assert "baseline_eval_accuracy" in metrics and "baseline_beaten" in metrics
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(
        r["score_std"] > 0 and "value_loss" in r for r in log
    )  # the reward model tells responses apart
    # the critic (the reward model, trained on) is saved as a native reward model that reloads and scores
    critic = NativeRewardModel.from_pretrained(out / "value_model")
    start = NativeRewardModel.from_pretrained(reward_dir)
    assert not torch.equal(critic.score_head.weight, start.score_head.weight)
