"""Per-step extras (accuracy, contrastive parts...) are logged as whole-run values, reduced across processes:
averaged, or summed for counts; not rank 0's own numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launching import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_processes_log_extras_reduced_across_ranks(tmp_path: Path):
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }  # fmt: skip
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs/multi_gpu.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
    ]  # fmt: skip
    script = str(Path(__file__).parent / "extras_across_ranks.py")
    proc = subprocess.run(
        [*launch, script, str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    for record in log:
        assert record["items"] == 4  # 2 rows on each of 2 processes: really distributed
        assert record["rank_accuracy"] == pytest.approx(0.5), record  # mean of rank 0 (0.0) and rank 1 (1.0)
        assert record["pairs_count"] == pytest.approx(3.0), record  # a count is summed: 1 + 2
        assert record["rank1_only"] == pytest.approx(7.0), record  # mean over the processes that logged it
