"""Damaged checkpoints: hashes recorded at save, verified at resume, fallback to the newest intact one."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.helpers.tiny_loop import config, run, weights
from vlmkit.training import checkpoint as ckpt

SETTINGS = dict(max_steps=6, save_steps=2, save_total_limit=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run with checkpoints 2 and 4; its final weights."""
    out = tmp_path_factory.mktemp("reference")
    return out, weights(run(config(out, **SETTINGS)))


def _copy_run(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    return out


def _resume(out, what="latest"):
    return run(config(out, resume_from_checkpoint=what, **SETTINGS))


def _assert_resumed_from_2(result, reference, caplog, damaged):
    assert [r["step"] for r in result.history] == [3, 4, 5, 6]  # from checkpoint-2, not checkpoint-4
    final = weights(result)
    assert all(torch.equal(final[k], reference[1][k]) for k in final)  # the same result as never damaged
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(damaged) in m and "damaged" in m and "falling back" in m for m in warned), warned


def test_marker_records_the_sha256_of_every_file(reference):
    path = reference[0] / "checkpoint-4"
    recorded = json.loads((path / ckpt.COMPLETE_MARKER).read_text())["files"]
    on_disk = {p.name for p in path.iterdir() if p.name != ckpt.COMPLETE_MARKER}
    assert set(recorded) == on_disk and "model.safetensors" in recorded
    for name, digest in recorded.items():
        assert hashlib.sha256((path / name).read_bytes()).hexdigest() == digest
    ckpt.verify_checkpoint(path)  # intact: no error
    assert "files" not in ckpt.read_checkpoint_state(path)


def test_finite_garbage_in_the_weights_falls_back_to_the_previous_checkpoint(reference, tmp_path, caplog):
    out = _copy_run(reference, tmp_path)
    model_file = out / "checkpoint-4" / "model.safetensors"
    garbage = {k: v + 1.0 for k, v in load_file(model_file).items()}  # finite, loads fine
    save_file(garbage, model_file)
    with caplog.at_level(logging.WARNING):
        result = _resume(out)
    _assert_resumed_from_2(result, reference, caplog, out / "checkpoint-4")
    assert "changed: ['model.safetensors']" in caplog.text


def test_deleted_weights_fall_back_and_never_ask_for_a_bin_file(reference, tmp_path, caplog):
    out = _copy_run(reference, tmp_path)
    (out / "checkpoint-4" / "model.safetensors").unlink()
    with caplog.at_level(logging.WARNING):
        result = _resume(out)
    _assert_resumed_from_2(result, reference, caplog, out / "checkpoint-4")
    assert "missing: ['model.safetensors']" in caplog.text and "pytorch_model.bin" not in caplog.text


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"], ids=["empty", "garbled", "no-step"])
def test_unreadable_marker_is_named_and_treated_as_damaged(reference, tmp_path, caplog, content):
    out = _copy_run(reference, tmp_path)
    marker = out / "checkpoint-4" / ckpt.COMPLETE_MARKER
    marker.write_text(content)
    with pytest.raises(ckpt.DamagedCheckpointError, match=str(marker)):
        ckpt.read_checkpoint_state(out / "checkpoint-4")
    with caplog.at_level(logging.WARNING):
        result = _resume(out)
    _assert_resumed_from_2(result, reference, caplog, marker)


def test_a_damaged_checkpoint_named_explicitly_is_refused(reference, tmp_path):
    out = _copy_run(reference, tmp_path)
    (out / "checkpoint-4" / "optimizer.bin").write_bytes(b"garbage")
    with pytest.raises(ckpt.DamagedCheckpointError) as info:
        _resume(out, str(out / "checkpoint-4"))
    message = str(info.value)
    assert str(out / "checkpoint-4") in message and "optimizer.bin" in message and "'latest'" in message


def test_no_intact_checkpoint_fails_clearly(reference, tmp_path):
    out = _copy_run(reference, tmp_path)
    for step in (2, 4):
        (out / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ckpt.DamagedCheckpointError) as info:
        _resume(out)
    message = str(info.value)
    assert "no intact checkpoint" in message
    assert str(out / "checkpoint-2") in message and str(out / "checkpoint-4") in message
