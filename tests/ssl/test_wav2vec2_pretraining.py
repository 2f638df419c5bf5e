"""Unit tests for vlmkit.ssl.wav2vec2_pretraining: one pretraining step, the probe pieces, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Wav2Vec2Model

from vlmkit.config.ssl_audio import Wav2Vec2PretrainConfig
from vlmkit.models.encoders import encode, load_encoder
from vlmkit.ssl.wav2vec2_pretraining import (
    Wav2Vec2PretrainingStep,
    build_feature_extractor,
    build_pretraining_model,
    eval_codebook_perplexity,
    pooled_features,
    random_init_like,
    save_pretrained_encoder,
    wav2vec2_config,
)

SAMPLES = 3200  # 0.2 s: 9 frames at the default stride of 320


def _cfg(**overrides) -> Wav2Vec2PretrainConfig:
    fields = dict(hidden_size=32, intermediate_size=64, conv_dim=[16] * 7, mask_length=2, num_negatives=4)
    fields.update(overrides)
    return Wav2Vec2PretrainConfig(**fields)


def _step(**overrides) -> Wav2Vec2PretrainingStep:
    kwargs = dict(mask_prob=0.65, mask_length=2, min_masks=2, num_negatives=4, seed=0)
    kwargs.update(overrides)
    return Wav2Vec2PretrainingStep(**kwargs)


def test_config_fields_reach_the_model():
    config = wav2vec2_config(
        _cfg(num_codevector_groups=4, num_codevectors_per_group=8, feat_extract_norm="layer")
    )
    assert (config.num_codevector_groups, config.num_codevectors_per_group) == (4, 8)
    assert config.do_stable_layer_norm and config.feat_extract_norm == "layer"
    assert math.prod(config.conv_stride) == 320
    with pytest.raises(ValueError, match="one entry per conv layer"):
        wav2vec2_config(_cfg(conv_kernel=[10, 3]))


def test_step_gives_finite_loss_and_gradients_reach_encoder_and_quantizer():
    torch.manual_seed(0)
    model = build_pretraining_model(_cfg()).train()
    step = _step(max_temperature=2.0, temperature_decay=0.5, min_temperature=0.1)
    loss, extras = step(model, {"input_values": torch.randn(3, SAMPLES)})
    assert torch.isfinite(loss) and loss.ndim == 0
    assert extras["contrastive_loss"] > 0 and 0 <= extras["diversity_loss"] <= 1
    # total = contrastive + 0.1 * diversity
    assert float(loss.detach()) == pytest.approx(
        extras["contrastive_loss"] + 0.1 * extras["diversity_loss"], rel=1e-5
    )
    assert 2 <= extras["codebook_perplexity"] <= 2 * 32
    assert model.quantizer.temperature == extras["gumbel_temperature"] == 2.0
    loss.backward()
    for name in (
        "wav2vec2.feature_extractor.conv_layers.0.conv.weight",  # conv feature encoder
        "wav2vec2.encoder.layers.0.attention.q_proj.weight",  # transformer
        "wav2vec2.masked_spec_embed",  # the learned mask embedding is used
        "quantizer.codevectors",
        "quantizer.weight_proj.weight",
        "project_q.weight",
        "project_hid.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # the temperature follows the schedule: 2.0 * 0.5**step, floored at 0.1
    for expected in (1.0, 0.5, 0.25, 0.125, 0.1):
        step(model, {"input_values": torch.randn(3, SAMPLES)})
        assert model.quantizer.temperature == pytest.approx(max(expected, 0.1))


def test_temperature_advances_per_optimizer_step_not_micro_batch():
    model = build_pretraining_model(_cfg()).train()
    step = _step(temperature_decay=0.5, gradient_accumulation_steps=2)
    temps = [
        step(model, {"input_values": torch.randn(2, SAMPLES)})[1]["gumbel_temperature"] for _ in range(4)
    ]
    assert temps == [2.0, 2.0, 1.0, 1.0]


def test_state_dict_resumes_the_same_masks():
    step = _step()
    step.masks(2, 20)
    resumed = _step(seed=123)
    resumed.load_state_dict(step.state_dict())
    a, b = step.masks(2, 20), resumed.masks(2, 20)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].any(), "the span mask must mask something"


def test_features_perplexity_and_random_init_baseline():
    cfg = _cfg()
    model = build_pretraining_model(cfg, seed=3).train()
    same = random_init_like(model, seed=3)
    loader = [{"input_values": torch.randn(4, SAMPLES), "labels": torch.arange(4)} for _ in range(2)]
    feats, labels = pooled_features(model, loader, layer=-1)
    assert feats.shape == (8, cfg.hidden_size) and labels.tolist() == [0, 1, 2, 3] * 2
    assert torch.allclose(feats, pooled_features(same, loader, layer=-1)[0], atol=1e-5)
    assert model.wav2vec2.training, "pooled_features must restore the training mode"
    perplexity = eval_codebook_perplexity(model, loader)
    assert (
        cfg.num_codevector_groups <= perplexity <= cfg.num_codevector_groups * cfg.num_codevectors_per_group
    )


def test_saved_checkpoint_loads_as_the_stage1_audio_tower(tmp_path):
    model = build_pretraining_model(_cfg(), seed=0)
    save_pretrained_encoder(model, build_feature_extractor(), tmp_path)
    encoder = load_encoder(str(tmp_path))
    assert isinstance(encoder, Wav2Vec2Model)
    base = model.wav2vec2.state_dict()
    loaded = encoder.state_dict()
    assert set(base) == set(loaded)
    for key, value in base.items():
        assert torch.equal(value, loaded[key]), key
    model.eval()
    x = torch.randn(2, SAMPLES)
    with torch.no_grad():
        expected = model.wav2vec2(x, output_hidden_states=True).hidden_states[-2]
        assert torch.allclose(encode(encoder.eval(), x, feature_layer=-2), expected, atol=1e-5)
    assert build_feature_extractor(str(tmp_path)).do_normalize
