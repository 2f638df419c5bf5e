"""Stage 0 (CLIP): pretrain an image encoder against captions with the symmetric InfoNCE loss.

    python recipes/clip_pretrain.py --config recipes/configs/digits_clip.yaml
    accelerate launch --num_processes 2 recipes/clip_pretrain.py --config recipes/configs/digits_clip.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/clip_pretrain.py \
        --model_name_or_path openai/clip-vit-base-patch32 --lock_text_tower true \
        --data_path captions.jsonl --image_folder images/ --output_dir out/clip

Under several processes the negatives are the global batch (features are all-gathered with gradients).
Writes a `CLIPModel` checkpoint with its caption tokenizer and image processor, config.yaml, metrics.json
(eval_zero_shot_accuracy and image/text retrieval R@1/R@5 on held-out images), train_log.jsonl, loss.png
and README.md into --output_dir. Stage 1 takes that directory as it is:

    python recipes/llava_stage1.py --config recipes/configs/digits_llava_stage1.yaml --vision_tower outputs/digits/clip
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import CLIPModel

from vlmkit.config.parser import parse_config
from vlmkit.config.ssl_image import ClipConfig
from vlmkit.data.embedded import resolve_data_path
from vlmkit.data.loading import subsample
from vlmkit.data.records import SkipCounter
from vlmkit.hub.lifecycle import HUB, EncoderCard, encoder_card
from vlmkit.ssl.clip_model import (
    ClipDualEncoder,
    build_caption_tokenizer,
    build_clip_model,
    clip_compute_loss,
    clip_image_processor,
    evaluate_clip,
    lock_text_tower,
)
from vlmkit.ssl.image_data import ClipCollator, ImageRecordDataset, read_image_records
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.loop import train
from vlmkit.training.run import Run

CARD = EncoderCard(
    title="stage 0 CLIP", stage="stage 0 (CLIP)", new_model="new CLIP (ViT + text transformer)",
    base_language_model="none (text tower of the dual encoder)", connector="none (projection heads)",
    tags=("vlmkit", "clip", "vision"), pipeline_tag="zero-shot-image-classification",
    usage="""from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

model = CLIPModel.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
image_processor = AutoImageProcessor.from_pretrained("{path}", backend="pil")
# as a stage-1 vision tower: python recipes/llava_stage1.py ... --vision_tower {path}""",
)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(ClipConfig, argv, prog="clip_pretrain", description=__doc__)
    run = Run(cfg, "clip_pretrain", hub=HUB)

    skips = SkipCounter()
    read = dict(image_folder=cfg.image_folder, allow_outside_root=cfg.allow_outside_media_root, skips=skips)
    train_records = read_image_records(
        cfg.data_path, need_caption=True, on_bad_sample=cfg.on_bad_sample, **read
    )
    if cfg.model_name_or_path:
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(cfg.model_name_or_path, backend="pil")
    else:  # a new model: its tokenizer learns the training captions (byte-level, so nothing is unknown)
        captions = [r.caption for r in train_records]
        tokenizer = build_caption_tokenizer(captions, cfg.text_vocab_size, cfg.max_text_length)
        image_processor = clip_image_processor(cfg.image_size)
    clip = build_clip_model(cfg, tokenizer)
    if cfg.lock_text_tower:
        lock_text_tower(clip)
    model = ClipDualEncoder(clip)

    train_set = ImageRecordDataset(
        train_records,
        image_processor,
        on_bad_sample=cfg.on_bad_sample,
        skips=skips,
        cache_images=cfg.cache_images,
    )
    collate = ClipCollator(tokenizer, cfg.max_text_length)
    result = train(
        cfg, run.accelerator, model, train_set, collate, clip_compute_loss, count_items=lambda b: 1
    )
    run.save(result.model, tokenizer, image_processor)

    metrics = {"train_loss": result.history[-1]["loss"], "global_step": result.global_step}
    metrics.update(parameter_layout(run.accelerator, result.model))  # world size, parameters per rank
    if cfg.eval_data_path:
        scores = run.evaluate(
            lambda trained: evaluate(cfg, trained.clip, tokenizer, image_processor, skips), result.model,
            load=lambda path: ClipDualEncoder(CLIPModel.from_pretrained(path)),
        )  # fmt: skip
        metrics.update(scores)
    return run.finish(metrics, card=encoder_card(cfg, CARD), skips=skips)


def evaluate(cfg: ClipConfig, clip, tokenizer, image_processor, skips: SkipCounter) -> dict:
    """Zero-shot classification (unseen templates) and retrieval on the held-out records."""
    records = read_image_records(
        cfg.eval_data_path, cfg.eval_image_folder or cfg.image_folder, need_caption=True,
        need_label=cfg.zero_shot_templates is not None, allow_outside_root=cfg.allow_outside_media_root, on_bad_sample=cfg.on_bad_sample, skips=skips,
    )  # fmt: skip
    records = subsample(records, cfg.max_eval_samples, cfg.seed)
    dataset = ImageRecordDataset(records, image_processor, on_bad_sample=cfg.on_bad_sample, skips=skips)
    items = [item for item in dataset if item is not None]
    pixels = torch.stack([item["pixel_values"] for item in items])
    captions = [item["caption"] for item in items]
    templates, classnames, labels = [], [], None
    if cfg.zero_shot_templates:
        spec = json.loads(Path(resolve_data_path(cfg.zero_shot_templates)).read_text(encoding="utf-8"))
        templates, classnames = spec["templates"], spec["classnames"]
        labels = torch.tensor([item["label"] for item in items])
    return evaluate_clip(
        clip, tokenizer, pixels, captions, labels, templates, classnames,
        max_length=cfg.max_text_length, batch_size=cfg.per_device_eval_batch_size,
    )  # fmt: skip


if __name__ == "__main__":
    main()
