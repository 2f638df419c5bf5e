"""The LLaVA ablation: at the same short stage-2 budget, starting from the stage-1 connector beats starting
from a fresh one. Both arms share the text-pretrained LLM, the vision tower and the connector's shape; only
the connector's initialisation differs. Averaged over three seeds."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "configs"
STAGE2_BUDGET = ["--max_steps", "60", "--max_eval_samples", "120", "--report_to", "none"]
SEEDS = (1, 2, 3)


@pytest.mark.slow
def test_stage1_connector_beats_a_fresh_one_in_stage2(recipe, digits_data, tmp_path):
    lm, stage1 = tmp_path / "lm", tmp_path / "stage1"
    recipe("lm_pretrain").main(
        ["--config", str(CONFIGS / "digits_lm_pretrain.yaml"), "--output_dir", str(lm), "--report_to", "none",
         "--max_eval_blocks", "16"]
    )  # fmt: skip
    recipe("llava_stage1").main(
        ["--config", str(CONFIGS / "digits_llava_stage1.yaml"), "--language_model", str(lm), "--output_dir",
         str(stage1), "--report_to", "none", "--max_eval_samples", "16"]
    )  # fmt: skip
    stage2 = [str(CONFIGS / "digits_llava_stage2_weak.yaml"), *STAGE2_BUDGET]
    fresh_parts = [
        "--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision", "--language_model", str(lm),
        "--connector_downsample", "16",
    ]  # fmt: skip
    accuracy = {"stage1": [], "fresh": []}
    for seed in SEEDS:
        for arm, start in (("stage1", ["--model_name_or_path", str(stage1)]), ("fresh", fresh_parts)):
            out = tmp_path / f"{arm}_{seed}"
            metrics = recipe("llava_stage2").main(
                ["--config", *stage2[:1], *start, "--output_dir", str(out), "--seed", str(seed), *stage2[1:]]
            )
            accuracy[arm].append(metrics["eval_accuracy"])
    gain = statistics.mean(accuracy["stage1"]) - statistics.mean(accuracy["fresh"])
    print(f"stage-2 held-out accuracy by seed {SEEDS}: {accuracy}; gain {gain:.3f}")
    assert gain >= 0.05, accuracy
