"""Stage 2 on messy LLaVA-format data: every kind of record a real dataset has, through --data_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmkit.config.parser import parse_config
from vlmkit.config.recipes import Stage2Config
from vlmkit.data.loading import sft_dataset
from vlmkit.data.records import SkipCounter
from vlmkit.data.sft_dataset import SFTCollator
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import MediaSpec, VLMProcessor, load_media_processor

MAX_LENGTH = 80
LONG_ANSWER = "The picture shows a handwritten digit, and the digit is seven. " * 12
LONG_QUESTION = "Describe the image briefly and then name the digit in the picture. " * 6


def _conv(*pairs):
    return [{"from": role, "value": text} for role, text in pairs]


def _write_dataset(root: Path) -> tuple[Path, Path, Path]:
    images = root / "media"
    files = {
        "digits/rgb/seven.png": Image.new("RGB", (28, 28), (250, 250, 250)),
        "digits/gray/deep/three.png": Image.new("L", (40, 20), 128),
        "photos/rgba/logo.png": Image.new("RGBA", (16, 16), (255, 0, 0, 90)),
        "photos/jpeg/café.jpg": Image.new("RGB", (50, 30), (10, 200, 30)),
    }
    for rel, img in files.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(images / rel)
    records = [
        {"id": "plain", "image": "digits/rgb/seven.png",
         "conversations": _conv(("human", "<image>\nWhat digit is this?"), ("gpt", "7"))},
        {"id": "image-after-question", "image": "digits/rgb/seven.png",
         "conversations": _conv(("human", "Qu'est-ce que c'est ?\n<image>"), ("gpt", "Un chiffre — 数字 7 ✓"))},
        {"id": "text-only", "conversations": _conv(
            ("human", "Count from one to three."), ("gpt", "one two three"),
            ("human", "And backwards?"), ("gpt", "three two one"))},
        {"id": "multi-turn", "image": "digits/gray/deep/three.png", "conversations": _conv(
            ("human", "<image>\nWhich digit?"), ("gpt", "3"), ("human", "Is it even?"), ("gpt", "no"),
            ("human", "As a word?"), ("gpt", "three"))},
        {"id": "rgba", "image": "photos/rgba/logo.png",
         "conversations": _conv(("human", "<image>\nWhat colour is it?"), ("gpt", "red"))},
        {"id": "no-placeholder", "image": "photos/jpeg/café.jpg",  # LLaVA adds "<image>\n" itself
         "conversations": _conv(("human", "What colour is the picture?"), ("gpt", "green"))},
        {"id": "system", "image": "digits/rgb/seven.png", "conversations": _conv(
            ("system", "Answer with one numeral."), ("human", "<image>\nDigit?"), ("gpt", "7"))},
        {"id": "long-answer", "image": "digits/gray/deep/three.png",
         "conversations": _conv(("human", "<image>\nDescribe it in detail."), ("gpt", LONG_ANSWER))},
        # Bad records: the image falls past max_length; placeholders != images; a missing file.
        {"id": "image-past-max-length", "image": "digits/rgb/seven.png",
         "conversations": _conv(("human", LONG_QUESTION + "<image>"), ("gpt", "7"))},
        {"id": "two-placeholders", "image": "digits/rgb/seven.png",
         "conversations": _conv(("human", "<image>\n<image>\nSame?"), ("gpt", "yes"))},
        {"id": "missing", "image": "digits/rgb/eight.png",
         "conversations": _conv(("human", "<image>\nWhat digit?"), ("gpt", "8"))},
    ]  # fmt: skip
    evals = [
        {"id": "e0", "image": "digits/rgb/seven.png", "conversations": _conv(("human", "<image>\nDigit?"), ("gpt", "7"))},
        {"id": "e1", "image": "photos/rgba/logo.png", "conversations": _conv(("human", "Colour?\n<image>"), ("gpt", "red"))},
        {"id": "e2", "image": "digits/gray/deep/three.png", "conversations": _conv(
            ("human", "<image>\nWhich digit?"), ("gpt", "3"), ("human", "Even?"), ("gpt", "no"))},
    ]  # fmt: skip
    train, evl = root / "train.json", root / "eval.json"
    train.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    evl.write_text(json.dumps(evals, ensure_ascii=False), encoding="utf-8")
    return train, evl, images


@pytest.fixture
def messy(tmp_path):
    train, evl, images = _write_dataset(tmp_path / "data")
    argv = [
        "--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision",
        "--language_model", "vlmkit-tiny/llama", "--data_path", str(train), "--eval_data_path", str(evl),
        "--image_folder", str(images), "--max_length", str(MAX_LENGTH), "--truncation", "drop",
        "--on_bad_sample", "skip", "--report_to", "none", "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    return argv, tmp_path / "out"


EXPECTED_SKIPS = 3  # image past max_length, two placeholders for one image, missing file


def test_messy_data_tokenizes_truncates_and_counts_skips(messy):
    from transformers import AutoTokenizer

    argv, _ = messy
    cfg = parse_config(Stage2Config, argv)
    processor = VLMProcessor(
        AutoTokenizer.from_pretrained(resolve_model_path(cfg.language_model)),
        load_media_processor(resolve_model_path(cfg.vision_tower), "image"),
        MediaSpec(modality="image", num_media_tokens=16),
    )
    skips = SkipCounter()
    ds = sft_dataset(cfg, cfg.data_path, processor, skips)
    assert skips.total == EXPECTED_SKIPS, skips.as_dict()
    reasons = " | ".join(skips.as_dict())
    assert "too long" in reasons and "placeholder" in reasons and "not found" in reasons
    assert len(ds) == 11 - EXPECTED_SKIPS
    assert max(ds.lengths()) == MAX_LENGTH
    truncated = [it for it in ds.items if len(it.input_ids) == MAX_LENGTH]
    assert len(truncated) == 1 and truncated[0].num_supervised > 0  # the long answer, cut but kept
    by_id = dict(zip(["plain", "after", "text", "multi", "rgba", "noph", "system", "long"], ds.items))
    assert by_id["text"].media == [] and len(by_id["multi"].media) == 1
    assert (
        processor.tokenizer.decode([t for t in by_id["after"].labels if t != -100])
        == "Un chiffre — 数字 7 ✓<|im_end|>"
    )
    # Every kept record decodes (grayscale and RGBA become RGB) and collates.
    batch = SFTCollator(processor.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    assert batch["media"].shape == (len(ds) - 1, 3, 32, 32)
    assert skips.total == EXPECTED_SKIPS


def test_stage2_trains_on_messy_data(recipe, messy):
    argv, out = messy
    metrics = recipe("llava_stage2").main(
        [*argv, "--max_steps", "3", "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "2"]
    )
    assert metrics["global_step"] == 3
    assert metrics["skipped_samples"] == EXPECTED_SKIPS
    assert sum(json.loads((out / "skipped.json").read_text()).values()) == EXPECTED_SKIPS
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_loss"] > 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["items"] > 0 and r["loss"] == r["loss"] for r in log)  # finite, supervised every step
    examples = json.loads((out / "eval_examples.json").read_text())
    assert [e["reference"] for e in examples] == ["7", "red", "no"]
