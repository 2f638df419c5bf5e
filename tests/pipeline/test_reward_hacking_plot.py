"""The pipeline report plots an RL stage's proxy reward (reward-model score) against the gold accuracy of its
rollouts per step, from train_log.jsonl; stages that log no gold accuracy get no such plot."""

import json
from pathlib import Path

from PIL import Image

from vlmkit.pipeline.report import write_report
from vlmkit.pipeline.reward_hacking import PLOT_FILE, proxy_and_gold
from vlmkit.pipeline.spec import PipelineSpec, StageSpec


def _stage(root: Path, name: str, records: list[dict]) -> None:
    out = root / name
    out.mkdir(parents=True)
    (out / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "metrics.json").write_text(json.dumps({"eval_accuracy": 0.9}))


def test_proxy_rising_while_gold_falls_is_plotted_per_step(tmp_path: Path):
    # A hacked reward: the proxy climbs every step while the rollouts' gold accuracy drops.
    hacked = [
        {"step": s, "score_mean": 0.5 * s, "gold_accuracy": 0.8 - 0.05 * s, "loss": 1.0} for s in range(1, 9)
    ]
    hacked.insert(3, {"step": 99, "score_mean": 1.0})  # a record without gold accuracy is left out
    _stage(tmp_path, "ppo", hacked)
    _stage(tmp_path, "stage2", [{"step": s, "loss": 1.0 / s} for s in range(1, 5)])
    stages = [StageSpec("stage2", "llava_stage2", "c.yaml"), StageSpec("ppo", "ppo", "c.yaml")]
    write_report(PipelineSpec(output_dir=str(tmp_path), stages=stages, source="p.yaml"), tmp_path)

    points = proxy_and_gold(tmp_path / "ppo" / "train_log.jsonl")
    assert [p[0] for p in points] == list(range(1, 9))
    assert points[0][1:] == (0.5, 0.75) and points[-1][1:] == (4.0, 0.4)
    with Image.open(tmp_path / "ppo" / PLOT_FILE) as img:
        assert img.size == (600, 350)
    assert not (tmp_path / "stage2" / PLOT_FILE).exists()
    md = (tmp_path / "report.md").read_text()
    assert f"(ppo/{PLOT_FILE})" in md and f"(stage2/{PLOT_FILE})" not in md
    html = (tmp_path / "report.html").read_text()
    assert html.count("proxy reward vs gold accuracy' src='data:image/png;base64,") == 1
