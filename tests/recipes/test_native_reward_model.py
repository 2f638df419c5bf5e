"""Reward model on native transformers VLMs through the real recipe (`recipes/reward_model.py`).

A few steps on 48 embedded digit preference pairs from a tiny native stand-in, LoRA and full; the saved reward
model (VLM checkpoint or adapter + score head + processor files) reloads and gives the run's held-out scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vlmkit.data.embedded import resolve_data_path
from vlmkit.data.readers import read_dataset
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_processor
from vlmkit.rlhf.native_reward import NativeRewardModel
from vlmkit.rlhf.reward_model import evaluate_pairs, load_reward_model
from vlmkit.training.native_preference import NativePreferenceCollator, NativePreferenceDataset


@pytest.fixture(scope="module")
def small_pairs(digits_data, tmp_path_factory) -> dict[str, str]:
    """48 training and 16 held-out digit preference pairs (images in the embedded dataset's folder)."""
    out = tmp_path_factory.mktemp("native_pairs")
    files = {}
    for split, n in (("train", 48), ("eval", 16)):
        source = Path(resolve_data_path(f"vlmkit-data/digits/preference_{split}.json"))
        files[split] = str(out / f"{split}.json")
        Path(files[split]).write_text(json.dumps(json.loads(source.read_text())[:n]))
        files["images"] = str(source.parent)
    return files


@pytest.mark.slow
@pytest.mark.parametrize("family,mode", [("qwen2_vl", "lora"), ("llava", "full")])
def test_native_reward_model_trains_saves_and_reloads(recipe, small_pairs, family, mode, tmp_path):
    out = tmp_path / "rm"
    lora = ["--use_lora", "true"] if mode == "lora" else []
    metrics = recipe("reward_model").main([
        "--model_name_or_path", f"vlmkit-tiny/native-{family}", "--data_path", small_pairs["train"],
        "--eval_data_path", small_pairs["eval"], "--image_folder", small_pairs["images"],
        "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--report_to", "none", *lora,
    ])  # fmt: skip
    assert {"eval_pairwise_accuracy", "eval_mean_margin", "eval_loss"} <= set(metrics)
    files = {p.name for p in out.iterdir()}
    weights = "adapter_model.safetensors" if mode == "lora" else "model.safetensors"
    assert {weights, "score_head.safetensors", "reward_model.json", "tokenizer.json"} <= files
    if mode == "lora":
        assert not files & {"model.safetensors", "config.json"}
        assert all("lora_" in k for k in load_file(str(out / weights))), "connector frozen under LoRA"
    meta = (out / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in meta

    model, encoder = load_reward_model(out)
    assert isinstance(model, NativeRewardModel) and isinstance(encoder, NativeEncoder)
    pairs = read_dataset(small_pairs["eval"], small_pairs["images"], format="preference")
    dataset = NativePreferenceDataset(pairs, NativeEncoder(load_processor(out), family))
    collate = NativePreferenceCollator(encoder.tokenizer.pad_token_id, family)
    scores = evaluate_pairs(model, dataset, collate, batch_size=8)
    assert scores["mean_margin"] == pytest.approx(metrics["eval_mean_margin"], rel=1e-4, abs=1e-6)
    assert scores["pairwise_accuracy"] == metrics["eval_pairwise_accuracy"]
