"""Stage 2 on native transformers VLMs through the real recipe: `--model_name_or_path vlmkit-tiny/native-<family>`.

A few steps on 48 embedded digits, LoRA and full, then what a user does with the output directory: plain
transformers / peft load it and give the trained model's held-out loss (so its logits) to float precision;
`vlmkit merge` folds the adapter into a plain transformers checkpoint and `vlmkit generate` answers from both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers.digits_subset import digits_subset
from vlmkit.cli import main as cli_main
from vlmkit.data.packing import PackedDataset
from vlmkit.data.readers import read_dataset
from vlmkit.eval.loss import eval_token_loss
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import NativeModelError, load_processor
from vlmkit.models.native.tiny import build_tiny_native
from vlmkit.training.native_sft import NativeSFTDataset, native_sft_loss

STEPS = "3"


@pytest.fixture(scope="module")
def small_digits(digits_data, tmp_path_factory) -> dict[str, str]:
    """48 training and 16 held-out digits records (their images stay in the embedded dataset's folder)."""
    return digits_subset(tmp_path_factory.mktemp("native_digits"), train=48, eval=16)


def run_stage2(recipe, data: dict, family: str, out: Path, *extra: str) -> dict:
    argv = [
        "--model_name_or_path", f"vlmkit-tiny/native-{family}", "--data_path", data["train"],
        "--eval_data_path", data["eval"], "--image_folder", data["images"], "--output_dir", str(out),
        "--max_steps", STEPS, "--per_device_train_batch_size", "8", "--learning_rate", "2e-3",
        "--report_to", "none", "--max_new_tokens", "4", *extra,
    ]  # fmt: skip
    return recipe("llava_stage2").main(argv)


def held_out_loss(model, processor, data: dict) -> float:
    """The held-out loss per supervised token, computed outside the recipe."""
    encoder = NativeEncoder(processor, model.config.model_type)
    dataset = NativeSFTDataset(read_dataset(data["eval"], data["images"]), encoder)
    collate = NativeCollator(processor.tokenizer.pad_token_id, model.config.model_type)
    return eval_token_loss(model, dataset, collate, 16, loss_fn=native_sft_loss)


def generate(capsys, checkpoint: Path, example: dict) -> str:
    """`vlmkit generate` on an eval example's image and question; the printed answer."""
    capsys.readouterr()
    argv = ["generate", str(checkpoint), "--image", example["media"], "--prompt", example["question"]]
    assert cli_main([*argv, "--max_new_tokens", "4"]) == 0
    return capsys.readouterr().out.strip()


def front_matter(out: Path) -> dict:
    return yaml.safe_load((out / "README.md").read_text().split("---")[1])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_lora_adapter_loads_with_plain_peft_and_gives_the_trained_model(
    recipe, small_digits, family, tmp_path, capsys
):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "lora"
    metrics = run_stage2(
        recipe, small_digits, family, out, "--use_lora", "true", "--lora_modules_to_save", "lm_head"
    )
    assert {"eval_loss", "eval_accuracy"} <= set(metrics) and metrics["global_step"] == int(STEPS)
    files = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
    } <= files
    assert not files & {"model.safetensors", "config.json"}  # the base weights are not copied
    keys = load_file(str(out / "adapter_model.safetensors"))
    connector = {"qwen2_vl": "visual.merger.", "llava": "multi_modal_projector."}[family]
    assert any("lora_A" in k for k in keys) and any(connector in k for k in keys)
    assert all("lora_" in k or connector in k or "lm_head" in k for k in keys), sorted(keys)
    meta = front_matter(out)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == f"vlmkit-tiny/native-{family}"

    base_dir = build_tiny_native(family)
    base = AutoModelForImageTextToText.from_pretrained(base_dir)
    processor = load_processor(out)  # AutoProcessor, image-only where torchvision is missing
    untrained = held_out_loss(base, processor, small_digits)
    model = PeftModel.from_pretrained(base, out)
    reloaded = held_out_loss(model, processor, small_digits)
    assert reloaded == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert abs(untrained - metrics["eval_loss"]) > 1e-3  # the adapter (and connector) changed the model

    # `vlmkit merge` writes a full checkpoint that plain transformers loads with the same logits;
    # `vlmkit generate` answers the same from the adapter and from the merged model.
    merged = tmp_path / "merged"
    assert cli_main(["merge", str(out), str(merged)]) == 0
    assert not (merged / "adapter_config.json").exists()
    plain = AutoModelForImageTextToText.from_pretrained(merged)
    assert held_out_loss(plain, load_processor(merged), small_digits) == pytest.approx(reloaded, rel=1e-4)
    first = json.loads((out / "eval_examples.json").read_text())[0]  # the recipe's own held-out answer
    for checkpoint in (out, merged):
        assert generate(capsys, checkpoint, first) == first["prediction"]
    # `vlmkit eval` on the adapter measures the recipe's held-out accuracy again
    argv = ["eval", str(out), "--data_path", small_digits["eval"], "--image_folder", small_digits["images"]]
    assert cli_main([*argv, "--max_new_tokens", "4", "--output_file", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["eval_accuracy"] == metrics["eval_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_full_fine_tuning_saves_a_plain_transformers_checkpoint(recipe, small_digits, family, tmp_path):
    from transformers import AutoModelForImageTextToText

    out = tmp_path / "full"
    metrics = run_stage2(recipe, small_digits, family, out)
    meta = front_matter(out)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert json.loads((out / "config.json").read_text())["model_type"] == family
    model = AutoModelForImageTextToText.from_pretrained(out)
    trained = held_out_loss(model, load_processor(out), small_digits)
    assert trained == pytest.approx(metrics["eval_loss"], rel=1e-5)
    # the vision tower stayed frozen (the default), the language model moved
    base = AutoModelForImageTextToText.from_pretrained(build_tiny_native(family))
    tower = "visual.blocks.0" if family == "qwen2_vl" else "vision_tower"
    for (name, before), after in zip(base.state_dict().items(), model.state_dict().values()):
        if tower in name:
            assert torch.equal(before, after), name
    lm = [n for n in base.state_dict() if "language_model" in n and n.endswith("q_proj.weight")]
    assert not torch.equal(base.state_dict()[lm[0]], model.state_dict()[lm[0]])


def test_a_language_model_is_not_a_native_vlm(recipe, small_digits, tmp_path):
    """A causal LM directory as --model_name_or_path: a clear error naming what to pass instead."""
    from vlmkit.models.tiny import build_tiny

    with pytest.raises(
        NativeModelError, match="not an image-text model.*--vision_tower and --language_model"
    ):
        recipe("llava_stage2").main(
            ["--model_name_or_path", str(build_tiny("llama")), "--data_path", small_digits["train"],
             "--image_folder", small_digits["images"], "--output_dir", str(tmp_path / "o"), "--report_to", "none"]
        )  # fmt: skip


def test_native_vlm_refuses_packing_with_a_clear_error(recipe, small_digits, tmp_path):
    """PaliGemma's prefix attends both ways: a packed causal mask would change it, so it is refused by name."""
    with pytest.raises(ValueError, match="packing is not available for native paligemma.*without --packing"):
        run_stage2(recipe, small_digits, "paligemma", tmp_path / "o", "--packing", "true")


@pytest.mark.slow
@pytest.mark.parametrize("family, lora", [("qwen2_vl", "false"), ("llava", "true")])
def test_packed_sft_trains_and_evaluates_as_unpacked(
    recipe, small_digits, family, lora, tmp_path, monkeypatch
):
    """--packing (M-RoPE Qwen2-VL in full, LLaVA with LoRA): rows of several samples train; the recipe's
    held-out loss (packed collator, one sample per row) is the loss the saved model gives unpacked."""
    from vlmkit.training import vlm_kinds

    packed = []
    monkeypatch.setattr(vlm_kinds, "PackedDataset", lambda *a: packed.append(PackedDataset(*a)) or packed[-1])
    out = tmp_path / "packed"
    metrics = run_stage2(
        recipe, small_digits, family, out, "--packing", "true", "--packing_max_tokens", "512", "--use_lora", lora,
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "4",
    )  # fmt: skip
    assert metrics["global_step"] == int(STEPS) and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert len(packed[0].dataset) == 48 and len(packed[0]) <= 12  # several samples per row
    model = vlm_kinds.NATIVE.load(str(out))  # a plain transformers checkpoint, or base + adapter (peft)
    loss = held_out_loss(model, load_processor(out), small_digits)
    assert loss == pytest.approx(metrics["eval_loss"], rel=1e-5)


@pytest.mark.slow
def test_qlora_config_path_trains_a_4bit_base(recipe, small_digits, tmp_path, monkeypatch):
    """--use_lora --load_in_4bit: the language model loads in 4-bit nf4 (bitsandbytes runs on the CPU too)."""
    from vlmkit.training import vlm_kinds

    pytest.importorskip("bitsandbytes")
    quantized, real_apply = [], vlm_kinds.apply_native_lora

    def recording_apply(model, **kwargs):  # what LoRA is applied to: the model as the recipe loaded it
        quantized.extend(n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit")
        return real_apply(model, **kwargs)

    monkeypatch.setattr(vlm_kinds, "apply_native_lora", recording_apply)
    out = tmp_path / "qlora"
    metrics = run_stage2(recipe, small_digits, "llava", out, "--use_lora", "true", "--load_in_4bit", "true")
    assert metrics["global_step"] == int(STEPS) and torch.isfinite(torch.tensor(metrics["eval_loss"]))
    keys = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_B" in k for k in keys) and any("multi_modal_projector." in k for k in keys)
    assert quantized and all(".language_model." in n for n in quantized), quantized


def test_qlora_without_lora_is_refused(recipe, small_digits, tmp_path):
    with pytest.raises(ValueError, match="add --use_lora"):
        run_stage2(recipe, small_digits, "llava", tmp_path / "o", "--load_in_4bit", "true")


# Proof of learning through the recipe: held-out answer accuracy (greedy generation, exact match) on 120 of
# the 360 eval digits, never trained on; chance is 0.10. The (random-init) vision tower stays frozen. Full
# fine-tuning trains the language model and the connector; LoRA trains adapters on the language model's
# linear layers plus the connector and lm_head in full (the stand-in's LM is random-init, as in the composite
# model's shipped digits LoRA config). family, mode -> (steps, LoRA rank, accuracy to reach); batch 16, lr 2e-3.
BUDGETS = {
    ("qwen2_vl", "full"): (500, 0, 0.90),
    ("llava", "full"): (500, 0, 0.90),
    ("qwen2_vl", "lora"): (800, 32, 0.80),
    ("llava", "lora"): (800, 32, 0.80),
}


@pytest.mark.slow
@pytest.mark.parametrize("family,mode", sorted(BUDGETS))
def test_tiny_native_vlm_learns_the_digits(recipe, digits_data, family, mode, tmp_path, capsys):
    steps, rank, target = BUDGETS[family, mode]
    lora = ["--use_lora", "true", "--lora_r", str(rank), "--lora_alpha", str(2 * rank), "--lora_dropout", "0",
            "--lora_modules_to_save", "lm_head"] if mode == "lora" else []  # fmt: skip
    out = tmp_path / "run"
    metrics = recipe("llava_stage2").main([
        "--model_name_or_path", f"vlmkit-tiny/native-{family}", "--data_path", "vlmkit-data/digits/stage2_train.json",
        "--eval_data_path", "vlmkit-data/digits/stage2_eval.json", "--max_eval_samples", "120",
        "--output_dir", str(out), "--max_steps", str(steps), "--per_device_train_batch_size", "16",
        "--per_device_eval_batch_size", "40", "--learning_rate", "2e-3", "--warmup_ratio", "0.05",
        "--logging_steps", "50", "--seed", "0", "--report_to", "none", *lora,
    ])  # fmt: skip
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    print(family, mode, metrics)
    assert log[-1]["loss"] < log[0]["loss"] / 4
    examples = json.loads((out / "eval_examples.json").read_text())
    assert metrics["eval_accuracy"] >= target, (metrics, examples[:5])
    right = next(e for e in examples if e["correct"])
    assert generate(capsys, out, right) == right["prediction"] and right["prediction"]


@pytest.mark.slow
def test_pixel_budget_reaches_the_saved_qwen2_vl_processor(recipe, small_digits, tmp_path):
    """--min_pixels/--max_pixels resize images in training and are saved with the processor."""
    out = tmp_path / "budget"
    run_stage2(recipe, small_digits, "qwen2_vl", out, "--max_steps", "1", "--eval_data_path", "none",
               "--min_pixels", "4096", "--max_pixels", "4096")  # fmt: skip
    images = load_processor(out).image_processor
    assert (images.size["shortest_edge"], images.size["longest_edge"]) == (4096, 4096)


@pytest.mark.parametrize(
    "model", [["--model_name_or_path", "vlmkit-tiny/native-llava"],
              ["--vision_tower", "vlmkit-tiny/clip-vision", "--language_model", "vlmkit-tiny/llama"]],
)  # fmt: skip
def test_pixel_budget_is_refused_where_resolution_is_fixed(recipe, small_digits, model, tmp_path):
    argv = [*model, "--data_path", small_digits["train"], "--image_folder", small_digits["images"],
            "--output_dir", str(tmp_path / "o"), "--report_to", "none", "--max_pixels", "4096"]  # fmt: skip
    with pytest.raises(ValueError, match="max_pixels"):
        recipe("llava_stage2").main(argv)
