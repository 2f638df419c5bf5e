"""Stage 2 with LoRA and QLoRA on the embedded digits: held-out accuracy, the adapter directory, plain-peft reload
and merge.

The embedded default's tiny models: the random-init CLIP tower (16 patches) and the random-init Llama. The
connector stacks an image's 16 patch features into one LLM token (`--connector_downsample 16`), which the tiny
LLM learns to read in a few hundred steps. Its output layer starts with logits of about +-1, which adapters on
the other layers cannot scale up, so `lm_head` trains in full beside the LoRA adapters (`--lora_modules_to_save
lm_head`; a pretrained LLM needs no such thing: see the SmolLM2 test).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.cli import main as cli_main
from vlmkit.data.embedded import resolve_data_path
from vlmkit.data.readers import read_dataset
from vlmkit.data.sft_dataset import load_media_item
from vlmkit.data.tokenize import tokenize_prompt
from vlmkit.models.build import load_vlm

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = "400"


def stage2_argv(out: Path, *extra: str) -> list[str]:
    """The shipped LoRA config (recipes/configs/digits_llava_stage2_lora.yaml), evaluated on 200 held-out digits."""
    config = str(REPO_ROOT / "recipes" / "configs" / "digits_llava_stage2_lora.yaml")
    return [
        "--config",
        config,
        "--max_eval_samples",
        "200",
        "--report_to",
        "none",
        "--output_dir",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def lora_run(recipe, digits_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage2") / "lora"
    metrics = recipe("llava_stage2").main(stage2_argv(out))
    return out, metrics


@pytest.mark.slow
def test_lora_reaches_held_out_accuracy(lora_run):
    out, metrics = lora_run
    assert metrics["eval_accuracy"] >= 0.85, metrics
    assert json.loads((out / "metrics.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]


@pytest.mark.slow
def test_adapter_directory_holds_only_adapter_connector_and_processor(lora_run):
    out, _ = lora_run
    assert not (out / "encoder").exists()  # the frozen encoder is referenced by path
    lm_files = {p.name for p in (out / "language_model").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= lm_files
    assert not lm_files & {"model.safetensors", "pytorch_model.bin", "config.json"}
    adapter = load_file(str(out / "language_model" / "adapter_model.safetensors"))
    # LoRA matrices and the fully trained lm_head: no other LLM weight
    assert adapter and all("lora_" in key or "lm_head" in key for key in adapter), sorted(adapter)
    assert any("lora_A" in key for key in adapter) and not any(
        "layers.0.mlp.up_proj.weight" in k for k in adapter
    )
    assert (out / "connector.safetensors").is_file() and (out / "tokenizer.json").is_file()
    # Sizes: the adapter (LoRA + the tiny LLM's lm_head, which trains in full here) is smaller than the LLM.
    adapter_bytes = (out / "language_model" / "adapter_model.safetensors").stat().st_size
    llm_bytes = sum(p.stat().st_size for p in Path(config_base(out)).glob("*.safetensors"))
    assert adapter_bytes < llm_bytes, (adapter_bytes, llm_bytes)
    config = json.loads((out / "vlmkit_config.json").read_text())
    assert Path(config["encoder_name_or_path"]).is_absolute()


def config_base(out: Path) -> str:
    """The base LLM directory the adapter was trained on (from its adapter_config.json)."""
    return json.loads((out / "language_model" / "adapter_config.json").read_text())["base_model_name_or_path"]


def _prompt_inputs(processor):
    """(input_ids (1, T), attention mask, pixel values) for one held-out digit."""
    sample = read_dataset(resolve_data_path("vlmkit-data/digits/stage2_eval.json"))[0]
    ids, _ = tokenize_prompt(sample, processor.tokenizer, modality="image", num_media_tokens=1)
    image = load_media_item(sample.images[0], modality="image", source="eval", index=0)
    input_ids = torch.tensor([ids])
    return input_ids, torch.ones_like(input_ids), processor.process_media([image])


@pytest.mark.slow
def test_adapter_reloads_with_plain_peft_and_merges_to_the_same_logits(lora_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, CLIPVisionModel

    out, _ = lora_run
    model, processor = load_vlm(str(out))
    model.eval()
    input_ids, mask, pixels = _prompt_inputs(processor)
    with torch.no_grad():
        expected = model(input_ids, mask, pixels).logits

    # Plain transformers + peft + safetensors, from the files alone.
    config = json.loads((out / "vlmkit_config.json").read_text())
    base_path = json.loads((out / "language_model" / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ]
    lm = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_path), out / "language_model"
    ).eval()
    encoder = CLIPVisionModel.from_pretrained(config["encoder_name_or_path"]).eval()
    w = load_file(str(out / "connector.safetensors"))
    with torch.no_grad():
        features = encoder(pixels, output_hidden_states=True).hidden_states[config["feature_layer"]][:, 1:]
        # the connector's token stacking: 16 patch features side by side make one LLM token
        features = features.reshape(1, -1, features.shape[-1] * config["connector_kwargs"]["downsample"])
        hidden = torch.nn.functional.gelu(features @ w["linear_1.weight"].T + w["linear_1.bias"])
        projected = hidden @ w["linear_2.weight"].T + w["linear_2.bias"]
        is_image = input_ids == config["media_token_id"]
        embeds = lm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        embeds[is_image] = projected.reshape(-1, projected.shape[-1])
        plain = lm(inputs_embeds=embeds, attention_mask=mask).logits
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)

    assert cli_main(["merge", str(out), str(tmp_path / "merged")]) == 0
    merged, _ = load_vlm(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(
            merged.eval()(input_ids, mask, pixels).logits, expected, atol=1e-5, rtol=1e-5
        )


@pytest.mark.slow
def test_qlora_4bit_trains_and_reaches_held_out_accuracy(recipe, digits_data, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes: pip install 'vlmkit[qlora]'")
    out = tmp_path / "qlora"
    metrics = recipe("llava_stage2").main(stage2_argv(out, "--load_in_4bit", "true"))
    assert metrics["eval_accuracy"] >= 0.80, metrics
    assert (out / "language_model" / "adapter_model.safetensors").is_file()
    assert not (out / "language_model" / "model.safetensors").exists()


def test_qlora_without_bitsandbytes_fails_before_any_weights_load(recipe, digits_data, tmp_path, monkeypatch):
    import transformers

    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "bitsandbytes" else real_find_spec(name, *args, **kwargs)

    def no_loading(*args, **kwargs):
        raise AssertionError("LLM weights were loaded before the bitsandbytes check")

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(RuntimeError, match=r"load_in_4bit needs bitsandbytes: pip install 'vlmkit\[qlora\]'"):
        recipe("llava_stage2").main(stage2_argv(tmp_path / "q", "--load_in_4bit", "true"))
    assert not (tmp_path / "q" / "train_log.jsonl").exists()
