"""Stage 0 CLIP on the embedded digits, the shipped config run in full: zero-shot and retrieval on held-out
images. (MAE runs in tests/pipeline/test_pipeline_digits.py, with stage 1 and stage 2 on its encoder.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
RUN_FILES = ("config.yaml", "metrics.json", "train_log.jsonl", "loss.png", "README.md")


def _pretrain(recipe, name: str, config: str, out: Path) -> dict:
    metrics = recipe(name).main(
        ["--config", str(CONFIGS / config), "--output_dir", str(out), "--report_to", "none"]
    )
    for file in RUN_FILES:
        assert (out / file).is_file(), file
    assert json.loads((out / "metrics.json").read_text()) == metrics
    return metrics


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_clip_zero_shot_and_retrieval_on_held_out_digits(recipe, digits_data, tmp_path):
    out = tmp_path / "clip"
    metrics = _pretrain(recipe, "clip_pretrain", "digits_clip.yaml", out)
    # Templates never seen in training; chance is 10%.
    assert metrics["eval_zero_shot_accuracy"] >= 0.85, metrics
    for direction in ("image_to_text", "text_to_image"):
        r1, r5 = metrics[f"eval_{direction}_r1"], metrics[f"eval_{direction}_r5"]
        assert 5 / metrics["retrieval_pairs"] < r1 <= r5, metrics  # far above picking at random
    losses = _losses(out)
    assert losses[-1] < 0.5 * losses[0]
