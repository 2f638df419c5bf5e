"""Fixtures of the launch tests: the shared single-process stage-2 run and DeepSpeed's compiled CPU ops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.launching import STAGE2, run_recipe

# A torch extension build holds `<build dir>/lock` for a minute or two; an older lock was left by a killed
# build, and every later build would wait on it forever.
STALE_LOCK_SECONDS = 600
BUILD_OPS = (
    "from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder\n"
    "ShareMemCommBuilder().load()  # every DeepSpeed run on CPU\n"
    "CPUAdamBuilder().load()  # ZeRO-Offload's optimizer\n"
)


@pytest.fixture(scope="session")
def deepspeed_ops() -> None:
    """DeepSpeed JIT-compiles its CPU ops (g++ + ninja) on first use into the torch extensions cache; do it once
    here (about 2 minutes when the cache is cold, ~5 s when warm) so that no launch test pays for it or waits on
    a stale build lock."""
    pytest.importorskip("deepspeed")
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    for lock in root.glob("*/*/lock"):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            lock.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_OPS], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
        f"building DeepSpeed's CPU ops failed (needs g++ and ninja):\n{proc.stderr[-3000:]}"
    )


@pytest.fixture(scope="session")
def stage2_baseline(digits_data, tmp_path_factory) -> Path:
    """Stage 2 in one process with the global batch (8) that the 2-process launches split 4 + 4."""
    out = tmp_path_factory.mktemp("stage2_one_process")
    run_recipe("llava_stage2", *STAGE2, "--per_device_train_batch_size", "8", "--output_dir", str(out))
    return out
