"""accelerate_configs/fsdp2.yaml launched with `accelerate launch` on 2 CPU processes really shards the model
(FSDP2 `fully_shard` per encoder/decoder layer over gloo), follows the single-process loss curve, evaluates, and
saves an ordinary from_pretrained model.

Accelerate by itself enables FSDP only on GPUs: on a CPU machine it would quietly give every rank a full copy.
make_accelerator forces the FSDP state on CPU (only there); this test is what proves that it took.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers.launching import (
    EVAL,
    STAGE2,
    assert_same_curve,
    assert_same_model,
    assert_sharded,
    metrics,
    run_recipe,
)


@pytest.mark.slow
def test_fsdp2_shards_matches_one_process_and_saves(stage2_baseline: Path, tmp_path: Path):
    out = tmp_path / "fsdp2"
    log = run_recipe(
        "llava_stage2", *STAGE2, *EVAL, "--per_device_train_batch_size", "4", "--output_dir", str(out),
        config_file="fsdp2.yaml",
    )  # fmt: skip
    m = metrics(out)
    assert_sharded(m)  # DTensor shards: each rank stores about half of every parameter
    assert "FSDP over 2 processes" in log and "(sharded)" in log
    assert_same_curve(out, stage2_baseline)
    assert math.isfinite(m["eval_loss"]) and 0.0 <= m["eval_accuracy"] <= 1.0
    assert_same_model(out, stage2_baseline)  # FULL_STATE_DICT gathered on every rank, saved by the main one
