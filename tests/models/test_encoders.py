"""Encoder towers: CLS handling, hidden-layer selection and token counts for CLIP, SigLIP and wav2vec2."""

from __future__ import annotations

import pytest
import torch

from vlmkit.models.encoders import encode, encoder_spec, load_encoder, num_encoder_tokens
from vlmkit.models.model_paths import resolve_model_path


@pytest.fixture(scope="module")
def clip():
    return load_encoder(resolve_model_path("vlmkit-tiny/clip-vision")).eval()


@pytest.fixture(scope="module")
def siglip():
    return load_encoder(resolve_model_path("vlmkit-tiny/siglip-vision")).eval()


def _pixels(encoder, n=2):
    size = encoder.config.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_clip_drops_the_cls_token(clip):
    pixels = _pixels(clip)
    hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    patches = (clip.config.image_size // clip.config.patch_size) ** 2
    feats = encode(clip, pixels, feature_layer=-2)
    assert feats.shape == (2, patches, clip.config.hidden_size)
    assert torch.allclose(feats, hidden[-2][:, 1:])
    with_cls = encode(clip, pixels, feature_layer=-2, drop_cls=False)
    assert with_cls.shape[1] == patches + 1 and torch.allclose(with_cls, hidden[-2])
    assert num_encoder_tokens(clip) == patches + 1


@torch.no_grad()
def test_siglip_has_no_cls_token(siglip):
    pixels = _pixels(siglip)
    hidden = siglip(pixel_values=pixels, output_hidden_states=True).hidden_states
    patches = (siglip.config.image_size // siglip.config.patch_size) ** 2
    assert not encoder_spec("siglip_vision_model").has_cls
    assert num_encoder_tokens(siglip) == patches
    for drop in (None, True, False):  # nothing to drop, whatever is asked
        feats = encode(siglip, pixels, feature_layer=-2, drop_cls=drop)
        assert feats.shape == (2, patches, siglip.config.hidden_size)
        assert torch.allclose(feats, hidden[-2])


@torch.no_grad()
@pytest.mark.parametrize("layer", [-1, -2, -3, 0, 1])
def test_feature_layer_selects_that_hidden_state(clip, layer):
    pixels = _pixels(clip)
    hidden = clip(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == clip.config.num_hidden_layers + 1
    feats = encode(clip, pixels, feature_layer=layer)
    assert torch.allclose(feats, hidden[layer][:, 1:])
    other = -1 if layer != -1 else -2
    assert not torch.allclose(feats, hidden[other][:, 1:])


@torch.no_grad()
@pytest.mark.parametrize("samples", [16000, 8000, 12345])
def test_wav2vec2_token_count_matches_num_encoder_tokens(samples):
    w2v = load_encoder(resolve_model_path("vlmkit-tiny/wav2vec2")).eval()
    audio = torch.randn(2, samples, generator=torch.Generator().manual_seed(1))
    feats = encode(w2v, audio, feature_layer=-1)
    assert feats.shape == (2, num_encoder_tokens(w2v, samples), w2v.config.hidden_size)
    hidden = w2v(input_values=audio, output_hidden_states=True).hidden_states
    assert torch.allclose(encode(w2v, audio, feature_layer=-2), hidden[-2])


def test_full_clip_checkpoint_loads_as_its_vision_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16),
        projection_dim=16,
    )  # fmt: skip
    full = CLIPModel(config).eval()
    full.save_pretrained(tmp_path / "clip")
    tower = load_encoder(str(tmp_path / "clip")).eval()
    assert type(tower).__name__ == "CLIPVisionModel"
    reference = full.vision_model.state_dict()
    loaded = tower.state_dict()
    assert set(loaded) == set(reference)
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        assert torch.allclose(encode(tower, pixels), expected, atol=1e-6)


def test_unknown_encoder_type_names_the_supported_ones():
    with pytest.raises(ValueError) as err:
        encoder_spec("bert")
    assert "bert" in str(err.value) and "clip_vision_model" in str(err.value) and "wav2vec2" in str(err.value)
