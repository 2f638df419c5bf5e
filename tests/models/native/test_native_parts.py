"""Which parameters train: vision tower frozen, connector in full, language model in full or through LoRA."""

from __future__ import annotations

import pytest

from vlmkit.models.native.loading import load_native_vlm
from vlmkit.models.native.tiny import NATIVE_FAMILIES, build_tiny_native
from vlmkit.training.native_parts import apply_native_lora, native_parts, set_native_trainable

CONNECTORS = {"llava": "model.multi_modal_projector", "qwen2_vl": "model.visual.merger",
              "idefics3": "model.connector"}  # fmt: skip


@pytest.mark.parametrize("family", sorted(CONNECTORS))
def test_parts_are_found(family):
    model, _ = load_native_vlm(build_tiny_native(family))
    parts = native_parts(model)
    assert parts.connector == CONNECTORS[family]
    assert parts.language_model in ("model.language_model", "model.text_model")


@pytest.mark.parametrize(
    "family", ["llava", "qwen2_vl", "llava_next"]
)  # llava_next: its image_newline trains
def test_full_fine_tuning_freezes_only_the_tower(family):
    model, _ = load_native_vlm(build_tiny_native(family))
    set_native_trainable(model)
    parts = native_parts(model)
    for name, p in model.named_parameters():
        in_connector = name.startswith(parts.connector + ".")
        in_tower = name.startswith(parts.vision + ".") and not in_connector
        assert p.requires_grad == (not in_tower), name


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_lora_trains_adapters_connector_and_extra_modules_only(family):
    model, _ = load_native_vlm(build_tiny_native(family))
    connector = native_parts(model).connector
    peft_model = apply_native_lora(model, r=4, alpha=8, modules_to_save=["lm_head"])
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and ".language_model." in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    assert any(connector.split(".")[-1] + ".modules_to_save" in n for n in trainable)
    assert any("lm_head.modules_to_save" in n for n in trainable)
    assert not any("lora_" in n and (".vision_tower." in n or ".visual.blocks" in n) for n in trainable)


@pytest.mark.slow
def test_qlora_loads_in_4bit_and_trains_the_adapters():
    """4-bit base (bitsandbytes nf4, CPU) + LoRA: one backward gives gradients to the adapters only."""
    from vlmkit.data.records import Sample, Turn
    from vlmkit.models.native.collate import NativeCollator
    from vlmkit.models.native.encoding import NativeEncoder
    from vlmkit.training.native_sft import native_sft_loss

    pytest.importorskip("bitsandbytes")
    model, processor = load_native_vlm(build_tiny_native("llava"), load_in_4bit=True)
    quantized = {n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"}
    assert quantized and all(n.startswith("model.language_model.") for n in quantized), quantized
    peft_model = apply_native_lora(model, r=4, alpha=8)
    sample = Sample([Turn("user", "Say a digit."), Turn("assistant", "seven")])
    batch = NativeCollator(processor.tokenizer.pad_token_id, "llava")(
        [NativeEncoder(processor, "llava").encode(sample)]
    )
    loss, _ = native_sft_loss(peft_model, batch)
    loss.backward()
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_B" in n for n in with_grad)
    assert all("lora_" in n or "modules_to_save" in n for n in with_grad), with_grad


@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_lora_with_a_tuned_tower_trains_and_saves_a_copy_of_the_whole_tower(family, tmp_path):
    """--use_lora --tune_vision_tower: every tower weight trains as a peft copy (saved with the adapter; the
    adapters-off model keeps the original), Qwen2-VL's merger inside the tower counted as the connector."""
    from safetensors.torch import load_file

    model, _ = load_native_vlm(build_tiny_native(family))
    parts = native_parts(model)
    tower = {n for n, _ in model.named_parameters() if n.startswith(parts.vision + ".")}
    tower -= {n for n in tower if n.startswith(parts.connector + ".")}
    peft_model = apply_native_lora(model, r=4, alpha=8, tune_vision_tower=True, tune_connector=False)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    copies = {n.replace("base_model.model.", "", 1).replace(".modules_to_save.default", "") for n in trainable
              if "modules_to_save" in n}  # fmt: skip
    assert copies == tower
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    peft_model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert sum(parts.vision + "." in k for k in saved) == len(tower)


def test_a_tuned_tower_needs_an_adapter_that_keeps_it():
    model, _ = load_native_vlm(build_tiny_native("llava"))
    peft_model = apply_native_lora(model, r=4, alpha=8)
    with pytest.raises(ValueError, match="does not keep a trainable copy of the vision tower"):
        set_native_trainable(peft_model, tune_vision_tower=True)
