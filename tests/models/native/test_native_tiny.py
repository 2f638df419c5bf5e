"""Tiny stand-ins of every native family load with plain transformers and run forward and generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.models.native.loading import load_processor
from vlmkit.models.native.templates import END_OF_TURN
from vlmkit.models.native.tiny import NATIVE_FAMILIES, build_tiny_native

EXPECTED_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
}


def test_every_required_family_is_built():
    assert set(EXPECTED_CLASSES) <= set(NATIVE_FAMILIES)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(EXPECTED_CLASSES))
def test_stand_in_loads_with_plain_transformers(family, native_vlm):
    from transformers import AutoModelForImageTextToText

    model, processor, path = native_vlm(family)
    assert type(model).__name__ == EXPECTED_CLASSES[family]
    reloaded = AutoModelForImageTextToText.from_pretrained(path)
    assert type(reloaded).__name__ == EXPECTED_CLASSES[family]
    assert json.loads((path / "config.json").read_text())["model_type"] == family
    # The embeddings cover every token of the tokenizer users get from the directory.
    assert model.get_input_embeddings().num_embeddings >= len(processor.tokenizer)
    assert END_OF_TURN[family] in processor.tokenizer.get_vocab()
    assert (path / "chat_template.jinja").is_file()
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What digit?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_build_is_cached_and_atomic(tmp_path):
    out = build_tiny_native("llava", tmp_path / "llava")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_native("llava", tmp_path / "llava") == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_auto_processor_round_trip_keeps_template_and_tokens(tmp_path):
    from transformers import AutoProcessor

    out = build_tiny_native("gemma3", tmp_path / "gemma3")
    processor = AutoProcessor.from_pretrained(out)
    assert type(processor).__name__ == "Gemma3Processor"
    assert processor.chat_template and "<start_of_turn>" in processor.chat_template
    assert processor.tokenizer.boi_token == "<start_of_image>"


def test_qwen2_vl_processor_loads_image_only_without_torchvision():
    out = build_tiny_native("qwen2_vl")
    processor = load_processor(out)
    assert type(processor).__name__ == "Qwen2VLProcessor"
    assert processor.image_processor.patch_size == 16
    assert "<|vision_start|>" in processor.chat_template


def test_unknown_family_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid: llava"):
        build_tiny_native("blip9", tmp_path / "x")


def test_tiny_native_names_resolve_to_built_directories():
    from vlmkit.models.native.tiny import resolve_native_model_path

    assert resolve_native_model_path("vlmkit-tiny/native-llava") == str(build_tiny_native("llava"))
    assert resolve_native_model_path("Qwen/Qwen2-VL-2B-Instruct") == "Qwen/Qwen2-VL-2B-Instruct"
