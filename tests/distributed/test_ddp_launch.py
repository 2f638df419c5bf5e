"""`accelerate launch` with accelerate_configs/multi_gpu.yaml on 2 CPU processes really is distributed, and its
loss curve matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launching import free_port

ROOT = Path(__file__).resolve().parents[2]
COMMON = [
    "--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision", "--language_model", "vlmkit-tiny/llama",
    "--data_path", "vlmkit-data/digits/stage2_train.json", "--max_steps", "6", "--logging_steps", "1",
    "--report_to", "none", "--eval_data_path", "none", "--seed", "7", "--learning_rate", "0.002",
]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    recipe = str(ROOT / "recipes" / "llava_stage2.py")
    one = tmp_path / "one"
    subprocess.run(
        [sys.executable, recipe, *COMMON, "--per_device_train_batch_size", "8", "--output_dir", str(one)],
        check=True, env=env, cwd=ROOT, capture_output=True, timeout=600,
    )  # fmt: skip
    two = tmp_path / "two"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs/multi_gpu.yaml"),
        "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
    ]  # fmt: skip
    proc = subprocess.run(
        [*launch, recipe, *COMMON, "--per_device_train_batch_size", "4", "--output_dir", str(two)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2  # really two ranks, not two lone copies
    a, b = _losses(one), _losses(two)
    assert len(a) == len(b) == 6
    # Same global batch of 8 per step, losses normalised by the global token count: equal up to float reordering.
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
