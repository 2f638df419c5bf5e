"""Frozen-encoder feature cache: exact features, reuse across runs and stages, stale caches rebuilt."""

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.args import ModelArgs
from vlmkit.data.records import BadSampleError, Sample, SkipCounter, Turn
from vlmkit.data.sft_dataset import SFTCollator, SFTDataset
from vlmkit.models.build import build_vlm
from vlmkit.models.encoders import encode
from vlmkit.models.vlm import VLM
from vlmkit.training.feature_cache import (
    CachedFeatureDataset,
    FeatureCache,
    build_feature_cache,
    encoder_fingerprint,
    media_hash,
    preprocessing_fingerprint,
)
from vlmkit.training.freeze import set_trainable
from vlmkit.training.losses import token_loss_sum
from vlmkit.training.train_data import build_train_data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fc")
    torch.manual_seed(0)
    model, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    set_trainable(model, "align", log=False)
    model.eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    (root / "copy.png").write_bytes((root / "img0.png").read_bytes())  # same image, another name
    samples = [
        Sample([Turn("user", "<image>\nWhat is it?"), Turn("assistant", "a digit")], [paths[0]], index=0),
        Sample([Turn("user", "<image> <image> same?"), Turn("assistant", "no")], paths[1:3], index=1),
        Sample([Turn("user", "hello"), Turn("assistant", "hi there")], [], index=2),
        Sample(
            [Turn("user", "<image>\nAgain?"), Turn("assistant", "yes")], [str(root / "copy.png")], index=3
        ),
    ]
    dataset = SFTDataset(samples, processor, max_length=128)
    return SimpleNamespace(root=root, model=model, processor=processor, dataset=dataset, paths=paths)


def _loss(model, batch):
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        media=batch.get("media"), media_features=batch.get("media_features"),
    )  # fmt: skip
    return token_loss_sum(out.logits, batch["labels"])


def test_media_hash_follows_content_not_name(world):
    a, b = media_hash(world.paths[0]), media_hash(str(world.root / "copy.png"))
    assert a == b != media_hash(world.paths[1])
    assert media_hash((world.root / "img0.png").read_bytes()) == a
    img = Image.open(world.paths[0]).convert("RGB")
    assert media_hash(img) == media_hash(img.copy()) != media_hash(img.rotate(90))
    assert media_hash(np.zeros(5, np.float32)) != media_hash(np.ones(5, np.float32))


def test_cached_features_equal_encoder_output_and_give_the_same_loss(world, tmp_path):
    cache, keys = build_feature_cache(
        world.dataset, world.model, world.processor, tmp_path / "c", batch_size=2
    )
    assert len(cache) == 3  # four media items, one duplicate by content
    assert keys[2] == [] and keys[0] == keys[3]
    pixels = world.processor.process_media([Image.open(world.paths[1]).convert("RGB")])
    expected = encode(world.model.encoder, pixels, world.model.config.feature_layer, True)[0]
    torch.testing.assert_close(cache.get(keys[1][0]), expected, atol=1e-6, rtol=0)
    cached = CachedFeatureDataset(world.dataset, cache, keys)
    assert "media" not in cached[1] and cached[1]["media_features"].shape == (2, *expected.shape)
    collate = SFTCollator(world.processor.tokenizer.pad_token_id)
    with torch.no_grad():
        from_pixels = _loss(world.model, collate([world.dataset[i] for i in range(4)]))
        from_cache = _loss(world.model, collate([cached[i] for i in range(4)]))
    assert abs(float(from_pixels) - float(from_cache)) < 1e-5


def test_second_build_reuses_and_a_reloaded_model_shares_the_cache(world, tmp_path):
    build_feature_cache(world.dataset, world.model, world.processor, tmp_path / "c")
    shards = sorted(p.name for p in (tmp_path / "c").glob("shard-*"))
    cache, _ = build_feature_cache(world.dataset, world.model, world.processor, tmp_path / "c")
    assert cache.stale_reason is None
    assert sorted(p.name for p in (tmp_path / "c").glob("shard-*")) == shards  # nothing encoded again
    # A later stage loads the encoder from the stage-1 output: same weights, other path -> same cache.
    world.model.save_pretrained(tmp_path / "ckpt")
    reloaded = VLM.from_pretrained(tmp_path / "ckpt")
    fp = encoder_fingerprint(world.model.encoder, world.model.config.feature_layer, True)
    assert encoder_fingerprint(reloaded.encoder, reloaded.config.feature_layer, True) == fp


def test_other_encoder_weights_or_layer_rebuild_the_cache(world, tmp_path):
    cache, keys = build_feature_cache(world.dataset, world.model, world.processor, tmp_path / "c")
    old = cache.get(keys[0][0])
    other = copy.deepcopy(world.model)
    with torch.no_grad():
        next(other.encoder.parameters()).add_(0.5)
    cache2, keys2 = build_feature_cache(world.dataset, other, world.processor, tmp_path / "c")
    assert cache2.stale_reason is not None and "encoder" in cache2.stale_reason
    new = cache2.get(keys2[0][0])
    assert not torch.allclose(old, new)
    pixels = world.processor.process_media([Image.open(world.paths[0]).convert("RGB")])
    torch.testing.assert_close(new, encode(other.encoder, pixels, -2, True)[0], atol=1e-6, rtol=0)
    other.config.feature_layer = -1
    cache3, _ = build_feature_cache(world.dataset, other, world.processor, tmp_path / "c")
    assert cache3.stale_reason is not None and "encoder" in cache3.stale_reason


def test_other_preprocessing_rebuilds_the_cache(world, tmp_path):
    build_feature_cache(world.dataset, world.model, world.processor, tmp_path / "c")
    processor = copy.deepcopy(world.processor)
    processor.media_processor.image_mean = [0.0, 0.0, 0.0]
    assert preprocessing_fingerprint(processor) != preprocessing_fingerprint(world.processor)
    cache, keys = build_feature_cache(world.dataset, world.model, processor, tmp_path / "c")
    assert cache.stale_reason is not None and "preprocessing" in cache.stale_reason
    pixels = processor.process_media([Image.open(world.paths[0]).convert("RGB")])
    expected = encode(world.model.encoder, pixels, -2, True)[0]
    torch.testing.assert_close(cache.get(keys[0][0]), expected, atol=1e-6, rtol=0)


def test_foreign_shard_is_never_read(world, tmp_path):
    cache, keys = build_feature_cache(world.dataset, world.model, world.processor, tmp_path / "c")
    bogus = FeatureCache(tmp_path / "c", "someone-else", cache.fingerprints["preprocessing_fingerprint"])
    bogus.write_shard({keys[0][0]: torch.zeros(16, 64)}, tag="zz-")
    reopened = FeatureCache.open(tmp_path / "c", **_fps(cache), writer=False)
    assert reopened.get(keys[0][0]).abs().sum() > 0


def _fps(cache):
    return {
        "encoder_fp": cache.fingerprints["encoder_fingerprint"],
        "preprocessing_fp": cache.fingerprints["preprocessing_fingerprint"],
    }


def test_trainable_encoder_is_refused(world, tmp_path):
    model = copy.deepcopy(world.model)
    model.encoder.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen encoder"):
        build_feature_cache(world.dataset, model, world.processor, tmp_path / "c")


def test_broken_image_is_skipped_and_counted(world, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    samples = [
        Sample([Turn("user", "<image>\nx"), Turn("assistant", "y")], [world.paths[0]], index=0),
        Sample([Turn("user", "<image>\nx"), Turn("assistant", "y")], [str(bad)], index=1),
        Sample([Turn("user", "<image>\nx"), Turn("assistant", "y")], [str(tmp_path / "gone.png")], index=2),
    ]
    skips = SkipCounter()
    dataset = SFTDataset(samples, world.processor, max_length=128, on_bad_sample="skip", skips=skips)
    cache, keys = build_feature_cache(dataset, world.model, world.processor, tmp_path / "c", skips=skips)
    assert keys[1] is None and keys[2] is None and skips.total == 2
    strict = SFTDataset(samples[2:], world.processor, max_length=128)
    with pytest.raises(BadSampleError, match="record 2.*not readable"):
        build_feature_cache(strict, world.model, world.processor, tmp_path / "c")
    cached = CachedFeatureDataset(dataset, cache, keys)
    assert cached[1] is None and cached[0]["media_features"].shape[0] == 1


def test_build_train_data_trains_from_features(world, tmp_path, monkeypatch):
    cfg = SimpleNamespace(
        data_path="x", max_length=128, feature_cache_dir=str(tmp_path / "c"), packing=True,
        packing_max_tokens=256, group_by_length=False, per_device_eval_batch_size=4,
        per_device_train_batch_size=2, seed=0,
    )  # fmt: skip
    monkeypatch.setattr("vlmkit.training.train_data.sft_dataset", lambda *a, **k: world.dataset)
    train_set, collate, sampler = build_train_data(cfg, world.processor, SkipCounter(), model=world.model)
    assert sampler is None
    batch = collate([train_set[i] for i in range(len(train_set))])
    assert batch["media_features"].shape[0] == 4 and "media" not in batch
