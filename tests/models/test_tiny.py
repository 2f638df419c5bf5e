"""The tiny world: offline checkpoints of the real architectures, loaded with plain `from_pretrained`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.tiny import (
    SPECIAL_TOKENS,
    TINY_MODELS,
    build_tiny,
    build_tokenizer,
    tiny_cache_dir,
)


def test_names_resolve_into_the_cache_dir_and_are_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMKIT_TINY_DIR", str(tmp_path / "tiny"))
    assert tiny_cache_dir() == tmp_path / "tiny"
    path = Path(resolve_model_path("vlmkit-tiny/clip-vision"))
    assert path == tmp_path / "tiny" / "clip-vision"
    assert (path / ".complete").is_file() and (path / "config.json").is_file()
    stamp = os.stat(path / "model.safetensors").st_mtime_ns
    assert resolve_model_path("vlmkit-tiny/clip-vision") == str(path)
    assert os.stat(path / "model.safetensors").st_mtime_ns == stamp  # not rebuilt
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_other_names_pass_through():
    assert resolve_model_path("openai/clip-vit-large-patch14") == "openai/clip-vit-large-patch14"
    assert resolve_model_path("/some/local/dir") == "/some/local/dir"
    assert resolve_model_path(None) is None


def test_unknown_tiny_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        resolve_model_path("vlmkit-tiny/gpt5")
    assert "gpt5" in str(err.value)
    assert all(name in str(err.value) for name in TINY_MODELS)


def test_builds_are_deterministic(tmp_path):
    a = load_file(str(build_tiny("siglip-vision", tmp_path / "a") / "model.safetensors"))
    b = load_file(str(build_tiny("siglip-vision", tmp_path / "b") / "model.safetensors"))
    c = load_file(str(build_tiny("siglip-vision", tmp_path / "c", seed=1) / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_tokenizer_chat_template_and_special_tokens():
    tok = build_tokenizer()
    for special in SPECIAL_TOKENS:
        ids = tok(special, add_special_tokens=False)["input_ids"]
        assert ids == [tok.convert_tokens_to_ids(special)], special
    assert (tok.pad_token, tok.eos_token) == ("<|pad|>", "<|im_end|>")
    messages = [{"role": "user", "content": "What digit is this?"}, {"role": "assistant", "content": "7"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nWhat digit is this?<|im_end|>\n<|im_start|>assistant\n7<|im_end|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)
    out = tok.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == "7<|im_end|>"
    assert tok.decode(tok("héllo 数字 ✓", add_special_tokens=False)["input_ids"]) == "héllo 数字 ✓"


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_llms_load_with_their_tokenizer(name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(f"vlmkit-tiny/{name}")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == name
    assert model.get_input_embeddings().num_embeddings == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert tok.chat_template == build_tokenizer().chat_template
    assert tok.convert_tokens_to_ids("<image>") == build_tokenizer().convert_tokens_to_ids("<image>")
    ids = torch.tensor([tok("What digit is this?", add_special_tokens=False)["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))


@pytest.mark.parametrize(
    "name, model_type, modality",
    [("clip-vision", "clip_vision_model", "image"), ("siglip-vision", "siglip_vision_model", "image"),
     ("wav2vec2", "wav2vec2", "audio")],
)  # fmt: skip
def test_encoders_and_their_processors_load(name, model_type, modality):
    from vlmkit.models.encoders import load_encoder
    from vlmkit.models.processor import load_media_processor

    path = resolve_model_path(f"vlmkit-tiny/{name}")
    encoder = load_encoder(path)
    assert encoder.config.model_type == model_type
    processor = load_media_processor(path, modality)
    if modality == "image":
        from PIL import Image

        pixels = processor(images=[Image.new("RGB", (50, 20))], return_tensors="pt")["pixel_values"]
        assert pixels.shape == (1, 3, encoder.config.image_size, encoder.config.image_size)
    else:
        assert processor.sampling_rate == 16000
