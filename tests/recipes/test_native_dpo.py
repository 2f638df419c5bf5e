"""DPO on native transformers VLMs through the real recipe (`recipes/dpo.py`).

A few steps on 32 embedded digit preference pairs from a tiny native stand-in: with LoRA the reference is the
same model with its adapters off (the connector stays frozen so that this really is the start), without LoRA
a frozen copy. The saved policy reloads with plain transformers / peft and gives the run's held-out log-probs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vlmkit.data.embedded import resolve_data_path
from vlmkit.data.readers import read_dataset
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_native_checkpoint
from vlmkit.models.native.tiny import build_tiny_native
from vlmkit.rlhf.dpo import ReferencePolicy, evaluate_dpo
from vlmkit.training.native_preference import NativePreferenceCollator, NativePreferenceDataset


@pytest.fixture(scope="module")
def small_pairs(digits_data, tmp_path_factory) -> dict[str, str]:
    """32 training and 16 held-out digit preference pairs, and 16 held-out prompts with answers."""
    out = tmp_path_factory.mktemp("native_dpo")
    files = {}
    for name, source_name, n in (("train", "preference_train", 32), ("eval", "preference_eval", 16),
                                 ("prompts", "stage2_eval", 16)):  # fmt: skip
        source = Path(resolve_data_path(f"vlmkit-data/digits/{source_name}.json"))
        files[name] = str(out / f"{name}.json")
        Path(files[name]).write_text(json.dumps(json.loads(source.read_text())[:n]))
        files["images"] = str(source.parent)
    return files


@pytest.mark.slow
@pytest.mark.parametrize("family,mode", [("qwen2_vl", "lora"), ("llava", "full")])
def test_native_dpo_trains_against_its_start_and_reloads(recipe, small_pairs, family, mode, tmp_path):
    out = tmp_path / "dpo"
    lora = ["--use_lora", "true"] if mode == "lora" else []
    metrics = recipe("dpo").main([
        "--model_name_or_path", f"vlmkit-tiny/native-{family}", "--data_path", small_pairs["train"],
        "--eval_data_path", small_pairs["eval"], "--eval_prompts_path", small_pairs["prompts"],
        "--image_folder", small_pairs["images"], "--output_dir", str(out), "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none", *lora,
    ])  # fmt: skip
    assert {"eval_loss", "eval_reward_accuracy", "eval_accuracy", "eval_accuracy_before"} <= set(metrics)
    # at the start the policy is its reference: every implicit reward is 0, the loss log 2; 3 steps move it
    assert metrics["eval_loss"] != pytest.approx(0.6931, abs=1e-4)
    files = {p.name for p in out.iterdir()}
    if mode == "lora":
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
        assert all("lora_" in k for k in load_file(str(out / "adapter_model.safetensors")))
    else:
        assert "model.safetensors" in files

    model, processor = load_native_checkpoint(out)  # plain transformers (+ peft for the adapter)
    pairs = read_dataset(small_pairs["eval"], small_pairs["images"], format="preference")
    dataset = NativePreferenceDataset(pairs, NativeEncoder(processor, family))
    collate = NativePreferenceCollator(processor.tokenizer.pad_token_id, family)
    start, _ = load_native_checkpoint(build_tiny_native(family))
    reference = ReferencePolicy(model if mode == "lora" else start, adapters_off=mode == "lora")
    scores = evaluate_dpo(model, reference, dataset, collate, beta=0.1, batch_size=8)
    assert scores["logp_chosen"] == pytest.approx(metrics["eval_logp_chosen"], rel=1e-4)
    assert scores["loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)
