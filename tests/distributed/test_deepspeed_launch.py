"""The shipped DeepSpeed configs (ZeRO-2, ZeRO-3, ZeRO-3 with CPU offload) launched with `accelerate launch` on
2 CPU processes really run distributed, follow the single-process loss curve, and save ordinary from_pretrained
models; ZeRO-3 resumes from its checkpoint and also runs the reward-model and PPO recipes.

On CPU, DeepSpeed runs over gloo (make_accelerator asks for it) with its own CPU accelerator; `mixed_precision:
bf16` in the configs falls back to fp32 (the recipes resolve it for the device). What only a GPU can check is
listed in accelerate_configs/README.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers.launching import (
    EVAL,
    STAGE2,
    VLM_FILES,
    assert_same_curve,
    assert_same_model,
    assert_sharded,
    assert_weights_as_saved,
    load_saved_vlm,
    losses,
    metrics,
    run_recipe,
    vlm_logits,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ops")]
HALF_BATCH = ["--per_device_train_batch_size", "4"]


def test_zero2_matches_one_process(stage2_baseline: Path, tmp_path: Path):
    out = tmp_path / "zero2"
    log = run_recipe(
        "llava_stage2", *STAGE2, *HALF_BATCH, "--output_dir", str(out), config_file="deepspeed_zero2.yaml"
    )
    m = metrics(out)
    assert m["world_size"] == 2 and "DEEPSPEED over 2 processes" in log
    assert m["parameters_per_rank_max"] == m["parameters"]  # ZeRO-2 shards optimizer state, not the weights
    assert_same_curve(out, stage2_baseline)
    assert_same_model(out, stage2_baseline)


def test_zero3_shards_saves_consolidated_evaluates_and_resumes(stage2_baseline: Path, tmp_path: Path):
    out = tmp_path / "zero3"
    args = [*STAGE2, *HALF_BATCH, "--output_dir", str(out), "--save_steps", "2"]
    log = run_recipe("llava_stage2", *args, *EVAL, config_file="deepspeed_zero3.yaml")
    m = metrics(out)
    assert_sharded(m)  # partitioned while built (zero.Init) and trained
    assert "DEEPSPEED over 2 processes" in log and "(sharded)" in log
    assert_same_curve(out, stage2_baseline)
    # The main process evaluated the consolidated model it had just saved (no rank holds the whole one).
    assert math.isfinite(m["eval_loss"]) and 0.0 <= m["eval_accuracy"] <= 1.0
    logits = assert_same_model(out, stage2_baseline)
    uninterrupted = losses(out)

    # Resume from the step-2 ZeRO-3 checkpoint (partitioned weights + optimizer state): the same steps 3-4.
    assert (out / "checkpoint-2" / "checkpoint_complete.json").is_file()
    log = run_recipe(
        "llava_stage2", *args, "--resume_from_checkpoint", "latest", config_file="deepspeed_zero3.yaml"
    )
    assert "resumed from" in log and "checkpoint-2 at step 2" in log
    resumed = losses(out)
    assert len(resumed) == len(uninterrupted)
    assert max(abs(a - b) for a, b in zip(resumed, uninterrupted)) < 1e-6, (resumed, uninterrupted)
    assert torch.allclose(vlm_logits(load_saved_vlm(out)), logits, atol=1e-5)


def test_zero3_offload_matches_one_process(stage2_baseline: Path, tmp_path: Path):
    out = tmp_path / "zero3_offload"
    run_recipe(
        "llava_stage2",
        *STAGE2,
        *HALF_BATCH,
        "--output_dir",
        str(out),
        config_file="deepspeed_zero3_offload.yaml",
    )
    assert_sharded(metrics(out))
    assert_same_curve(out, stage2_baseline)
    assert_same_model(out, stage2_baseline)


def test_zero3_reward_model(stage2_baseline: Path, tmp_path: Path):
    from vlmkit.rlhf.reward_model import load_reward_model

    out = tmp_path / "reward"
    run_recipe(
        "reward_model", "--model_name_or_path", str(stage2_baseline), "--output_dir", str(out),
        "--data_path", "vlmkit-data/digits/preference_train.json",
        "--eval_data_path", "vlmkit-data/digits/preference_eval.json", "--max_eval_samples", "8",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--report_to", "none",
        config_file="deepspeed_zero3.yaml",
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    assert m["global_step"] == 2 and len(losses(out)) == 2
    assert 0.0 <= m["eval_pairwise_accuracy"] <= 1.0
    model, _ = load_reward_model(out)
    files = {pattern: f"vlm.{prefix}" for pattern, prefix in VLM_FILES.items()}
    assert_weights_as_saved(model, out, {**files, "score_head.safetensors": "score_head."})


def test_zero3_ppo(stage2_baseline: Path, tmp_path: Path):
    from vlmkit.rlhf.value_model import load_value_head

    out = tmp_path / "ppo"
    run_recipe(
        "ppo", "--model_name_or_path", str(stage2_baseline), "--output_dir", str(out),
        "--reward_function", "vlmkit.rlhf.rewards:digit_match", "--value_model", "policy_head",
        "--data_path", "vlmkit-data/digits/prompts_train.json",
        "--eval_data_path", "vlmkit-data/digits/prompts_eval.json", "--max_eval_samples", "4",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_ppo_epochs", "1", "--max_new_tokens", "4",
        "--report_to", "none", config_file="deepspeed_zero3.yaml",
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)  # policy + value head in one ZeRO-3 engine
    assert m["global_step"] == 2 and len(losses(out)) == 2
    # The frozen reference (built again under zero.Init, its own inference engine) equals the starting policy.
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert abs(first["kl"]) < 1e-6
    assert torch.isfinite(vlm_logits(load_saved_vlm(out))).all()
    assert load_value_head(out).weight.shape == (1, 64)
