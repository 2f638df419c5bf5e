"""Fault injection: SIGKILL a real `accelerate launch` stage-2 run while it writes a checkpoint, resume it.

The run is stopped deterministically mid-checkpoint by the test hook VLMKIT_TEST_PAUSE_IN_CHECKPOINT=<step>
(vlmkit.training.checkpoint): the writer pauses after the state files of checkpoint <step> are in the temp
dir, before it is marked complete and renamed. The whole process group (launcher and worker) is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.tiny_stage2 import load_weights, make_image_data, max_abs_diff, read_log, stage2_argv
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
PAUSE_LINE = "test hook: paused while writing checkpoint 4"
TIMEOUT_S = 600


def _launch(argv: list[str], log: Path, **env) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "llava_stage2.py"), *argv,
    ]  # fmt: skip
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **env}
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait(proc: subprocess.Popen, log: Path) -> None:
    try:
        rc = proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert rc == 0, f"exit code {rc}:\n{log.read_text()[-4000:]}"


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_then_resume_matches_uninterrupted(tmp_path):
    for name in ("vlmkit-tiny/llama", "vlmkit-tiny/clip-vision"):
        resolve_model_path(name)  # built here once, not by two launched runs at the same time
    data = make_image_data(tmp_path / "data")
    reference, out = tmp_path / "reference", tmp_path / "killed"
    ref_proc = _launch(stage2_argv(data, reference), tmp_path / "reference.log")
    victim_log = tmp_path / "killed.log"
    victim = _launch(stage2_argv(data, out), victim_log, VLMKIT_TEST_PAUSE_IN_CHECKPOINT="4")
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while PAUSE_LINE not in victim_log.read_text():
            assert victim.poll() is None, f"run ended before the pause:\n{victim_log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "the run never reached checkpoint 4"
            time.sleep(0.5)
    finally:
        os.killpg(victim.pid, signal.SIGKILL)  # launcher and training process, mid-checkpoint
        victim.wait()

    # the half-written checkpoint is recognisably incomplete; the previous one is whole and `latest`
    half = ckpt.tmp_checkpoint_dir(out, 4)
    assert (half / "model.safetensors").is_file() and not ckpt.is_complete(half)
    assert not (out / "checkpoint-4").exists()
    assert (out / "latest").read_text().strip() == "checkpoint-2"
    assert ckpt.resolve_resume(out, "latest") == out / "checkpoint-2"

    resumed = _launch(stage2_argv(data, out, resume_from_checkpoint="latest"), tmp_path / "resumed.log")
    _wait(resumed, tmp_path / "resumed.log")
    _wait(ref_proc, tmp_path / "reference.log")

    assert not half.exists()  # cleared by the resumed run's first checkpoint
    ref_log, new_log = read_log(reference), read_log(out)
    assert [r["step"] for r in new_log] == [r["step"] for r in ref_log] == list(range(1, 9))
    assert all(abs(a["loss"] - b["loss"]) <= 1e-6 for a, b in zip(ref_log, new_log)), (ref_log, new_log)
    diff = max_abs_diff(load_weights(reference), load_weights(out))
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"
