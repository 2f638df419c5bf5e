"""Native transformers VLMs under DeepSpeed ZeRO-3 on 2 CPU processes: stage 2 of the Qwen2-VL stand-in, full
fine-tuning and LoRA. The weights are really sharded, the main process evaluates the consolidated model, and the
saved output is what plain transformers / peft load, with the run's held-out loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.launching import assert_sharded, metrics, run_recipe
from vlmkit.data.embedded import resolve_data_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ops")]
ZERO3 = "deepspeed_zero3.yaml"


@pytest.fixture(scope="module")
def few_digits(digits_data, tmp_path_factory) -> dict[str, str]:
    """16 training and 8 held-out digits records (images in the embedded dataset's folder)."""
    out = tmp_path_factory.mktemp("zero3_native_digits")
    files = {}
    for split, n in (("train", 16), ("eval", 8)):
        source = Path(resolve_data_path(f"vlmkit-data/digits/stage2_{split}.json"))
        files[split] = str(out / f"{split}.json")
        Path(files[split]).write_text(json.dumps(json.loads(source.read_text())[:n]))
        files["images"] = str(source.parent)
    return files


def _held_out_loss(model, out: Path, data: dict) -> float:
    from vlmkit.data.readers import read_dataset
    from vlmkit.eval.loss import eval_token_loss
    from vlmkit.models.native.collate import NativeCollator
    from vlmkit.models.native.encoding import NativeEncoder
    from vlmkit.models.native.loading import load_processor
    from vlmkit.training.native_sft import NativeSFTDataset, native_sft_loss

    processor = load_processor(out)
    dataset = NativeSFTDataset(
        read_dataset(data["eval"], data["images"]), NativeEncoder(processor, "qwen2_vl")
    )
    collate = NativeCollator(processor.tokenizer.pad_token_id, "qwen2_vl")
    return eval_token_loss(model.eval(), dataset, collate, 8, loss_fn=native_sft_loss)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_zero3_native_qwen2_vl_stage2(few_digits, mode, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmkit.models.native.tiny import build_tiny_native

    base = build_tiny_native("qwen2_vl")  # built here first: two ranks building it at once would race
    out = tmp_path / mode
    lora = ["--use_lora", "true", "--lora_r", "4"] if mode == "lora" else []
    run_recipe(
        "llava_stage2", "--model_name_or_path", "vlmkit-tiny/native-qwen2_vl", "--data_path", few_digits["train"],
        "--eval_data_path", few_digits["eval"], "--image_folder", few_digits["images"], "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--learning_rate", "2e-3", "--logging_steps", "1",
        "--max_new_tokens", "4", "--report_to", "none", *lora, config_file=ZERO3,
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)
    if mode == "full":
        model = AutoModelForImageTextToText.from_pretrained(out)
    else:
        model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), out)
    assert _held_out_loss(model, out, few_digits) == pytest.approx(m["eval_loss"], rel=1e-4)
