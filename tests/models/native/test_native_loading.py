"""Loading native checkpoints: what is one, and clear errors for what is not."""

from __future__ import annotations

import json
import shutil

import pytest

from vlmkit.models.native.loading import NativeModelError, check_native_config, is_native_vlm, load_native_vlm
from vlmkit.models.native.tiny import build_tiny_native
from vlmkit.models.tiny import build_tiny
from vlmkit.models.vlm import CONFIG_FILE


def test_native_checkpoint_is_recognised_and_loads():
    path = build_tiny_native("llava")
    assert is_native_vlm(path)
    model, processor = load_native_vlm(path)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.chat_template


def test_composite_checkpoint_is_not_native(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"modality": "image"}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert not is_native_vlm(tmp_path)
    with pytest.raises(NativeModelError, match="composite.*load_vlm"):
        load_native_vlm(tmp_path)


def test_text_only_architecture_is_named_with_what_to_do():
    path = build_tiny("llama")
    assert not is_native_vlm(path)
    with pytest.raises(NativeModelError, match=r"LlamaForCausalLM.*not an image-text model.*--vision_tower"):
        load_native_vlm(path)


def test_missing_config_is_named(tmp_path):
    with pytest.raises(NativeModelError, match="no config.json"):
        load_native_vlm(tmp_path)


def test_processor_without_chat_template_names_the_fix(tmp_path):
    path = shutil.copytree(build_tiny_native("llava"), tmp_path / "llava")
    (path / "chat_template.jinja").unlink()
    with pytest.raises(NativeModelError, match="no chat template.*chat_template.jinja"):
        load_native_vlm(path)


def test_remote_code_needs_the_flag(tmp_path):
    path = shutil.copytree(build_tiny_native("llava"), tmp_path / "llava")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageTextToText": "modeling_custom.CustomVLM"}
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(NativeModelError, match="trust_remote_code=True"):
        load_native_vlm(path)
    # With the flag the check lets it through (the code itself is then transformers' business).
    assert check_native_config(path, trust_remote_code=True)["auto_map"]
