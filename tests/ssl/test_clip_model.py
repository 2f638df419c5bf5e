"""Tests for vlmkit.ssl.clip_model: tokenizer, dual encoder, LiT-style locking, saving as a vision tower."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vlmkit.ssl.clip_model import (
    ClipDualEncoder,
    build_caption_tokenizer,
    build_clip_model,
    clip_compute_loss,
    clip_image_processor,
    evaluate_clip,
    lock_text_tower,
)
from vlmkit.ssl.image_data import tokenize_captions

CAPTIONS = [f"a handwritten digit {w}." for w in ("zero", "one", "two", "three")] + [
    "the number 7, handwritten."
]


def _cfg(**kw):
    base = dict(
        model_name_or_path=None, attn_implementation="sdpa", image_size=32, patch_size=8, vision_hidden_size=32,
        vision_layers=2, vision_heads=2, text_hidden_size=32, text_layers=1, text_heads=2, projection_dim=16,
        max_text_length=16, init_temperature=0.07, trust_remote_code=False,
    )  # fmt: skip
    return SimpleNamespace(**(base | kw))


@pytest.fixture(scope="module")
def tokenizer():
    return build_caption_tokenizer(CAPTIONS, vocab_size=300, max_length=16)


def _batch(tokenizer, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = tokenize_captions(tokenizer, CAPTIONS[:n], 16)
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g), **enc}


def test_tokenizer_ends_every_caption_with_eos_and_survives_reload(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    enc = tokenize_captions(tokenizer, ["A photo of the digit seven.", "seven"], 16)
    lengths = enc["attention_mask"].sum(1)
    assert (enc["input_ids"][torch.arange(2), lengths - 1] == tokenizer.eos_token_id).all()
    assert tokenizer.eos_token_id != 2  # CLIP's text tower treats eos id 2 as a legacy argmax-pooling flag
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in enc["input_ids"]
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a photo of seven.")["input_ids"] == tokenizer("a photo of seven.")["input_ids"]
    assert again("Seven")["input_ids"] == tokenizer("seven")["input_ids"]  # lower-cased like CLIP


def test_truncated_caption_keeps_its_end_token(tokenizer):
    long = " ".join(["handwritten digit"] * 20)
    enc = tokenize_captions(tokenizer, [long, "one"], max_length=8)
    assert enc["input_ids"].shape == (2, 8)
    assert enc["input_ids"][0, -1] == tokenizer.eos_token_id
    assert enc["input_ids"][1, enc["attention_mask"][1].sum() - 1] == tokenizer.eos_token_id


def test_new_model_matches_tokenizer_and_temperature(tokenizer):
    clip = build_clip_model(_cfg(init_temperature=0.05), tokenizer)
    assert clip.config.text_config.vocab_size == len(tokenizer)
    assert clip.config.text_config.eos_token_id == tokenizer.eos_token_id
    assert clip.logit_scale.item() == pytest.approx(torch.log(torch.tensor(1 / 0.05)).item(), rel=1e-5)


def test_text_tower_pools_at_the_end_token(tokenizer):
    clip = build_clip_model(_cfg(), tokenizer).eval()
    enc = tokenize_captions(tokenizer, ["one", "a handwritten digit one."], 16)
    padded = torch.nn.functional.pad(enc["input_ids"], (0, 4), value=tokenizer.pad_token_id)
    mask = torch.nn.functional.pad(enc["attention_mask"], (0, 4))
    with torch.no_grad():
        a = clip.get_text_features(**enc).pooler_output
        b = clip.get_text_features(input_ids=padded, attention_mask=mask).pooler_output
    torch.testing.assert_close(a, b)  # extra padding after the end token changes nothing


def test_loss_trains_both_towers_and_the_temperature(tokenizer):
    torch.manual_seed(0)
    model = ClipDualEncoder(build_clip_model(_cfg(), tokenizer))
    loss, extras = clip_compute_loss(model, _batch(tokenizer))
    assert torch.isfinite(loss) and loss.item() > 0
    assert extras["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)
    loss.backward()
    clip = model.clip
    assert clip.logit_scale.grad is not None and clip.logit_scale.grad.abs() > 0
    assert clip.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert clip.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0


def test_lock_text_tower_freezes_only_the_text_side(tokenizer):
    torch.manual_seed(0)
    model = ClipDualEncoder(build_clip_model(_cfg(), tokenizer))
    lock_text_tower(model.clip)
    text_before = {k: v.clone() for k, v in model.clip.text_model.state_dict().items()}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    clip_compute_loss(model, _batch(tokenizer))[0].backward()
    optim.step()
    clip = model.clip
    assert all(p.grad is None for p in clip.text_model.parameters())
    assert clip.text_projection.weight.grad is None
    assert clip.visual_projection.weight.grad.abs().sum() > 0
    for k, v in clip.text_model.state_dict().items():
        assert torch.equal(v, text_before[k]), k


def test_saved_clip_loads_as_the_stage1_vision_tower(tokenizer, tmp_path):
    from transformers import AutoImageProcessor, CLIPModel

    from vlmkit.models.encoders import encode, load_encoder

    torch.manual_seed(0)
    model = ClipDualEncoder(build_clip_model(_cfg(), tokenizer))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights that differ from any fresh init
    # the loop saves with a state dict taken from the wrapper: keys carry the "clip." prefix
    model.save_pretrained(tmp_path, state_dict=model.state_dict())
    clip_image_processor(32).save_pretrained(tmp_path)

    reloaded = CLIPModel.from_pretrained(tmp_path)
    for k, v in model.clip.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    tower = load_encoder(str(tmp_path))
    trained = model.clip.vision_model.state_dict()
    loaded = tower.state_dict()
    assert set(loaded) == set(trained)
    for k, v in trained.items():
        assert torch.equal(loaded[k], v), k
    processor = AutoImageProcessor.from_pretrained(tmp_path, backend="pil")
    pixels = processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")["pixel_values"]
    assert encode(tower, pixels).shape == (1, 16, 32)  # 4x4 patches, CLS dropped


def test_evaluate_clip_reports_metrics_and_dedups_captions(tokenizer):
    torch.manual_seed(0)
    clip = build_clip_model(_cfg(), tokenizer)
    pixels = torch.randn(6, 3, 32, 32)
    captions = ["a handwritten digit one.", "a handwritten digit one.", "the number 7, handwritten."] * 2
    labels = torch.tensor([1, 1, 7, 1, 1, 7])
    names = [str(i) for i in range(10)]
    metrics = evaluate_clip(
        clip, tokenizer, pixels, captions, labels, ["a photo of {}."], names, max_length=16
    )
    assert metrics["retrieval_pairs"] == 2
    assert 0.0 <= metrics["eval_zero_shot_accuracy"] <= 1.0
    for key in ("image_to_text_r1", "image_to_text_r5", "text_to_image_r1", "text_to_image_r5"):
        assert 0.0 <= metrics[f"eval_{key}"] <= 1.0
    assert metrics["eval_image_to_text_r5"] == 1.0  # only two candidates
    assert clip.training  # evaluation restores the mode


def test_under_zero3_the_logit_scale_trains_1_dim_and_saves_as_clips_scalar(tokenizer, tmp_path, monkeypatch):
    """DeepSpeed ZeRO-3 cannot partition a 0-dim parameter: the wrapper holds the scale as (1,), the save is a
    plain CLIPModel again."""
    from transformers import CLIPModel

    import vlmkit.ssl.clip_model as clip_model

    monkeypatch.setattr(clip_model, "is_deepspeed_zero3_enabled", lambda: True)
    torch.manual_seed(0)
    model = ClipDualEncoder(build_clip_model(_cfg(), tokenizer))
    assert model.clip.logit_scale.shape == (1,) and model.clip.logit_scale.requires_grad
    model.save_pretrained(tmp_path, state_dict=model.state_dict())
    reloaded = CLIPModel.from_pretrained(tmp_path)
    assert reloaded.logit_scale.shape == () and torch.equal(reloaded.logit_scale, model.clip.logit_scale[0])
