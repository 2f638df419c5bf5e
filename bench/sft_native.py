"""The native-VLM rows of `sft_throughput.py`: vlmkit (packed) vs TRL's SFTTrainer on a tiny Qwen2-VL.

Both load the same stand-in directory (`vlmkit-tiny/native-qwen2_vl`: transformers' own
`Qwen2VLForConditionalGeneration` and `Qwen2VLProcessor`, so TRL trains it exactly as a user would), train
the same parameters (`NativeKind.set_trainable`: vision tower frozen, merger and language model in full) on
the same conversations, rendered by the same chat template, with the same assistant-only labels (answer and
`<|im_end|>`): vlmkit finds them by rendering turn by turn, TRL from the `{% generation %}` markers of
`TRL_TEMPLATE` (the stand-in's template with markers; `check_same_labels` checks both give the same tokens).
vlmkit packs samples with per-sample M-RoPE positions; TRL pads (no packing for images).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from vlmkit.models.native.templates import _content  # the stand-in template's own Jinja for a message

MODEL = "vlmkit-tiny/native-qwen2_vl"
_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
TRL_TEMPLATE = (  # QWEN2_VL with the assistant's answer and <|im_end|> inside generation markers
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}" + _content(_IMAGE) + "{{ '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{% else %}" + _content(_IMAGE) + "{{ '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)  # fmt: skip


def _cfg(args, data: Path, images: Path, out: Path, rows: int, learning_rate: float = 2e-4):
    from vlmkit.config.parser import parse_config
    from vlmkit.config.recipes import Stage2Config

    argv = [
        "--model_name_or_path", MODEL, "--data_path", str(data), "--image_folder", str(images),
        "--output_dir", str(out), "--max_length", str(args.max_length), "--per_device_train_batch_size", str(rows),
        "--num_train_epochs", "1", "--learning_rate", str(learning_rate), "--lr_scheduler_type", "constant",
        "--warmup_ratio", "0", "--report_to", "none", "--logging_steps", "1000000", "--mixed_precision", "no",
        "--packing", "true", "--packing_max_tokens", str(args.packing_max_tokens), "--eval_generation", "false",
    ]  # fmt: skip
    return parse_config(Stage2Config, argv)


def native_lengths(args, data: Path, images: Path) -> list[int]:
    """Tokens per sample as the stand-in's processor encodes them (to size packed steps)."""
    from vlmkit.data.records import SkipCounter
    from vlmkit.training.vlm_kinds import NATIVE

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(args, data, images, Path(tmp), 1)
        _, encoder = NATIVE.build(cfg)
        return NATIVE.eval_data(cfg, str(data), encoder, SkipCounter()).lengths()


def run_vlmkit_native(args, data: Path, images: Path, rows: int, learning_rate: float) -> tuple:
    """One epoch of the stage-2 recipe's native path with --packing (`NativeKind`, the shared loop).

    Returns (wall seconds, CPU seconds, `BatchStats`, the loop's seconds, optimizer steps)."""
    from common import BatchStats, timed

    from vlmkit.data.records import SkipCounter
    from vlmkit.training.accelerator import make_accelerator
    from vlmkit.training.loop import train
    from vlmkit.training.vlm_kinds import NATIVE

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(args, data, images, Path(tmp), rows, learning_rate)
        accelerator = make_accelerator(output_dir=tmp, gradient_accumulation_steps=1, mixed_precision="no",
                                       report_to=["none"])  # fmt: skip
        torch.manual_seed(0)
        model, encoder = NATIVE.build(cfg)
        NATIVE.set_trainable(model, cfg, "instruct")

        def epoch():
            train_set, collate, sampler = NATIVE.train_data(cfg, encoder, SkipCounter(), model=model)
            stats = BatchStats(collate)
            result = train(cfg, accelerator, model, train_set, stats, NATIVE.loss, sampler=sampler)
            return stats, result

        seconds, cpu, (stats, result) = timed(epoch)
    return seconds, cpu, stats, result.train_seconds, result.global_step


def trl_rows(data: Path, images: Path) -> list[dict]:
    """The same samples as TRL dataset rows: vlmkit's own messages (`sample_messages`) and PIL images."""
    from PIL import Image

    from vlmkit.data.readers import read_dataset
    from vlmkit.models.native.encoding import sample_messages

    rows = []
    for sample in read_dataset(str(data), str(images)):
        messages = sample_messages(sample)
        for message in messages:
            for part in message["content"]:
                part.setdefault("text", None)  # one schema for every part (a datasets column)
        rows.append({"messages": messages, "images": [Image.open(p).convert("RGB") for p in sample.images]})
    return rows


def trl_model_and_processor():
    """The stand-in as TRL gets it: `AutoModelForImageTextToText` + its processor, template with markers."""
    from transformers import AutoModelForImageTextToText

    from vlmkit.models.native.loading import load_processor
    from vlmkit.models.native.tiny import resolve_native_model_path
    from vlmkit.training.vlm_kinds import NATIVE

    path = resolve_native_model_path(MODEL)
    model = AutoModelForImageTextToText.from_pretrained(path)
    NATIVE.set_trainable(model, _Defaults(), "instruct")  # the very parameters vlmkit trains
    processor = load_processor(path)
    processor.chat_template = TRL_TEMPLATE
    return model, processor


class _Defaults:
    tune_encoder, tune_connector = False, True


def check_same_labels(data: Path, images: Path) -> int:
    """Supervised tokens of every sample, vlmkit's encoder and TRL's collator alike; raises if they differ."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmkit.data.readers import read_dataset
    from vlmkit.models.native.encoding import NativeEncoder
    from vlmkit.models.native.loading import load_processor
    from vlmkit.models.native.tiny import resolve_native_model_path

    encoder = NativeEncoder(load_processor(resolve_native_model_path(MODEL)), "qwen2_vl")
    _, processor = trl_model_and_processor()
    collate = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    total = 0
    for sample, row in zip(read_dataset(str(data), str(images)), trl_rows(data, images), strict=True):
        ours = encoder.encode(sample)
        theirs = collate([{**row, "images": row["images"] or []}])
        if not torch.equal(ours["input_ids"], theirs["input_ids"]) or not torch.equal(
            ours["labels"], theirs["labels"]
        ):
            raise RuntimeError(f"vlmkit and TRL encode sample {sample.index} differently")
        total += int((ours["labels"] != -100).sum())
    return total
