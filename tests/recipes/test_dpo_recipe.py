"""recipes/dpo.py on the embedded digits: DPO raises the held-out answer accuracy of a weak stage-2 policy."""

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
WEAK_STAGE2_STEPS = 250
DPO_STEPS = 150


@pytest.fixture(scope="module")
def weak_policy(recipe, stage1_checkpoint, tmp_path_factory):
    """The weak stage-2 config with fewer steps (the session's stage 1 is short too)."""
    out = tmp_path_factory.mktemp("dpo_weak_stage2")
    recipe("llava_stage2").main(
        [
            "--config", str(CONFIGS / "digits_llava_stage2_weak.yaml"),
            "--model_name_or_path", str(stage1_checkpoint), "--output_dir", str(out),
            "--max_steps", str(WEAK_STAGE2_STEPS), "--eval_generation", "false", "--report_to", "none",
        ]
    )  # fmt: skip
    return out


def test_dpo_raises_held_out_accuracy_of_a_weak_policy(recipe, weak_policy, tmp_path):
    out = tmp_path / "dpo"
    metrics = recipe("dpo").main(
        [
            "--config", str(CONFIGS / "digits_dpo.yaml"), "--model_name_or_path", str(weak_policy),
            "--output_dir", str(out), "--max_steps", str(DPO_STEPS), "--report_to", "none",
        ]
    )  # fmt: skip
    before, after = metrics["eval_accuracy_before"], metrics["eval_accuracy"]
    assert before < 0.7, metrics  # the starting policy really is weak
    assert after >= before + 0.15, metrics  # held-out questions (stage2_eval), not the preference pairs
    assert metrics["eval_reward_accuracy"] >= 0.8, metrics
    for name in (
        "config.yaml",
        "metrics.json",
        "train_log.jsonl",
        "loss.png",
        "README.md",
        "eval_examples.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["eval_accuracy"] == after


def test_lora_dpo_trains_adapters_against_adapters_off(recipe, weak_policy, tmp_path):
    out = tmp_path / "dpo_lora"
    metrics = recipe("dpo").main(
        [
            "--config", str(CONFIGS / "digits_dpo.yaml"), "--model_name_or_path", str(weak_policy),
            "--output_dir", str(out), "--use_lora", "true", "--lora_r", "4", "--max_steps", "3",
            "--eval_generation", "false", "--max_eval_samples", "16", "--report_to", "none",
        ]
    )  # fmt: skip
    assert metrics["global_step"] == 3 and "eval_reward_accuracy" in metrics
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # step 1: policy == reference, loss = log 2
    assert (out / "language_model" / "adapter_config.json").is_file()
    assert (out / "connector.safetensors").is_file()
