"""Every recipe the distributed tests did not launch yet (stage 1, DPO, CLIP, MAE, wav2vec2) runs under DeepSpeed
ZeRO-3 on 2 CPU processes with a held-out set: weights really sharded, the main process evaluates the consolidated
save (no rank holds the whole model), and metrics.json holds the eval metrics. Stage 2, the reward model and PPO
are launched in test_deepspeed_launch.py. As few steps as the check needs: these launches are CPU heavy."""

from __future__ import annotations

import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.launching import assert_sharded, load_saved_vlm, losses, metrics, run_recipe, vlm_logits

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ops")]
CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
ZERO3 = "deepspeed_zero3.yaml"
SHORT = ["--max_steps", "2", "--logging_steps", "1", "--report_to", "none"]


@pytest.fixture
def tiny_parts() -> None:
    """Build the tiny tower and LLM here first: two ranks building them into an empty cache at once would race."""
    from vlmkit.models.model_paths import resolve_model_path

    for name in ("vlmkit-tiny/clip-vision", "vlmkit-tiny/llama"):
        resolve_model_path(name)


def test_zero3_stage1(digits_data, tiny_parts, tmp_path: Path):
    out = tmp_path / "stage1"
    log = run_recipe(
        "llava_stage1", "--config", str(CONFIGS / "digits_llava_stage1.yaml"), "--output_dir", str(out),
        "--language_model", "vlmkit-tiny/llama", "--per_device_train_batch_size", "4", *SHORT, config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    assert "DEEPSPEED over 2 processes" in log and len(losses(out)) == 2
    assert math.isfinite(m["eval_loss"]) and m["eval_loss"] > 0, m
    assert torch.isfinite(vlm_logits(load_saved_vlm(out))).all()  # consolidated, loads like any checkpoint


def test_zero3_dpo_with_lora(stage2_baseline: Path, tmp_path: Path):
    out = tmp_path / "dpo"
    run_recipe(
        "dpo", "--config", str(CONFIGS / "digits_dpo.yaml"), "--model_name_or_path", str(stage2_baseline),
        "--output_dir", str(out), "--use_lora", "true", "--lora_r", "4", "--rpo_alpha", "0", "--sft_baseline", "false",
        "--per_device_train_batch_size", "2", "--max_eval_samples", "4", *SHORT, config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    assert losses(out)[0] == pytest.approx(
        math.log(2), abs=1e-3
    )  # step 1: policy == reference (adapters off)
    for key in ("eval_loss", "eval_reward_accuracy", "eval_accuracy", "eval_accuracy_before"):
        assert math.isfinite(m[key]), (key, m)
    assert (out / "language_model" / "adapter_config.json").is_file()


def test_zero3_clip(digits_data, tmp_path: Path):
    from transformers import CLIPModel

    out = tmp_path / "clip"
    run_recipe(
        "clip_pretrain", "--config", str(CONFIGS / "digits_clip.yaml"), "--output_dir", str(out),
        "--per_device_train_batch_size", "8", "--max_eval_samples", "40", *SHORT, config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    assert 0.0 <= m["eval_zero_shot_accuracy"] <= 1.0, m
    clip = CLIPModel.from_pretrained(out)
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in clip.parameters())


def test_zero3_mae(digits_data, tmp_path: Path):
    out = tmp_path / "mae"
    run_recipe(
        "mae_pretrain", "--config", str(CONFIGS / "digits_mae.yaml"), "--output_dir", str(out),
        "--per_device_train_batch_size", "8", "--max_eval_samples", "40", *SHORT, config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    assert 0.0 <= m["eval_linear_probe_accuracy"] <= 1.0 and "eval_linear_probe_accuracy_random_init" in m, m


def _write_clips(folder: Path, name: str, n: int, samples: int = 3200, rate: int = 16000) -> str:
    """n tone-plus-noise clips labelled 0/1 by pitch, and their JSON list."""
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(samples) / rate
    records = []
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * (i % 2)) * t)
        x = x + 0.05 * np.random.default_rng(i).standard_normal(samples)
        with wave.open(str(folder / f"{name}_{i}.wav"), "wb") as f:
            f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
            f.writeframes((x * 32767).astype(np.int16).tobytes())
        records.append({"audio": f"{name}_{i}.wav", "label": i % 2})
    path = folder / f"{name}.json"
    path.write_text(json.dumps(records))
    return str(path)


def test_zero3_wav2vec2(tmp_path: Path):
    out = tmp_path / "wav2vec2"
    run_recipe(
        "wav2vec2_pretrain", "--config", str(CONFIGS / "spoken_digits_wav2vec2.yaml"), "--output_dir", str(out),
        "--data_path", _write_clips(tmp_path / "clips", "train", 8),
        "--eval_data_path", _write_clips(tmp_path / "clips", "eval", 6), "--audio_samples", "3200",
        "--mask_length", "2", "--num_negatives", "4", "--per_device_train_batch_size", "2", *SHORT,
        config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    assert 0.0 <= m["eval_linear_probe_accuracy"] <= 1.0 and m["eval_codebook_perplexity"] > 0, m


def test_zero3_grpo(stage2_baseline: Path, tmp_path: Path):
    out = tmp_path / "grpo"
    run_recipe(
        "grpo", "--config", str(CONFIGS / "digits_grpo.yaml"), "--model_name_or_path", str(stage2_baseline),
        "--output_dir", str(out), "--num_generations", "2", "--per_device_train_batch_size", "2",
        "--steps_per_generation", "1", "--num_iterations", "1", "--max_eval_samples", "4", "--sft_baseline", "false",
        *SHORT,
        config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)  # policy in one ZeRO-3 engine, the beta > 0 reference in its own
    assert m["global_step"] == 2 and len(losses(out)) == 2
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert abs(first["kl"]) < 1e-6  # the reference, built under zero.Init, equals the starting policy
    assert math.isfinite(m["eval_accuracy"]) and torch.isfinite(vlm_logits(load_saved_vlm(out))).all()


def test_zero3_lm_pretrain(tiny_parts, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lm"
    run_recipe(
        "lm_pretrain", "--config", str(CONFIGS / "digits_lm_pretrain.yaml"), "--output_dir", str(out),
        "--per_device_train_batch_size", "4", *SHORT, config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    assert math.isfinite(m["eval_perplexity"]) and m["eval_perplexity"] > 1, m
    lm = AutoModelForCausalLM.from_pretrained(out)  # consolidated: loads with plain transformers
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in lm.parameters())
