"""Checkpoints: atomic under a crash at any moment, rotation, resume resolution, disk full."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_loop
from vlmkit.training import checkpoint as ckpt

FILES = ("model.safetensors", "optimizer.bin", "random_states_0.pkl")


class _Crash(BaseException):
    """A process death at this exact point (BaseException: nothing in the code under test catches it)."""


def _write_state(tmp: Path, step: int) -> None:
    tmp.mkdir(parents=True)
    for name in FILES:
        (tmp / name).write_text(f"{name} of step {step}")


def _save(out: Path, step: int, limit: int, keep: Path | None = None) -> None:
    tmp = ckpt.tmp_checkpoint_dir(out, step)
    shutil.rmtree(tmp, ignore_errors=True)
    _write_state(tmp, step)
    ckpt.finalize_checkpoint(out, tmp, step, {"objects": {}})
    ckpt.rotate_checkpoints(out, limit, keep=keep)


def _assert_consistent(out: Path) -> None:
    """Whatever looks complete is complete, and `latest` names a complete checkpoint."""
    for path in out.glob("checkpoint-*"):
        if ckpt.is_complete(path):
            step = ckpt.read_checkpoint_state(path)["step"]
            assert path.name == f"checkpoint-{step}"
            for name in FILES:
                assert (path / name).read_text() == f"{name} of step {step}", path
    if (out / ckpt.LATEST_FILE).exists():
        named = out / (out / ckpt.LATEST_FILE).read_text().strip()
        assert ckpt.is_complete(named) or not named.exists()
    newest = ckpt.resolve_resume(out, "latest")
    assert newest is None or ckpt.is_complete(newest)


def _crashing(monkeypatch, crash_at: int) -> list[str]:
    """Kill the 'process' at the crash_at-th filesystem operation the checkpoint code performs.

    rmtree deletes one file before dying, to model a deletion cut short.
    """
    ops: list[str] = []
    real_replace, real_rmtree, real_fsync = os.replace, shutil.rmtree, os.fsync

    def tick(name: str) -> None:
        ops.append(name)
        if len(ops) == crash_at:
            raise _Crash(name)

    def replace(src, dst):
        tick(f"replace {Path(src).name} -> {Path(dst).name}")
        real_replace(src, dst)

    def rmtree(path, ignore_errors=False):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if len(ops) + 1 == crash_at and files:
            files[-1].unlink()  # a partial delete: a state file goes, the marker stays, then death
        tick(f"rmtree {Path(path).name}")
        real_rmtree(path, ignore_errors=ignore_errors)

    def fsync(fd):
        tick("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    monkeypatch.setattr(os, "fsync", fsync)
    return ops


def test_crash_at_any_filesystem_operation_never_leaves_a_fake_complete_checkpoint(tmp_path, monkeypatch):
    # Steps 2, 4 exist; then step 6 is saved with limit 2 (deletes 2) and step 4 is re-saved (overwrite),
    # as when resuming from checkpoint-2 after a crash. A death is injected at every operation in turn.
    crash_at, seen_all = 1, False
    while not seen_all:
        out = tmp_path / f"run{crash_at}"
        out.mkdir()
        _save(out, 2, limit=0)
        _save(out, 4, limit=0)
        with monkeypatch.context() as m:
            ops = _crashing(m, crash_at)
            try:
                _save(out, 6, limit=2)
                _save(out, 4, limit=0)
                seen_all = True
            except _Crash:
                pass
        _assert_consistent(out)
        # the run that resumes after the crash finds a complete checkpoint and can save again
        resumed = ckpt.resolve_resume(out, "latest")
        assert resumed is not None and resumed.name in ("checkpoint-4", "checkpoint-6")
        _save(out, 8, limit=2, keep=resumed)
        _assert_consistent(out)
        assert not list(out.glob(".tmp-*")) and not list(out.glob(".trash-*"))
        crash_at += 1
    assert len(ops) > 10  # every write, fsync, rename and delete was a crash point


def test_latest_moves_only_after_the_rename(tmp_path, monkeypatch):
    _save(tmp_path, 2, limit=0)
    tmp = ckpt.tmp_checkpoint_dir(tmp_path, 4)
    _write_state(tmp, 4)
    real_replace = os.replace

    def fail_on_rename(src, dst):
        if Path(src) == tmp:
            raise _Crash("killed before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_rename)
    with pytest.raises(_Crash):
        ckpt.finalize_checkpoint(tmp_path, tmp, 4, {})
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-2"
    assert ckpt.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-2"]
    assert ckpt.resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-2"


def test_rotation_keeps_last_n_complete_and_the_resumed_one(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step, limit=0)
    (tmp_path / "checkpoint-10").mkdir()  # not complete: never counted, never picked
    _write_state(ckpt.tmp_checkpoint_dir(tmp_path, 12), 12)
    removed = ckpt.rotate_checkpoints(tmp_path, 2, keep=tmp_path / "checkpoint-2")
    assert [p.name for p in removed] == ["checkpoint-4"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "checkpoint-2",
        "checkpoint-6",
        "checkpoint-8",
    ]
    assert not ckpt.tmp_checkpoint_dir(tmp_path, 12).exists()
    assert ckpt.resolve_resume(tmp_path, "latest").name == "checkpoint-8"


def test_resolve_resume_errors_say_what_to_pass(tmp_path):
    assert ckpt.resolve_resume(tmp_path, None) is None
    assert ckpt.resolve_resume(tmp_path, "latest") is None
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ckpt.resolve_resume(tmp_path, str(tmp_path / "nope"))
    _save(tmp_path, 2, limit=0)
    with pytest.raises(ValueError, match="checkpoint-2"):
        ckpt.resolve_resume(tmp_path, str(tmp_path))  # the output dir, not a checkpoint
    half = ckpt.tmp_checkpoint_dir(tmp_path, 4)
    _write_state(half, 4)
    with pytest.raises(ValueError, match="never finished"):
        ckpt.resolve_resume(tmp_path, str(half))


def _digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_disk_full_while_saving_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_loop.config(out, max_steps=6, save_steps=2)
    real_save = torch.save
    before: dict[str, str] = {}

    def full_disk(obj, f, *args, **kwargs):
        if ".tmp-checkpoint-4" in str(f):
            before.update(_digest(out / "checkpoint-2"))
            Path(f).write_bytes(b"\0" * 16)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RuntimeError) as info:
        tiny_loop.run(cfg)
    message = str(info.value)
    assert "checkpoint 4" in message and "No space left on device" in message
    assert "checkpoint-2" in message and "--resume_from_checkpoint latest" in message
    assert _digest(out / "checkpoint-2") == before
    assert not list(out.glob(".tmp-*"))
    assert (out / "latest").read_text().strip() == "checkpoint-2"

    monkeypatch.setattr(torch, "save", real_save)  # space freed: resume finishes the run
    cfg.resume_from_checkpoint = "latest"
    assert tiny_loop.run(cfg).global_step == 6


def test_save_total_limit_in_training_keeps_newest_and_resumed(tmp_path):
    out = tmp_path / "run"
    tiny_loop.run(tiny_loop.config(out, max_steps=10, save_steps=2, save_total_limit=2))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-6", "checkpoint-8"]
    assert (out / "latest").read_text().strip() == "checkpoint-8"

    cfg = tiny_loop.config(out, max_steps=12, save_steps=2, save_total_limit=1)
    cfg.resume_from_checkpoint = str(out / "checkpoint-6")
    result = tiny_loop.run(cfg)
    assert result.global_step == 12 and [r["step"] for r in result.history] == list(range(7, 13))
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-6", "checkpoint-10"]
    state = ckpt.read_checkpoint_state(out / "checkpoint-10")
    assert state["step"] == 10 and state["objects"]["scheduler"]["last_epoch"] == 10


class _NoisyTargets:
    """Extra state with a generator (a tensor state): label noise drawn per step, as augmentation would."""

    def __init__(self):
        self.generator, self.calls = torch.Generator().manual_seed(11), 0

    def state_dict(self) -> dict:
        return {"calls": self.calls, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.calls = state["calls"]
        self.generator.set_state(state["generator"])

    def loss(self, model, batch):
        self.calls += 1
        noise = 0.5 * torch.randn(batch["y"].shape, generator=self.generator)
        return tiny_loop.mse_sum(model, {"x": batch["x"], "y": batch["y"] + noise})


class _Died(Exception):
    pass


def test_extra_state_with_tensors_resumes_exactly(tmp_path, monkeypatch):
    from vlmkit.training import loop

    settings = dict(max_steps=9, save_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=5)
    noisy = _NoisyTargets()
    reference = tiny_loop.run(tiny_loop.config(tmp_path / "ref", **settings), noisy.loss, {"noise": noisy})

    out, original = tmp_path / "run", loop.save_checkpoint

    def die_after_6(accelerator, output_dir, step, *args, **kwargs):
        path = original(accelerator, output_dir, step, *args, **kwargs)
        if step == 6:
            raise _Died
        return path

    with monkeypatch.context() as m:
        m.setattr(loop, "save_checkpoint", die_after_6)
        first = _NoisyTargets()
        with pytest.raises(_Died):
            tiny_loop.run(tiny_loop.config(out, **settings), first.loss, {"noise": first})
    assert (out / "checkpoint-6" / ckpt.TENSOR_FILE).is_file()
    assert not list((out / "checkpoint-6").glob("custom_checkpoint_*"))
    second = _NoisyTargets()  # fresh generator: its state must come from the checkpoint
    cfg = tiny_loop.config(out, resume_from_checkpoint="latest", **settings)
    resumed = tiny_loop.run(cfg, second.loss, {"noise": second})
    assert second.calls == noisy.calls == 18
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in reference.history[6:]]
    ref_w, new_w = tiny_loop.weights(reference), tiny_loop.weights(resumed)
    assert all(torch.equal(ref_w[k], new_w[k]) for k in ref_w)


def test_unsupported_state_value_fails_before_writing(tmp_path):
    class Opaque:
        def state_dict(self):
            return {"thing": object()}

        def load_state_dict(self, state):
            pass

    out = tmp_path / "run"
    with pytest.raises(TypeError, match=r"state.objects.opaque.thing: a object cannot go into a checkpoint"):
        tiny_loop.run(tiny_loop.config(out, max_steps=4, save_steps=2), extra_state={"opaque": Opaque()})
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".tmp-*"))
