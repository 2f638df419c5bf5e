"""Fine-tune a tiny native VLM on the embedded digits through the shared training loop (a test harness).

Not a test module: `from tests.helpers.native_finetune import finetune`.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmkit.config.args import EpochArgs, OptimArgs, RunArgs
from vlmkit.data.embedded import resolve_data_path
from vlmkit.data.readers import read_dataset
from vlmkit.eval.answers import answer_accuracy
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_native_vlm
from vlmkit.models.native.tiny import build_tiny_native
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.loop import train
from vlmkit.training.native_parts import apply_native_lora, set_native_trainable
from vlmkit.training.native_sft import NativeSFTDataset, native_sft_loss


@dataclass
class LoopConfig(OptimArgs, EpochArgs, RunArgs):
    """RunArgs + EpochArgs + OptimArgs, as the recipe configs of the shared loop have them."""


def digits(split: str, limit: int = 0, seed: int = 0) -> list:
    """The embedded digits stage-2 records of `split`; `limit` > 0 takes a seeded random subset."""
    samples = read_dataset(resolve_data_path(f"vlmkit-data/digits/stage2_{split}.json"))
    if limit <= 0 or limit >= len(samples):
        return samples
    return random.Random(seed).sample(samples, limit)


def finetune(
    family: str,
    out: Path,
    *,
    lora: bool,
    steps: int,
    lr: float,
    n_train: int = 0,
    n_eval: int = 120,
    batch_size: int = 16,
    lora_r: int = 16,
    tune_vision_tower: bool = False,
) -> dict:
    """Train the tiny `family` stand-in; returns accuracy, seconds and the loss history."""
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = load_native_vlm(build_tiny_native(family))
    if lora:
        model = apply_native_lora(model, r=lora_r, alpha=2 * lora_r, modules_to_save=["lm_head"])
    else:
        set_native_trainable(model, tune_vision_tower=tune_vision_tower)
    encoder = NativeEncoder(processor, model.config.model_type)
    t0 = time.perf_counter()
    dataset = NativeSFTDataset(digits("train", n_train), encoder)
    encode_seconds = time.perf_counter() - t0
    cfg = LoopConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        warmup_ratio=0.05, lr_scheduler_type="cosine", mixed_precision="no", report_to=["none"], seed=0,
        logging_steps=50, weight_decay=0.0,
    )  # fmt: skip
    accelerator = make_accelerator(output_dir=cfg.output_dir, gradient_accumulation_steps=1,
                                   mixed_precision="no", report_to=["none"])  # fmt: skip
    collate = NativeCollator(processor.tokenizer.pad_token_id, model.config.model_type)
    result = train(cfg, accelerator, model, dataset, collate, native_sft_loss)
    accuracy, examples = answer_accuracy(result.model, encoder, digits("eval", n_eval), batch_size=40)
    return {
        "accuracy": accuracy,
        "train_seconds": result.train_seconds,
        "encode_seconds": encode_seconds,
        "first_loss": result.history[0]["loss"],
        "last_loss": result.history[-1]["loss"],
        "examples": examples,
    }
