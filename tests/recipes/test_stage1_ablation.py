"""The stage-1 ablation recipe's inputs (its result on the embedded digits is asserted in the pipeline test,
where it runs on the chain's own stage 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def test_the_fresh_arm_uses_the_tower_and_llm_stage1_froze(recipe, tmp_path: Path):
    stage1 = {
        "vision_tower": "out/clip", "audio_tower": None, "language_model": "out/lm", "connector": "mlp2x_gelu",
        "connector_num_queries": 16, "connector_downsample": 16, "feature_layer": -2, "tune_encoder": False,
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stage1))
    args = recipe("stage1_ablation").fresh_connector_args(tmp_path)
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs == {
        "--model_name_or_path": "none", "--vision_tower": "out/clip", "--language_model": "out/lm",
        "--connector": "mlp2x_gelu", "--connector_num_queries": "16", "--connector_downsample": "16",
        "--feature_layer": "-2",
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**stage1, "tune_encoder": True}))
    with pytest.raises(SystemExit, match="trained its encoder"):
        recipe("stage1_ablation").fresh_connector_args(tmp_path)


def test_the_ablation_needs_a_stage1_directory(recipe, tmp_path: Path):
    with pytest.raises(SystemExit, match="--stage1 .* is required"):
        recipe("stage1_ablation").main(["--output_dir", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="must be a stage-1 output directory"):
        recipe("stage1_ablation").main(["--stage1", str(tmp_path), "--output_dir", str(tmp_path / "b")])
