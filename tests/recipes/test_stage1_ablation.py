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
    aligned = recipe("llava_stage1").main(
        ["--config", str(CONFIGS / "digits_llava_stage1.yaml"), "--language_model", str(lm), "--output_dir",
         str(stage1), "--report_to", "none", "--max_eval_samples", "16"]
    )  # fmt: skip
    # Stage 1 learned to pass the image on (random-init tiny CLIP tower here; measured: eval_loss 0.500 against
    # 0.922 text-only, image gain 0.216 nats/token or 2.96 per caption, media feature cosine 0.868).
    assert aligned["eval_loss"] < aligned["eval_loss_text_only"] - 0.3, aligned
    assert aligned["eval_image_gain"] >= 0.18 and aligned["eval_image_gain_per_caption"] >= 2.5, aligned
    assert aligned["eval_media_feature_cosine"] < 0.89, aligned
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
    # Measured (seeds 1, 2, 3): from stage 1 0.325 / 0.467 / 0.358, fresh 0.133 / 0.133 / 0.133; gain 0.250
    # (with the LLM of the corpus before the audio captions: 0.475 / 0.533 / 0.508 against 0.133 / 0.542 / 0.217).
    # The fresh arm varies a lot between seeds, so the bar sits at half the measured gain (the issue asks 0.05).
    assert gain >= 0.10, accuracy
