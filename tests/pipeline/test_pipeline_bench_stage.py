"""The benchmark stage of the default pipeline is recipes/eval.py on the stage-2 output (its run is checked in
test_pipeline_digits.py, on the one shared pipeline run)."""

from __future__ import annotations

from pathlib import Path

from vlmkit.pipeline.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_default_pipeline_benchmarks_the_stage2_model():
    spec = load_pipeline(str(ROOT / "recipes" / "configs" / "pipeline_digits.yaml"))
    stage = spec.stage("stage2_bench")
    assert stage.recipe == "eval" and stage.parents() == ["stage2"] and stage.enabled
    assert (ROOT / "recipes" / "eval.py").is_file() and Path(ROOT / stage.config).is_file()
    names = [s.name for s in spec.stages]
    assert names.index("stage2_bench") == names.index("stage2") + 1
