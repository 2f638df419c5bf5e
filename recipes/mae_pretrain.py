"""Stage 0 (MAE): pretrain a ViT image encoder by reconstructing randomly masked patches.

    python recipes/mae_pretrain.py --config recipes/configs/digits_mae.yaml
    accelerate launch --num_processes 2 recipes/mae_pretrain.py --config recipes/configs/digits_mae.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/mae_pretrain.py \
        --data_path images.jsonl --image_folder images/ --image_size 224 --patch_size 16 --hidden_size 768 \
        --num_layers 12 --num_heads 12 --decoder_hidden_size 512 --decoder_layers 8 --norm_pix_loss true

The encoder sees only the visible patches (mask_ratio 0.75 by default, seeded, replayed on resume); the loss
is the MSE on masked patches. Writes a `ViTMAEForPreTraining` checkpoint with its image processor,
config.yaml, metrics.json (eval_linear_probe_accuracy of the frozen encoder on held-out images, and
eval_linear_probe_accuracy_random_init of a random encoder of the same shape), train_log.jsonl (the
masked-patch loss), loss.png and README.md into --output_dir. Stage 1 takes that directory as it is:

    python recipes/llava_stage1.py --config recipes/configs/digits_llava_stage1.yaml --vision_tower outputs/digits/mae
"""

from __future__ import annotations

import torch

from vlmkit.config.parser import parse_config
from vlmkit.config.ssl_image import MaeConfig
from vlmkit.data.loading import subsample
from vlmkit.data.records import SkipCounter
from vlmkit.hub.lifecycle import HUB, EncoderCard, encoder_card
from vlmkit.models.encoders import load_encoder
from vlmkit.ssl.image_data import ImageCollator, ImageRecordDataset, read_image_records
from vlmkit.ssl.mae_model import (
    PatchMasker,
    build_mae_model,
    mae_image_processor,
    mae_loss_fn,
    probe_accuracy,
    random_init_encoder,
)
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.loop import train
from vlmkit.training.run import Run

CARD = EncoderCard(
    title="stage 0 MAE", stage="stage 0 (MAE)", new_model="new ViT-MAE",
    connector="none (MAE decoder for pretraining only)", tags=("vlmkit", "mae", "vision"),
    pipeline_tag="image-feature-extraction",
    usage="""from transformers import AutoImageProcessor, ViTMAEModel

encoder = ViTMAEModel.from_pretrained("{path}", mask_ratio=0.0)  # every patch (pass noise=arange to keep order)
image_processor = AutoImageProcessor.from_pretrained("{path}", backend="pil")
# as a stage-1 vision tower: python recipes/llava_stage1.py ... --vision_tower {path}""",
)  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(MaeConfig, argv, prog="mae_pretrain", description=__doc__)
    run = Run(cfg, "mae_pretrain", hub=HUB)

    model = build_mae_model(cfg)
    if cfg.model_name_or_path:
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(cfg.model_name_or_path, backend="pil")
    else:
        image_processor = mae_image_processor(cfg.image_size)
    num_patches = (model.config.image_size // model.config.patch_size) ** 2
    masker = PatchMasker(num_patches, cfg.mask_ratio, cfg.seed, rank=run.accelerator.process_index)

    skips = SkipCounter()
    read = dict(image_folder=cfg.image_folder, allow_outside_root=cfg.allow_outside_media_root, skips=skips)
    train_records = read_image_records(cfg.data_path, on_bad_sample=cfg.on_bad_sample, **read)
    train_set = ImageRecordDataset(
        train_records,
        image_processor,
        on_bad_sample=cfg.on_bad_sample,
        skips=skips,
        cache_images=cfg.cache_images,
    )
    result = train(
        cfg, run.accelerator, model, train_set, ImageCollator(), mae_loss_fn(masker),
        count_items=lambda b: 1, extra_state={"patch_masker": masker},
    )  # fmt: skip
    run.save(result.model, image_processor)

    history = result.history
    metrics = {
        "train_loss": history[-1]["loss"],
        "train_loss_first": history[0]["loss"],
        "global_step": result.global_step,
    }
    metrics.update(parameter_layout(run.accelerator, result.model))  # world size, parameters per rank
    if cfg.eval_data_path:  # the probe reads the saved encoder, as stage 1 loads it
        metrics.update(run.evaluate(lambda: evaluate(cfg, run.out, train_set, image_processor, skips)))
    return run.finish(metrics, card=encoder_card(cfg, CARD), skips=skips)


def _pixels_and_labels(dataset: ImageRecordDataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [item for item in dataset if item is not None]
    if any(item["label"] < 0 for item in items):
        raise ValueError(f"{dataset.records[0].source}: the linear probe needs a 'label' in every record")
    return torch.stack([it["pixel_values"] for it in items]), torch.tensor([it["label"] for it in items])


def evaluate(cfg: MaeConfig, out, train_set: ImageRecordDataset, image_processor, skips: SkipCounter) -> dict:
    """Linear probe on the saved encoder (loaded as stage 1 loads it) and on a random-init one."""
    records = read_image_records(
        cfg.eval_data_path, cfg.eval_image_folder or cfg.image_folder, need_label=True,
        allow_outside_root=cfg.allow_outside_media_root, on_bad_sample=cfg.on_bad_sample, skips=skips,
    )  # fmt: skip
    records = subsample(records, cfg.max_eval_samples, cfg.seed)
    eval_set = ImageRecordDataset(records, image_processor, on_bad_sample=cfg.on_bad_sample, skips=skips)
    train_pixels, train_labels = _pixels_and_labels(train_set)
    eval_pixels, eval_labels = _pixels_and_labels(eval_set)
    probe = dict(
        pooling=cfg.probe_pooling, labels_per_class=cfg.probe_labels_per_class, seed=cfg.seed,
        batch_size=cfg.per_device_eval_batch_size,
    )  # fmt: skip
    trained = load_encoder(str(out)).eval()
    baseline = random_init_encoder(trained.config, cfg.seed)
    return {
        "eval_linear_probe_accuracy": probe_accuracy(
            trained, train_pixels, train_labels, eval_pixels, eval_labels, **probe
        ),
        "eval_linear_probe_accuracy_random_init": probe_accuracy(
            baseline, train_pixels, train_labels, eval_pixels, eval_labels, **probe
        ),
    }


if __name__ == "__main__":
    main()
