"""The benchmark stage of the pipeline: recipes/eval.py on the stage-2 output, its scores in the summary and
the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vlmkit.pipeline.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_default_pipeline_benchmarks_the_stage2_model():
    spec = load_pipeline(str(ROOT / "recipes" / "configs" / "pipeline_digits.yaml"))
    stage = spec.stage("stage2_bench")
    assert stage.recipe == "eval" and stage.parents() == ["stage2"] and stage.enabled
    assert (ROOT / "recipes" / "eval.py").is_file() and Path(ROOT / stage.config).is_file()
    names = [s.name for s in spec.stages]
    assert names.index("stage2_bench") == names.index("stage2") + 1


@pytest.mark.slow
def test_bench_stage_runs_on_a_short_stage2(tmp_path: Path, vlmkit_session_env):
    out = tmp_path / "run"
    spec = {
        "output_dir": str(out),
        "seed": 3,
        "stages": [
            {"name": "stage1", "recipe": "llava_stage1", "config": "recipes/configs/digits_llava_stage1.yaml",
             "args": {"language_model": "vlmkit-tiny/llama", "max_steps": 10, "report_to": "none"}},
            {"name": "stage2", "recipe": "llava_stage2", "config": "recipes/configs/digits_llava_stage2.yaml",
             "args": {"model_name_or_path": "{stage1}", "max_steps": 10, "report_to": "none",
                      "max_eval_samples": 16}, "headline": "eval_accuracy"},
            {"name": "stage2_bench", "recipe": "eval", "config": "recipes/configs/digits_eval.yaml",
             "args": {"model_name_or_path": "{stage2}", "max_samples": 10},
             "headline": "eval_digits_mmbench_circular_accuracy", "chance": 0.004},
        ],
    }  # fmt: skip
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vlmkit", "pipeline", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[stage2_bench] eval_digits_mmbench_circular_accuracy=" in proc.stdout
    results = json.loads((out / "stage2_bench" / "eval_results.json").read_text())
    assert results["digits_mmbench"]["n"] == 40 and results["digits_pope"]["n"] == 30
    assert results["digits_mmbench"]["model"] == str(out / "stage2")
    report = (out / "report.md").read_text()
    assert "| stage2_bench | eval | eval_digits_mmbench_circular_accuracy |" in report
    assert "eval_digits_pope_f1" in report
