"""Freezing per stage: which parameters train, and the counts it reports."""

from __future__ import annotations

import logging

import pytest
from torch import nn

from vlmkit.config.recipes import Stage2Config
from vlmkit.models.build import build_vlm
from vlmkit.training.freeze import count_parameters, set_trainable

PARTS = dict(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def vlm():
    return build_vlm(Stage2Config(**PARTS))[0]


@pytest.fixture(scope="module")
def lora_vlm():
    cfg = Stage2Config(**PARTS, use_lora=True, lora_r=4)
    return build_vlm(cfg, cfg)[0]


def test_align_trains_only_the_connector(vlm, caplog):
    caplog.set_level(logging.INFO, logger="vlmkit.training.freeze")
    trainable, frozen = set_trainable(vlm, "align")
    assert trainable == _numel(vlm.connector)
    assert frozen == _numel(vlm.encoder) + _numel(vlm.language_model)
    assert all(n.startswith("connector.") for n in _trainable_names(vlm))
    assert (trainable, frozen) == count_parameters(vlm)
    assert f"stage align: {trainable:,} trainable / {frozen:,} frozen" in caplog.text


def test_instruct_trains_connector_and_llm(vlm):
    trainable, frozen = set_trainable(vlm, "instruct", log=False)
    assert trainable == _numel(vlm.connector) + _numel(vlm.language_model)
    assert frozen == _numel(vlm.encoder)
    assert not any(n.startswith("encoder.") for n in _trainable_names(vlm))


def test_instruct_with_tune_encoder_trains_everything(vlm):
    trainable, frozen = set_trainable(vlm, "instruct", tune_encoder=True, log=False)
    assert frozen == 0 and trainable == _numel(vlm)
    # Going back to align freezes the encoder and LLM again.
    trainable, _ = set_trainable(vlm, "align", log=False)
    assert trainable == _numel(vlm.connector)


def test_instruct_with_lora_trains_only_adapters_and_connector(lora_vlm):
    trainable, frozen = set_trainable(lora_vlm, "instruct", log=False)
    names = _trainable_names(lora_vlm)
    lora_names = {n for n in names if n.startswith("language_model.")}
    assert lora_names and all("lora_" in n for n in lora_names)
    assert {n for n in names if not n.startswith("language_model.")} == {
        f"connector.{n}" for n, _ in lora_vlm.connector.named_parameters()
    }
    lora_numel = sum(p.numel() for n, p in lora_vlm.language_model.named_parameters() if "lora_" in n)
    assert trainable == _numel(lora_vlm.connector) + lora_numel
    assert trainable + frozen == _numel(lora_vlm)
    assert trainable < 0.5 * _numel(lora_vlm.language_model)


def test_lora_with_tune_encoder(lora_vlm):
    set_trainable(lora_vlm, "instruct", tune_encoder=True, log=False)
    names = _trainable_names(lora_vlm)
    assert any(n.startswith("encoder.") for n in names)
    assert all("lora_" in n for n in names if n.startswith("language_model."))


def test_reward_stage_adds_the_score_head():
    model = build_vlm(Stage2Config(**PARTS))[0]
    model.score_head = nn.Linear(64, 1)
    trainable, frozen = set_trainable(model, "reward", log=False)
    assert trainable == _numel(model.connector) + _numel(model.language_model) + 65
    assert frozen == _numel(model.encoder)
    set_trainable(model, "align", log=False)
    assert not model.score_head.weight.requires_grad


def test_unknown_stage_names_the_valid_ones(vlm):
    with pytest.raises(ValueError, match="unknown stage 'finetune'; valid: align, instruct, reward"):
        set_trainable(vlm, "finetune")
