"""Tests for vlmkit.ssl.mae_model: seeded masks, visible-only encoding, saving as a vision tower, probe helpers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vlmkit.ssl.mae_model import (
    PatchMasker,
    build_mae_model,
    labelled_subset,
    mae_image_processor,
    mae_loss_fn,
    probe_features,
    random_init_encoder,
    sincos_position_embeddings,
)
from vlmkit.ssl.masking import random_patch_mask

NUM_PATCHES = 16  # 16x16 images, patch 4


def _cfg(**kw):
    base = dict(
        model_name_or_path=None, image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2,
        decoder_hidden_size=16, decoder_layers=1, decoder_heads=2, mask_ratio=0.75, norm_pix_loss=False,
        trust_remote_code=False,
    )  # fmt: skip
    return SimpleNamespace(**(base | kw))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_mae_model(_cfg())


def test_new_model_knows_patch_positions(model):
    # transformers 5.x leaves ViTMAE's fixed position embeddings at zero; build_mae_model must fill them
    for table in (model.vit.embeddings.position_embeddings[0], model.decoder.decoder_pos_embed[0]):
        patches = table[1:]
        assert table.shape[0] == 1 + NUM_PATCHES and torch.count_nonzero(table[0]) == 0
        assert torch.cdist(patches, patches).add(torch.eye(NUM_PATCHES)).min() > 0.1  # all rows distinct
    assert model.vit.embeddings.cls_token.abs().sum() > 0 and model.decoder.mask_token.abs().sum() > 0
    baseline = random_init_encoder(model.config, seed=0)
    torch.testing.assert_close(
        baseline.embeddings.position_embeddings, model.vit.embeddings.position_embeddings
    )


def test_sincos_embeddings_follow_mae_layout():
    table = sincos_position_embeddings(grid=3, dim=8)
    assert table.shape == (10, 8)
    # patch 4 is row 1, column 1; the first quarter is sin(column * omega), omega_0 = 1
    assert table[1 + 4, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert torch.equal(table[1 + 1, 4:], table[1 + 0, 4:])  # same row -> same second half
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embeddings(2, 6)


def test_noise_from_our_mask_makes_vitmae_use_exactly_that_mask(model):
    _, mask, ids_restore = random_patch_mask(3, NUM_PATCHES, 0.75, torch.Generator().manual_seed(7))
    out = model(pixel_values=torch.randn(3, 3, 16, 16), noise=ids_restore.float())
    assert torch.equal(out.mask, mask)
    assert (out.mask.sum(1) == 12).all()


def test_encoder_sees_only_visible_patches(model):
    noise = PatchMasker(NUM_PATCHES, 0.75, seed=0)(2)
    hidden = model.vit(pixel_values=torch.randn(2, 3, 16, 16), noise=noise).last_hidden_state
    assert hidden.shape == (2, 1 + 4, 32)  # CLS + the 4 visible patches


def test_masker_is_seeded_per_rank_and_call_and_replays_after_resume():
    a, b = PatchMasker(NUM_PATCHES, 0.75, seed=1), PatchMasker(NUM_PATCHES, 0.75, seed=1)
    first, second = a(4), a(4)
    assert torch.equal(first, b(4)) and not torch.equal(first, second)
    assert not torch.equal(first, PatchMasker(NUM_PATCHES, 0.75, seed=1, rank=1)(4))
    resumed = PatchMasker(NUM_PATCHES, 0.75, seed=1)
    resumed.load_state_dict(b.state_dict())
    assert torch.equal(resumed(4), second)


def test_masker_rejects_a_ratio_vitmae_would_round_differently():
    with pytest.raises(ValueError, match="mask_ratio"):
        PatchMasker(10, 0.25, seed=0)  # masks 2.5 patches


def test_loss_is_finite_and_trains_encoder_and_decoder(model):
    model.zero_grad()
    loss, _ = mae_loss_fn(PatchMasker(NUM_PATCHES, 0.75, seed=0))(
        model, {"pixel_values": torch.randn(2, 3, 16, 16)}
    )
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.vit.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert model.decoder.decoder_pred.weight.grad.abs().sum() > 0


def test_saved_mae_loads_as_the_stage1_vision_tower(model, tmp_path):
    from vlmkit.models.encoders import encode, load_encoder

    model.save_pretrained(tmp_path)
    mae_image_processor(16).save_pretrained(tmp_path)
    tower = load_encoder(str(tmp_path))
    assert tower.config.mask_ratio == 0.0
    trained = model.vit.state_dict()
    assert set(tower.state_dict()) == set(trained)
    for k, v in tower.state_dict().items():
        assert torch.equal(v, trained[k]), k
    tower.eval()
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = encode(tower, pixels, feature_layer=-1)
        again = encode(tower, pixels, feature_layer=-1)
    assert features.shape == (2, NUM_PATCHES, 32)  # every patch, CLS dropped
    torch.testing.assert_close(features, again)  # no random masking at feature time
    probe = probe_features(tower, pixels, "mean")
    torch.testing.assert_close(probe, features.mean(1))
    assert probe_features(tower, pixels, "cls").shape == (2, 32)


def test_probe_features_refuse_a_masking_encoder_and_unknown_pooling(model):
    with pytest.raises(ValueError, match="every patch"):
        probe_features(model.vit, torch.randn(1, 3, 16, 16))
    baseline = random_init_encoder(model.config, seed=0)
    with pytest.raises(ValueError, match="pooling"):
        probe_features(baseline, torch.randn(1, 3, 16, 16), "max")


def test_random_init_encoder_is_seeded_and_leaves_the_config_alone(model):
    a, b = random_init_encoder(model.config, 3), random_init_encoder(model.config, 3)
    assert model.config.mask_ratio == 0.75 and a.config.mask_ratio == 0.0
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    c = random_init_encoder(model.config, 4)
    assert not torch.equal(
        a.embeddings.patch_embeddings.projection.weight, c.embeddings.patch_embeddings.projection.weight
    )


def test_labelled_subset_takes_per_class_counts_reproducibly():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 7)
    picked = labelled_subset(labels, 5, seed=0)
    assert torch.bincount(labels[picked]).tolist() == [5, 3, 5]
    assert torch.equal(picked, labelled_subset(labels, 5, seed=0))
    assert not torch.equal(picked, labelled_subset(labels, 5, seed=1))
    assert torch.equal(labelled_subset(labels, 0, seed=0), torch.arange(20))
