"""Native transformers VLMs sharded on 2 CPU processes, DeepSpeed ZeRO-3 and FSDP2: stage 2 of the Qwen2-VL
stand-in, full fine-tuning and LoRA. The weights are really sharded, the main process evaluates the consolidated
model, and the saved output is what plain transformers / peft load, with the run's held-out loss. Full fine-tuning
under FSDP2 also follows the one-process loss curve (same global batch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.digits_subset import digits_subset
from tests.helpers.launching import assert_sharded, losses, metrics, run_recipe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("deepspeed_ops")]
LAUNCH_CONFIGS = {"zero3": "deepspeed_zero3.yaml", "fsdp2": "fsdp2.yaml"}


@pytest.fixture(scope="module")
def few_digits(digits_data, tmp_path_factory) -> dict[str, str]:
    """16 training and 8 held-out digits records (images in the embedded dataset's folder)."""
    return digits_subset(tmp_path_factory.mktemp("sharded_native_digits"), train=16, eval=8)


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


def _stage2(data: dict, out: Path, batch_size: int, *extra: str, config_file: str | None = None) -> None:
    run_recipe(
        "llava_stage2", "--model_name_or_path", "vlmkit-tiny/native-qwen2_vl", "--data_path", data["train"],
        "--eval_data_path", data["eval"], "--image_folder", data["images"], "--output_dir", str(out),
        "--max_steps", "2", "--per_device_train_batch_size", str(batch_size), "--learning_rate", "2e-3",
        "--logging_steps", "1", "--max_new_tokens", "4", "--report_to", "none", *extra, config_file=config_file,
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("launch", list(LAUNCH_CONFIGS))
def test_sharded_native_qwen2_vl_stage2(few_digits, launch, mode, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmkit.models.native.tiny import build_tiny_native

    base = build_tiny_native("qwen2_vl")  # built here first: two ranks building it at once would race
    out = tmp_path / mode
    lora = ["--use_lora", "true", "--lora_r", "4"] if mode == "lora" else []
    _stage2(few_digits, out, 4, *lora, config_file=LAUNCH_CONFIGS[launch])
    m = metrics(out)
    assert_sharded(m)
    if mode == "full":
        model = AutoModelForImageTextToText.from_pretrained(out)
    else:
        model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), out)
    assert _held_out_loss(model, out, few_digits) == pytest.approx(m["eval_loss"], rel=1e-4)
    if launch == "fsdp2" and mode == "full":
        one = tmp_path / "one_process"
        _stage2(few_digits, one, 8)
        assert losses(out) == pytest.approx(losses(one), abs=1e-4)  # observed: equal to the last digit
        assert m["eval_loss"] == pytest.approx(metrics(one)["eval_loss"], abs=1e-4)
