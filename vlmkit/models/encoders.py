"""Encoder towers: load any supported image or audio encoder and return per-token features (B, N, D).

The registry is keyed by the checkpoint's `model_type`, so a CLIP or SigLIP checkpoint from the Hub, a stage-0
CLIP/MAE ViT, or a stage-0 wav2vec2 all load through the same `from_pretrained` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlmkit.models.rng import rng_untouched


@dataclass(frozen=True)
class EncoderSpec:
    """How to load and read one encoder family."""

    model_class: str  # transformers class name
    modality: str  # "image" or "audio"
    has_cls: bool  # whether token 0 is a CLS token


ENCODERS: dict[str, EncoderSpec] = {
    "clip_vision_model": EncoderSpec("CLIPVisionModel", "image", True),
    "clip": EncoderSpec("CLIPVisionModel", "image", True),
    "siglip_vision_model": EncoderSpec("SiglipVisionModel", "image", False),
    "siglip": EncoderSpec("SiglipVisionModel", "image", False),
    "vit_mae": EncoderSpec("ViTMAEModel", "image", True),
    "vit": EncoderSpec("ViTModel", "image", True),
    "wav2vec2": EncoderSpec("Wav2Vec2Model", "audio", False),
}


def encoder_spec(model_type: str) -> EncoderSpec:
    """The spec for a checkpoint's `model_type`; unknown types raise with the valid ones."""
    if model_type not in ENCODERS:
        raise ValueError(f"unsupported encoder model_type '{model_type}'; supported: {', '.join(ENCODERS)}")
    return ENCODERS[model_type]


def load_encoder(
    path: str, *, attn_implementation: str = "sdpa", trust_remote_code: bool = False
) -> nn.Module:
    """Load an encoder tower with `from_pretrained` (a full CLIP/SigLIP checkpoint yields its vision tower)."""
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    spec = encoder_spec(config.model_type)
    cls = getattr(transformers, spec.model_class)
    kwargs = {"trust_remote_code": trust_remote_code}
    if config.model_type != "vit_mae":  # ViTMAE has no sdpa path selection in all versions
        kwargs["attn_implementation"] = attn_implementation
    with rng_untouched():  # ZeRO-3's zero.Init draws random numbers while loading
        model = cls.from_pretrained(path, **kwargs)
    if config.model_type == "vit_mae":
        model.config.mask_ratio = 0.0
    return model


def num_encoder_tokens(encoder: nn.Module, num_audio_samples: int = 16000) -> int:
    """Tokens per media item produced by `encode` before dropping CLS."""
    cfg = encoder.config
    if cfg.model_type == "wav2vec2":
        return int(encoder._get_feat_extract_output_lengths(torch.tensor(num_audio_samples)).item())
    patches = (cfg.image_size // cfg.patch_size) ** 2
    return patches + int(encoder_spec(cfg.model_type).has_cls)


def encode(
    encoder: nn.Module, inputs: torch.Tensor, feature_layer: int = -2, drop_cls: bool | None = None
) -> torch.Tensor:
    """Per-token features from one hidden layer.

    inputs: pixel values (B, C, H, W) or audio (B, L). Returns (B, N, D).
    """
    model_type = encoder.config.model_type
    spec = encoder_spec(model_type)
    if model_type == "wav2vec2":
        out = encoder(input_values=inputs, output_hidden_states=True)
    elif model_type == "vit_mae":
        # The identity "noise" keeps patch order (MAE's encoder shuffles patches by the noise ranks).
        n = (encoder.config.image_size // encoder.config.patch_size) ** 2
        noise = torch.arange(n, device=inputs.device, dtype=torch.float32).expand(inputs.shape[0], n)
        out = encoder(pixel_values=inputs, noise=noise, output_hidden_states=True)
    else:
        out = encoder(pixel_values=inputs, output_hidden_states=True)
    features = out.hidden_states[feature_layer]
    if drop_cls is None:
        drop_cls = spec.has_cls
    if drop_cls and spec.has_cls:
        features = features[:, 1:]
    return features
