"""Which kind of model a path names (composite or native), and LoRA targets on a native model's LLM only."""

from __future__ import annotations

import json

import pytest

from vlmkit.models.native.loading import load_native_vlm
from vlmkit.models.native.tiny import build_tiny_native
from vlmkit.models.vlm import CONFIG_FILE
from vlmkit.training.native_parts import lora_target_names
from vlmkit.training.vlm_kinds import COMPOSITE, NATIVE, kind_of_model, kind_of_path


def test_kind_of_path(tmp_path):
    composite = tmp_path / "composite"
    composite.mkdir()
    (composite / CONFIG_FILE).write_text("{}")
    native = build_tiny_native("llava")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(native)}))
    assert kind_of_path(None) is COMPOSITE  # built from --vision_tower/--language_model
    assert kind_of_path(str(composite)) is COMPOSITE
    assert kind_of_path(str(native)) is NATIVE
    assert kind_of_path("vlmkit-tiny/native-llava") is NATIVE
    assert kind_of_path(str(adapter)) is NATIVE
    assert kind_of_path("Qwen/Qwen2.5-VL-3B-Instruct") is NATIVE  # a Hub name: transformers loads it
    assert kind_of_model(load_native_vlm(native)[0]) is NATIVE


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_lora_targets_are_the_language_models_layers(family):
    model, _ = load_native_vlm(build_tiny_native(family))
    every = lora_target_names(model, ["all-linear"])
    assert every and all(".language_model." in n for n in every)
    chosen = lora_target_names(model, ["q_proj", "v_proj"])
    assert len(chosen) == 2 * model.config.get_text_config().num_hidden_layers  # not the tower's q_proj
    assert set(chosen) < set(every)
    with pytest.raises(ValueError, match="match no linear layer of the language model; valid: all-linear"):
        lora_target_names(model, ["qkv"])
