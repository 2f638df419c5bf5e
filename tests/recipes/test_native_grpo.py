"""GRPO on native transformers VLMs through the real recipe (`recipes/grpo.py`), with the verifiable digit reward
on embedded digits prompts: full weights with a frozen reference copy, LoRA with the adapters-off reference and
none at all with beta 0. The saved policy (model or adapter) reloads with plain transformers / peft and answers
as the trained policy did. Log-prob parity of native rollouts: tests/rlhf/test_native_rollout.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vlmkit.data.embedded import resolve_data_path
from vlmkit.data.readers import read_dataset
from vlmkit.eval.answers import generate_answers
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_native_checkpoint


def brevity(completions, references, prompts):
    """Shorter is better: a reward that differs within a group even where the untrained policy gets no digit right."""
    return [-len(c) / 10 for c in completions]


@pytest.fixture(scope="module")
def small_prompts(digits_data, tmp_path_factory) -> dict[str, str]:
    """16 training and 8 held-out digit prompts (with their answers)."""
    out = tmp_path_factory.mktemp("native_grpo")
    files = {}
    for name, source_name, n in (("train", "prompts_train", 16), ("eval", "prompts_eval", 8)):
        source = Path(resolve_data_path(f"vlmkit-data/digits/{source_name}.json"))
        files[name] = str(out / f"{name}.json")
        Path(files[name]).write_text(json.dumps(json.loads(source.read_text())[:n]))
        files["images"] = str(source.parent)
    return files


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,mode,beta", [("qwen2_vl", "lora", "0.04"), ("qwen2_vl", "full", "0.04"), ("llava", "full", "0.0")]
)
def test_native_grpo_trains_saves_and_reloads(recipe, small_prompts, family, mode, beta, tmp_path):
    out = tmp_path / "grpo"
    lora = ["--use_lora", "true"] if mode == "lora" else []
    metrics = recipe("grpo").main([
        "--model_name_or_path", f"vlmkit-tiny/native-{family}", "--reward_funcs", f"digit_match,{__name__}:brevity",
        "--data_path", small_prompts["train"], "--eval_data_path", small_prompts["eval"],
        "--image_folder", small_prompts["images"], "--output_dir", str(out), "--max_steps", "2",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_new_tokens", "3",
        "--learning_rate", "1e-3", "--beta", beta, "--report_to", "none", *lora,
    ])  # fmt: skip
    assert metrics["global_step"] == 2 and metrics["bad_steps"] == 0
    assert {"eval_accuracy", "eval_accuracy_before", "eval_reward", "eval_reward_before"} <= set(metrics)
    # KL to the start: reported (and moved) with a reference; beta 0 without LoRA loads none
    assert ("eval_kl" in metrics) == (beta != "0.0" or mode == "lora")
    if "eval_kl" in metrics:
        assert metrics["eval_kl"] > 0.0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert all({"reward_digit_match", "reward_brevity"} <= set(r) for r in log)
    files = {p.name for p in out.iterdir()}
    if mode == "lora":
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
        assert all("lora_" in k for k in load_file(str(out / "adapter_model.safetensors")))
    else:
        assert "model.safetensors" in files
    # plain transformers (+ peft) reload the policy, which answers the held-out prompts as the run saved them
    model, processor = load_native_checkpoint(out)
    shown = json.loads((out / "eval_examples.json").read_text())
    prompts = read_dataset(small_prompts["eval"], small_prompts["images"])[: len(shown)]
    answers = [
        a for a, _ in generate_answers(model, NativeEncoder(processor, family), prompts, max_new_tokens=3)
    ]
    assert answers == [row["prediction"] for row in shown]


@pytest.mark.slow
def test_native_grpo_resumes_exactly(recipe, small_prompts, tmp_path):
    """Steps 3-4 after resuming from checkpoint-2 match the uninterrupted run: rollouts, losses, adapter."""
    common = [
        "--model_name_or_path", "vlmkit-tiny/native-qwen2_vl", "--use_lora", "true",
        "--reward_funcs", f"{__name__}:brevity", "--data_path", small_prompts["train"],
        "--image_folder", small_prompts["images"], "--eval_data_path", "none", "--max_steps", "4",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_new_tokens", "3",
        "--num_iterations", "2", "--learning_rate", "1e-3", "--report_to", "none", "--seed", "5",
    ]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    recipe("grpo").main(common + ["--output_dir", str(full), "--save_steps", "2"])
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    recipe("grpo").main(common + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    log_full = [json.loads(x) for x in (full / "train_log.jsonl").read_text().splitlines()]
    log_resumed = [json.loads(x) for x in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_resumed] == [3, 4]
    assert any(r["loss"] != 0.0 for r in log_full)  # it learned something worth comparing
    for key in ("reward_mean", "kl", "response_length", "loss", "entropy"):
        for a, b in zip(log_full[2:], log_resumed):
            assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    a, b = (load_file(str(d / "adapter_model.safetensors")) for d in (full, resumed))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
