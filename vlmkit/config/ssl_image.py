"""Configs of the stage-0 image encoder recipes: CLIP (image-text contrastive) and MAE (masked patches)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import ATTN_IMPLEMENTATIONS, EpochArgs, HubArgs, OptimArgs, RunArgs, _f


@dataclass
class ImageDataArgs:
    """Image data for encoder pretraining: JSON records ``{image, caption, label}``."""

    data_path: str | None = _f(
        None, "Training records (JSON list or JSON lines of {image, caption, label}), or vlmkit-data/...."
    )
    eval_data_path: str | None = _f(None, "Held-out records for the final metrics (labels needed).")
    image_folder: str | None = _f(None, "Root for relative image paths (default: the data file's folder).")
    eval_image_folder: str | None = _f(
        None, "Root for relative image paths of the held-out records (default: image_folder)."
    )
    allow_outside_media_root: bool = _f(False, "Allow image paths that escape image_folder.")
    max_eval_samples: int = _f(0, "Evaluate on at most this many held-out images (0: all).", ge=0)
    cache_images: bool = _f(False, "Keep preprocessed training images in memory (small datasets only).")


@dataclass
class EncoderArgs:
    """Where the encoder starts from, and the input geometry of a new one."""

    model_name_or_path: str | None = _f(
        None,
        "Start from this checkpoint (from_pretrained path or Hub name); else build one from the size fields.",
    )
    image_size: int = _f(32, "Input image side in pixels (new models).", ge=1)
    patch_size: int = _f(8, "ViT patch side in pixels (new models).", ge=1)


@dataclass
class ClipConfig(HubArgs, ImageDataArgs, EncoderArgs, OptimArgs, EpochArgs, RunArgs):
    """Stage 0 CLIP: ViT image tower + transformer text tower, symmetric InfoNCE over the global batch."""

    attn_implementation: str = _f(
        "auto",
        "auto (flash_attention_2 on a GPU with flash-attn, else sdpa), sdpa, eager.",
        choices=ATTN_IMPLEMENTATIONS,
    )
    vision_hidden_size: int = _f(64, "Width of the ViT image tower (new models; MLP is 4x).", ge=1)
    vision_layers: int = _f(3, "Transformer layers of the image tower (new models).", ge=1)
    vision_heads: int = _f(4, "Attention heads of the image tower (new models).", ge=1)
    text_hidden_size: int = _f(64, "Width of the text tower (new models; MLP is 4x).", ge=1)
    text_layers: int = _f(1, "Transformer layers of the text tower (new models).", ge=1)
    text_heads: int = _f(4, "Attention heads of the text tower (new models).", ge=1)
    projection_dim: int = _f(64, "Width of the shared embedding space after the projection heads.", ge=1)
    text_vocab_size: int = _f(
        1024, "Vocabulary of the caption tokenizer trained on data_path (new models).", ge=1
    )
    max_text_length: int = _f(32, "Tokens per caption, end-of-text included (longer captions are cut).", ge=2)
    init_temperature: float = _f(
        0.07, "Initial softmax temperature (learnable; logit scale clamped at 100).", gt=0
    )
    lock_text_tower: bool = _f(
        False, "Freeze the text tower and its projection; train the image side against fixed text embeddings."
    )
    zero_shot_templates: str | None = _f(
        None, "JSON {templates, classnames} for zero-shot evaluation; templates must be unseen in training."
    )
    per_device_train_batch_size: int = _f(
        32, "Image-caption pairs per device per micro-batch (the negatives)."
    )
    learning_rate: float = _f(1e-3, "Peak learning rate.")
    weight_decay: float = _f(0.1, "AdamW weight decay (not on biases, norms or the temperature).")
    warmup_ratio: float = _f(0.05, "Fraction of steps for linear warm-up.")


@dataclass
class MaeConfig(HubArgs, ImageDataArgs, EncoderArgs, OptimArgs, EpochArgs, RunArgs):
    """Stage 0 MAE: a ViT encoder on the visible patches, a light decoder reconstructs the masked ones."""

    patch_size: int = _f(4, "ViT patch side in pixels (new models).")
    hidden_size: int = _f(64, "Encoder width (new models; MLP is 4x).", ge=1)
    num_layers: int = _f(4, "Encoder transformer layers (new models).", ge=1)
    num_heads: int = _f(4, "Encoder attention heads (new models).", ge=1)
    decoder_hidden_size: int = _f(64, "Decoder width (new models).", ge=1)
    decoder_layers: int = _f(2, "Decoder transformer layers (new models).", ge=1)
    decoder_heads: int = _f(4, "Decoder attention heads (new models).", ge=1)
    mask_ratio: float = _f(0.75, "Fraction of patches hidden from the encoder.", gt=0, lt=1)
    norm_pix_loss: bool = _f(False, "Regress per-patch normalised pixels (mean 0, variance 1 per patch).")
    probe_labels_per_class: int = _f(
        0, "Linear probe trains on this many labelled images per class (0: every training image).", ge=0
    )
    probe_pooling: str = _f(
        "mean", "Probe features from the last layer: mean (of patch tokens) or cls.", choices=("mean", "cls")
    )
    per_device_train_batch_size: int = _f(64, "Images per device per micro-batch.")
    learning_rate: float = _f(1e-3, "Peak learning rate.")
    weight_decay: float = _f(0.05, "AdamW weight decay (not on biases or norms).")
    warmup_ratio: float = _f(0.05, "Fraction of steps for linear warm-up.")
