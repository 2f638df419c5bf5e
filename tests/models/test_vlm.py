"""The VLM: media scatter, forward-path invariants, save/load round trips and stage-1 connector loading."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.config.recipes import Stage2Config
from vlmkit.models.build import apply_lora, build_vlm, load_vlm
from vlmkit.models.encoders import encode
from vlmkit.models.vlm import CONNECTOR_FILE, VLM
from vlmkit.training.freeze import set_trainable

PARTS = dict(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")


def _build(**overrides):
    cfg = Stage2Config(**{**PARTS, **overrides})
    return build_vlm(cfg, cfg)


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    return _build()


def _pixels(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _ids(processor, layout: list[list[str | int]]) -> torch.Tensor:
    """Rows of token ids where "img" expands to one media block; rows must have equal length."""
    m = processor.spec.num_media_tokens
    rows = []
    for row in layout:
        ids = []
        for x in row:
            ids.extend([processor.media_token_id] * m if x == "img" else [x])
        rows.append(ids)
    return torch.tensor(rows)


@torch.no_grad()
def test_media_features_land_exactly_on_the_placeholders(vlm):
    model, processor = vlm
    model.eval()
    m = processor.spec.num_media_tokens
    assert m == 16  # 32x32 image, 8x8 patches, CLS dropped
    pad = processor.tokenizer.pad_token_id
    input_ids = _ids(processor, [[10, "img", 11, 12, "img", 13], [pad] * 15 + [20, 21, "img", 22, 23, 24]])
    pixels = _pixels(3)
    embeds = model.embed(input_ids, pixels)
    projected = model.connector(encode(model.encoder, pixels, -2))  # (3, m, D) in placeholder order
    table = model.language_model.get_input_embeddings().weight
    assert torch.allclose(embeds[0, 1 : 1 + m], projected[0])
    assert torch.allclose(embeds[0, 3 + m : 3 + 2 * m], projected[1])
    assert torch.allclose(embeds[1, 17 : 17 + m], projected[2])
    text_mask = input_ids != processor.media_token_id
    assert torch.allclose(embeds[text_mask], table[input_ids[text_mask]])
    # The logits at text positions after the image depend on the image; before it they do not.
    other = model(input_ids=input_ids, media=_pixels(3, seed=1)).logits
    logits = model(input_ids=input_ids, media=pixels).logits
    assert torch.allclose(logits[:, 0], other[:, 0], atol=1e-5)
    assert not torch.allclose(logits[0, -1], other[0, -1], atol=1e-4)


@torch.no_grad()
def test_placeholder_and_media_count_mismatch_raises(vlm):
    model, processor = vlm
    model.eval()
    input_ids = _ids(processor, [[11, "img", 12, "img", 13]])
    with pytest.raises(ValueError, match="media token count mismatch: 32 placeholder positions"):
        model.embed(input_ids, _pixels(1))
    with pytest.raises(ValueError, match="media token count mismatch"):
        model.embed(input_ids, _pixels(3))
    with pytest.raises(ValueError, match="placeholder tokens but no media"):
        model.embed(input_ids, None)


@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_batch_without_media_still_touches_the_connector_in_training(stage):
    model, processor = _build()
    set_trainable(model, stage, log=False)
    model.train()
    out = model(input_ids=torch.tensor([[5, 6, 7, 8]]), attention_mask=torch.ones(1, 4, dtype=torch.long))
    out.logits.sum().backward()
    for name, p in model.connector.named_parameters():
        assert p.grad is not None, f"connector.{name} got no gradient: ranks would diverge under DDP"
        assert torch.count_nonzero(p.grad) == 0  # touched, not changed
    assert all(p.grad is None for p in model.encoder.parameters())


def _logits(model, processor, seed=0):
    ids = _ids(processor, [[1, 30, "img", 31, 32, 33]])
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, media=_pixels(1, seed)).logits


def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def test_full_model_round_trip_gives_identical_logits(tmp_path):
    model, processor = _build()
    _perturb(model.connector, 1)  # not the initialisation anyone could reproduce
    before = _logits(model, processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "encoder" / "config.json").is_file()
    assert (tmp_path / "language_model" / "model.safetensors").is_file()
    assert (tmp_path / CONNECTOR_FILE).is_file()
    loaded, loaded_processor = load_vlm(str(tmp_path))
    assert loaded.config.num_media_tokens == model.config.num_media_tokens
    assert loaded_processor.spec == processor.spec
    assert torch.equal(_logits(loaded, loaded_processor), before)


def test_lora_adapter_round_trip_without_encoder_dir(tmp_path):
    model, processor = _build(use_lora=True, lora_r=4, lora_alpha=8)
    assert model.is_peft
    set_trainable(model, "instruct", log=False)
    lora_params = [p for n, p in model.language_model.named_parameters() if "lora_" in n]
    assert lora_params
    with torch.no_grad():  # lora_B starts at zero; make the adapter matter
        for p in lora_params:
            p.add_(torch.randn_like(p) * 0.1)
    _perturb(model.connector, 2)
    before = _logits(model, processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / "encoder").exists()
    assert (tmp_path / "language_model" / "adapter_config.json").is_file()
    assert not (tmp_path / "language_model" / "model.safetensors").exists()
    saved_config = json.loads((tmp_path / "vlmkit_config.json").read_text())
    assert saved_config["encoder_name_or_path"]
    loaded, loaded_processor = load_vlm(str(tmp_path))
    assert loaded.is_peft
    assert torch.allclose(_logits(loaded, loaded_processor), before, atol=1e-6)
    # A plain, un-adapted base gives different logits: the adapter really was loaded.
    plain, _ = _build()
    plain.connector.load_state_dict(model.connector.state_dict())
    assert not torch.allclose(_logits(plain, processor), before, atol=1e-4)


def test_lora_applies_to_an_existing_model():
    model, _ = _build()
    cfg = Stage2Config(**PARTS, use_lora=True, lora_r=2, lora_target_modules=["q_proj", "v_proj"])
    apply_lora(model, cfg)
    names = [n for n, _ in model.language_model.named_parameters() if "lora_A" in n]
    assert names and all(("q_proj" in n or "v_proj" in n) for n in names)


@pytest.mark.slow
def test_stage2_from_parts_loads_the_stage1_connector(stage1_checkpoint):
    path = stage1_checkpoint / CONNECTOR_FILE
    stage1_kwargs = json.loads((stage1_checkpoint / "vlmkit_config.json").read_text())["connector_kwargs"]
    model, _ = _build(pretrain_connector=str(path), connector_downsample=stage1_kwargs.get("downsample", 1))
    saved = load_file(str(path))
    state = model.connector.state_dict()
    assert (
        set(state) == set(saved) == {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias"}
    )
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    assert model.config.num_media_tokens == 16 // stage1_kwargs.get("downsample", 1)


def test_stage2_from_parts_loads_a_llava_mm_projector_bin(tmp_path):
    g = torch.Generator().manual_seed(3)
    weights = {
        "model.mm_projector.0.weight": torch.randn(64, 64, generator=g),
        "model.mm_projector.0.bias": torch.randn(64, generator=g),
        "model.mm_projector.2.weight": torch.randn(64, 64, generator=g),
        "model.mm_projector.2.bias": torch.randn(64, generator=g),
    }
    torch.save(weights, tmp_path / "mm_projector.bin")
    model, _ = _build(pretrain_connector=str(tmp_path / "mm_projector.bin"))
    assert torch.equal(model.connector.linear_1.weight, weights["model.mm_projector.0.weight"])
    assert torch.equal(model.connector.linear_1.bias, weights["model.mm_projector.0.bias"])
    assert torch.equal(model.connector.linear_2.weight, weights["model.mm_projector.2.weight"])
    assert torch.equal(model.connector.linear_2.bias, weights["model.mm_projector.2.bias"])


def test_mm_projector_with_wrong_keys_or_shapes_is_refused(tmp_path):
    torch.save({"model.mm_projector.1.weight": torch.zeros(64, 64)}, tmp_path / "bad_key.bin")
    with pytest.raises(ValueError, match="bad_key.bin: unexpected key 'model.mm_projector.1.weight'"):
        _build(pretrain_connector=str(tmp_path / "bad_key.bin"))
    torch.save({"model.mm_projector.0.weight": torch.zeros(64, 64)}, tmp_path / "partial.bin")
    with pytest.raises(ValueError, match="partial.bin: connector weights do not fit"):
        _build(pretrain_connector=str(tmp_path / "partial.bin"))


def test_not_a_vlmkit_checkpoint_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a vlmkit checkpoint"):
        build_vlm(Stage2Config(model_name_or_path=str(tmp_path)))
    with pytest.raises(ValueError, match="--language_model"):
        build_vlm(Stage2Config(vision_tower="vlmkit-tiny/clip-vision"))
    with pytest.raises(FileNotFoundError, match="vlmkit_config.json"):
        VLM.from_pretrained(tmp_path)
