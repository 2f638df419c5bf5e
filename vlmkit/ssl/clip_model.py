"""The stage-0 CLIP dual encoder: transformers' `CLIPModel` (ViT image tower + causal text tower, each with
a projection head) trained with vlmkit's symmetric InfoNCE over the global batch.

The output directory is a plain `CLIPModel` checkpoint plus its caption tokenizer and image processor, so
`CLIPModel.from_pretrained(out)` works without vlmkit and stage 1 takes it as `--vision_tower out`
(`CLIPVisionModel.from_pretrained` reads the vision half of a full CLIP checkpoint).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.integrations import is_deepspeed_zero3_enabled

from vlmkit.ssl.contrastive import clip_loss, retrieval_recall, zero_shot_accuracy, zero_shot_classifier
from vlmkit.ssl.image_data import tokenize_captions

logger = logging.getLogger(__name__)

__all__ = [
    "ClipDualEncoder",
    "build_caption_tokenizer",
    "build_clip_model",
    "clip_compute_loss",
    "clip_image_processor",
    "embed_images",
    "embed_texts",
    "evaluate_clip",
    "lock_text_tower",
]

PAD_TOKEN, EOS_TOKEN = "<|pad|>", "<|endoftext|>"


def build_caption_tokenizer(texts: Sequence[str], vocab_size: int = 1024, max_length: int = 32):
    """A lower-casing byte-level BPE tokenizer trained on `texts` that ends every text with ``<|endoftext|>``.

    Byte-level, so words never seen in `texts` (e.g. in zero-shot prompts) still tokenize. CLIP's text
    tower pools at the first end-of-text token, which the post-processor appends.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not texts:
        raise ValueError("build_caption_tokenizer needs at least one caption to train on")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(list(texts), trainer=trainer)
    eos_id = tok.token_to_id(EOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, bos_token=None,
        model_max_length=max_length,
    )  # fmt: skip


def clip_image_processor(image_size: int):
    """CLIP preprocessing (resize the short side, centre crop, CLIP mean/std) at `image_size`, PIL backend."""
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def build_clip_model(cfg, tokenizer) -> nn.Module:
    """A `CLIPModel`: `from_pretrained(cfg.model_name_or_path)`, or new from the size fields of `cfg`.

    A new model's text tower matches `tokenizer` (vocabulary, pad and end-of-text ids) and its logit
    scale starts at ``log(1 / cfg.init_temperature)``.
    """
    from transformers import CLIPConfig, CLIPModel

    from vlmkit.models.build import resolve_attn_implementation

    attn = resolve_attn_implementation(getattr(cfg, "attn_implementation", "auto"))
    if cfg.model_name_or_path:
        return CLIPModel.from_pretrained(
            cfg.model_name_or_path, attn_implementation=attn, trust_remote_code=cfg.trust_remote_code
        )
    text = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden_size, intermediate_size=4 * cfg.text_hidden_size,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_text_length, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    vision = dict(
        image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.vision_hidden_size,
        intermediate_size=4 * cfg.vision_hidden_size, num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
    )  # fmt: skip
    config = CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=cfg.projection_dim,
        logit_scale_init_value=math.log(1.0 / cfg.init_temperature),
    )  # fmt: skip
    if is_deepspeed_zero3_enabled():
        # zero.Init (what `_from_config` uses under ZeRO-3) cannot partition the 0-dim logit_scale (DeepSpeed views
        # every parameter as bytes to broadcast it): build the model whole; DeepSpeed partitions it when the engine
        # starts, after `ClipDualEncoder` made the scale 1-dim.
        config._attn_implementation = attn
        return CLIPModel(config)
    return CLIPModel._from_config(config, attn_implementation=attn)


def lock_text_tower(clip: nn.Module) -> None:
    """Freeze the text transformer and its projection (train only the image side and the temperature)."""
    for module in (clip.text_model, clip.text_projection):
        module.requires_grad_(False)
    trainable = sum(p.numel() for p in clip.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in clip.parameters() if not p.requires_grad)
    logger.info("text tower locked: %d trainable, %d frozen parameters", trainable, frozen)


class ClipDualEncoder(nn.Module):
    """Wraps a `CLIPModel` so one `forward` yields what `clip_loss` needs (and DDP/FSDP see every parameter).

    `save_pretrained` writes the inner `CLIPModel` (state-dict keys without the ``clip.`` prefix). Under
    DeepSpeed ZeRO-3 the logit scale is held with shape (1,) while training, as ZeRO-3 cannot partition a 0-dim
    parameter, and saved as the scalar that `CLIPModel` has.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        if is_deepspeed_zero3_enabled():
            import deepspeed

            if clip.logit_scale.dim() == 0:
                clip.logit_scale = nn.Parameter(
                    clip.logit_scale.detach().reshape(1), requires_grad=clip.logit_scale.requires_grad
                )
            # This forward reads the scale outside CLIPModel.forward, which never runs: ZeRO-3 must gather it here.
            deepspeed.zero.register_external_parameter(self, clip.logit_scale)

    def forward(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple:
        """pixel_values (B, C, H, W), input_ids / attention_mask (B, T) ->
        image embeddings (B, P), text embeddings (B, P) (projected, not normalised), log scale ()."""
        image = self.clip.get_image_features(pixel_values=pixel_values).pooler_output
        text = self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        # A copy: under ZeRO-3 the parameter itself is emptied again (re-partitioned) when this forward returns.
        return image, text, self.clip.logit_scale.reshape(()).clone()

    def save_pretrained(self, out_dir, state_dict: dict | None = None, **kwargs) -> None:
        if state_dict is not None or self.clip.logit_scale.dim():
            state_dict = {
                k.removeprefix("clip."): v for k, v in (state_dict or self.clip.state_dict()).items()
            }
            state_dict["logit_scale"] = state_dict["logit_scale"].reshape(())
        self.clip.save_pretrained(out_dir, state_dict=state_dict, **kwargs)


def clip_compute_loss(model: nn.Module, batch: dict) -> tuple[Tensor, dict]:
    """Training loss for `vlmkit.training.loop.train`: (mean InfoNCE over the global batch, extras).

    Use with ``count_items=lambda batch: 1``. Logs the temperature's inverse (``logit_scale``, clamped at 100).
    """
    image, text, log_scale = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    loss = clip_loss(image, text, log_scale)
    return loss, {"logit_scale": float(log_scale.detach().exp().clamp(max=100.0))}


@torch.no_grad()
def embed_images(clip: nn.Module, pixel_values: Tensor, batch_size: int = 64) -> Tensor:
    """(N, C, H, W) -> (N, P) projected image embeddings, in eval mode, batch by batch."""
    device = next(clip.parameters()).device
    rows = [
        clip.get_image_features(pixel_values=chunk.to(device)).pooler_output.float().cpu()
        for chunk in pixel_values.split(batch_size)
    ]
    return torch.cat(rows)


@torch.no_grad()
def embed_texts(
    clip: nn.Module, tokenizer, texts: Sequence[str], max_length: int, batch_size: int = 64
) -> Tensor:
    """N texts -> (N, P) projected text embeddings."""
    device = next(clip.parameters()).device
    rows = []
    for start in range(0, len(texts), batch_size):
        enc = tokenize_captions(tokenizer, list(texts[start : start + batch_size]), max_length)
        out = clip.get_text_features(
            input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device)
        )
        rows.append(out.pooler_output.float().cpu())
    return torch.cat(rows)


def evaluate_clip(
    clip: nn.Module,
    tokenizer,
    pixel_values: Tensor,
    captions: Sequence[str],
    labels: Tensor | None,
    templates: Sequence[str] = (),
    classnames: Sequence[str] = (),
    *,
    max_length: int = 32,
    batch_size: int = 64,
) -> dict[str, float]:
    """Held-out CLIP metrics.

    Args:
        pixel_values: (N, C, H, W) held-out images; captions: their N captions.
        labels: (N,) class indices for zero-shot classification, or None to skip it.
        templates: prompt templates with one ``{}`` for the class name, never seen in training;
            a class embedding is the mean over templates (`zero_shot_classifier`).

    Returns:
        ``eval_zero_shot_accuracy`` (when labels, templates and classnames are given) and
        ``eval_{image_to_text,text_to_image}_r{1,5}``. Retrieval runs over the first image of every
        distinct caption, so copies of one caption (common in templated data) are not counted as
        misses; on such data image->text R@1 is bounded by 1 / (captions per class).
    """
    was_training = clip.training
    clip.eval()
    images = embed_images(clip, pixel_values, batch_size)
    metrics: dict[str, float] = {}
    if labels is not None and templates and classnames:
        prompts = [[t.format(name) for t in templates] for name in classnames]
        per_class = [embed_texts(clip, tokenizer, p, max_length, batch_size) for p in prompts]
        metrics["eval_zero_shot_accuracy"] = zero_shot_accuracy(
            images, zero_shot_classifier(per_class), labels
        )
    first = {}
    for i, caption in enumerate(captions):
        first.setdefault(caption, i)
    keep = list(first.values())
    texts = embed_texts(clip, tokenizer, [captions[i] for i in keep], max_length, batch_size)
    recall = retrieval_recall(images[keep], texts, ks=(1, 5))
    metrics.update({f"eval_{k}": v for k, v in recall.items()})
    metrics["retrieval_pairs"] = len(keep)
    clip.train(was_training)
    return metrics
