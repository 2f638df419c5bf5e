"""Batches where one rank holds an image and the other only text keep both ranks on the same forward path:
under ZeRO-3 a rank that skipped the vision tower would leave the other waiting in its all-gathers forever. The
2-process run finishes and follows the 1-process curve on the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.launching import assert_same_curve, assert_sharded, metrics, run_recipe

TEXT_ONLY = [
    ("What is two plus two?", "4"),
    ("Name the digit after six.", "7"),
    ("How many sides has a triangle?", "3"),
]


def _mixed_data(digits_data: Path) -> Path:
    """Image questions interleaved with text-only ones (same folder as the images, so paths resolve)."""
    images = json.loads((digits_data / "stage2_train.json").read_text())[:48]
    rows = []
    for i, row in enumerate(images):
        rows.append(row)
        question, answer = TEXT_ONLY[i % len(TEXT_ONLY)]
        turns = [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        rows.append({"id": f"text-{i}", "conversations": turns})
    path = digits_data / "mixed_media_train.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.mark.slow
def test_zero3_with_image_and_text_only_ranks_finishes_on_the_one_process_curve(digits_data, tmp_path):
    from vlmkit.data.sampling import EpochSampler

    data = str(_mixed_data(digits_data))
    # Batch 1 per rank: at step k rank 0 trains on row order[2k] and rank 1 on order[2k + 1] (Accelerate deals
    # the batches out in turn); even rows have an image, odd ones text only. The seeded order mixes them:
    order = list(EpochSampler(2 * 48, seed=7))
    assert any(order[2 * k] % 2 != order[2 * k + 1] % 2 for k in range(4)), order[:8]
    common = [
        "--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision", "--language_model",
        "vlmkit-tiny/llama", "--data_path", data, "--eval_data_path", "none", "--max_steps", "4",
        "--logging_steps", "1", "--report_to", "none", "--seed", "7", "--learning_rate", "0.002",
    ]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    run_recipe("llava_stage2", *common, "--per_device_train_batch_size", "2", "--output_dir", str(one))
    run_recipe(
        "llava_stage2", *common, "--per_device_train_batch_size", "1", "--output_dir", str(two),
        config_file="deepspeed_zero3.yaml", timeout=300,
    )  # fmt: skip
    assert_sharded(metrics(two))
    assert_same_curve(two, one)
