"""The report's "RL side by side" table carries each RL stage's compute-matched SFT baseline and says honestly
whether RL beat it: a win only outside the paired 95% interval, a loss as a loss."""

from __future__ import annotations

import json
from pathlib import Path

from vlmkit.pipeline.report import write_report
from vlmkit.pipeline.spec import PipelineSpec, StageSpec

RUNS = {
    "ppo": {"eval_accuracy_before": 0.561, "eval_accuracy": 0.919, "baseline_eval_accuracy": 0.964,
            "baseline_accuracy_rl_minus_sft": -0.045, "baseline_accuracy_rl_minus_sft_stderr": 0.012,
            "baseline_beaten": False, "eval_kl": 1.0, "train_samples": 5120},
    "grpo": {"eval_accuracy_before": 0.561, "eval_accuracy": 0.889, "baseline_eval_accuracy": 0.880,
             "baseline_accuracy_rl_minus_sft": 0.009, "baseline_accuracy_rl_minus_sft_stderr": 0.015,
             "baseline_beaten": False, "train_samples": 5120},
    "dpo": {"eval_accuracy_before": 0.561, "eval_accuracy": 0.700, "baseline_eval_accuracy": 0.600,
            "baseline_accuracy_rl_minus_sft": 0.1, "baseline_accuracy_rl_minus_sft_stderr": 0.02,
            "baseline_beaten": True},
    "old_ppo": {"eval_accuracy_before": 0.5, "eval_accuracy": 0.6},  # a run from before the baseline existed
}  # fmt: skip


def test_rl_table_shows_the_baseline_and_an_honest_verdict(tmp_path: Path):
    stages = [StageSpec(name, name.removeprefix("old_"), "c.yaml") for name in RUNS]
    for name, metrics in RUNS.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    write_report(PipelineSpec(output_dir=str(tmp_path), stages=stages, source="p.yaml"), tmp_path)
    table = (tmp_path / "report.md").read_text().split("## RL side by side")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert "SFT baseline (matched)" in rows["stage"]
    assert "| 0.964 | -0.045 ± 0.024 | no (worse) |" in rows["ppo"]  # RL lost outside the noise
    assert "| 0.880 | +0.009 ± 0.029 | no |" in rows["grpo"]  # a gain inside the noise is not a win
    assert "| 0.600 | +0.100 ± 0.039 | yes |" in rows["dpo"]
    assert "| — | — | — |" in rows["old_ppo"]
    html = (tmp_path / "report.html").read_text()
    assert "<td>no (worse)</td>" in html and "<td>+0.100 ± 0.039</td>" in html
