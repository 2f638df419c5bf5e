"""Atomic, rotating, resumable checkpoints.

A checkpoint is written into `.tmp-checkpoint-<step>`, marked complete, flushed to disk, and only then
renamed to `checkpoint-<step>`; the `latest` pointer file is replaced after the rename. Deleting (rotation,
overwriting) first renames a checkpoint to `.trash-*`, so a crash at any moment (SIGKILL, power loss) leaves
either no new checkpoint or a complete one, never a half-written or half-deleted `checkpoint-<step>`.
Resume ("latest") picks the newest complete checkpoint; stale `.tmp-*`/`.trash-*` dirs are cleared later.

The completion marker records the sha256 of every file of the checkpoint. Resume verifies them: a damaged
checkpoint (a file changed, missing or added by hand, a garbled marker) is skipped with a warning naming it,
and "latest" falls back to the newest intact one; an explicitly named damaged checkpoint is refused.

Test hook: with `VLMKIT_TEST_PAUSE_IN_CHECKPOINT=<step>` in the environment, the writer stops for
10 minutes after the state files of checkpoint <step> are written and before it is marked complete, so a
fault-injection test can kill the run mid-checkpoint deterministically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

COMPLETE_MARKER = "checkpoint_complete.json"
TENSOR_FILE = "trainer_state.safetensors"  # tensors of the marker's state (e.g. generator states)
LATEST_FILE = "latest"
PAUSE_ENV = "VLMKIT_TEST_PAUSE_IN_CHECKPOINT"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")
_STALE_GLOBS = (".tmp-checkpoint-*", ".trash-checkpoint-*")

logger = logging.getLogger(__name__)


class DamagedCheckpointError(ValueError):
    """A checkpoint whose completion marker is unreadable or whose files do not match their recorded hashes."""


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under `path` (and `path` itself)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _discard(path: Path) -> None:
    """Delete a checkpoint dir crash-safely: an atomic rename out of the `checkpoint-*` namespace first."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def pause_for_fault_injection(step: int) -> None:
    """Test hook (see module docstring): stop mid-checkpoint when PAUSE_ENV names this step."""
    if os.environ.get(PAUSE_ENV) == str(step):
        print(f"[vlmkit] test hook: paused while writing checkpoint {step}", file=sys.stderr, flush=True)
        time.sleep(600)


def tmp_checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f".tmp-checkpoint-{step}"


def split_tensors(obj: Any, name: str = "state") -> tuple[Any, dict[str, torch.Tensor]]:
    """A JSON-ready copy of `obj` with each tensor replaced by {"__tensor__": key}, and the tensors by key.

    Values must be None, bool, int, float, str, lists, dicts (string keys) or tensors: no pickles.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, key: str) -> Any:
        if isinstance(x, torch.Tensor):
            tensors[key] = x.detach().cpu().clone().contiguous()
            return {"__tensor__": key}
        if isinstance(x, dict):
            return {str(k): walk(v, f"{key}.{k}") for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(
            f"{key}: a {type(x).__name__} cannot go into a checkpoint; state_dict() values must be numbers, "
            "strings, lists, dicts or tensors"
        )

    return walk(obj, name), tensors


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def finalize_checkpoint(output_dir: Path, tmp_dir: Path, step: int, state: dict) -> Path:
    """Write `state` (JSON + safetensors) into `tmp_dir`, mark it complete, fsync it, rename it to
    checkpoint-<step> and move `latest` to it."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    plain, tensors = split_tensors(state)
    if tensors:
        save_file(tensors, str(tmp_dir / TENSOR_FILE))
    marker = {"step": step, **plain, "files": file_hashes(tmp_dir)}
    (tmp_dir / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))
    fsync_tree(tmp_dir)
    final = output_dir / f"checkpoint-{step}"
    if final.exists():  # e.g. a later run's checkpoint when resuming from an earlier one
        _discard(final)
    os.replace(tmp_dir, final)
    _fsync_dir(output_dir)
    atomic_write_text(output_dir / LATEST_FILE, final.name + "\n")
    return final


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file under `path` except the completion marker, by POSIX relative path."""
    path = Path(path)
    return {
        f.relative_to(path).as_posix(): _sha256(f)
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != COMPLETE_MARKER
    }


def read_marker(path: Path) -> dict:
    """The completion marker of checkpoint `path`; DamagedCheckpointError naming the file if unreadable."""
    marker = Path(path) / COMPLETE_MARKER
    try:
        state = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpointError(f"{marker}: unreadable completion marker ({err})") from err
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpointError(f"{marker}: not a completion marker (no integer 'step')")
    return state


def verify_checkpoint(path: Path) -> None:
    """Raise DamagedCheckpointError naming what is wrong if `path` does not match its recorded hashes.

    A marker without hashes (written before they were recorded) is accepted with a warning.
    """
    path = Path(path)
    recorded = read_marker(path).get("files")
    if recorded is None:
        logger.warning("%s has no recorded file hashes (an older checkpoint): not verified", path)
        return
    found = file_hashes(path)
    missing = sorted(set(recorded) - set(found))
    changed = sorted(k for k in recorded if k in found and found[k] != recorded[k])
    extra = sorted(set(found) - set(recorded))
    problems = [
        f"{label}: {names}"
        for label, names in (("missing", missing), ("changed", changed), ("unexpected", extra))
        if names
    ]
    if problems:
        raise DamagedCheckpointError(f"{path} is damaged (files {'; '.join(problems)})")


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for child in output_dir.iterdir():
        m = _CKPT_RE.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: Path, resume_from: str | None) -> Path | None:
    """Turn `--resume_from_checkpoint` (a path, 'latest', or None) into a complete checkpoint dir."""
    if not resume_from:
        return None
    if resume_from == "latest":
        ckpts = list_checkpoints(output_dir)
        return newest_intact(output_dir) if ckpts else None
    path = Path(resume_from)
    if not path.is_dir():
        raise FileNotFoundError(
            f"--resume_from_checkpoint {resume_from}: no such directory; give a checkpoint-<step> "
            "directory or 'latest'"
        )
    if not is_complete(path):
        inside = list_checkpoints(path)
        hint = (
            f"it looks like an output directory: pass {inside[-1]}"
            if inside
            else "it was never finished (killed mid-write?); pass an earlier checkpoint or 'latest'"
        )
        raise ValueError(
            f"--resume_from_checkpoint {resume_from}: not a complete checkpoint ({COMPLETE_MARKER} "
            f"missing); {hint}"
        )
    try:
        verify_checkpoint(path)
    except DamagedCheckpointError as err:
        raise DamagedCheckpointError(
            f"--resume_from_checkpoint {resume_from}: {err}; pass 'latest' to resume from the newest intact "
            "checkpoint"
        ) from err
    return path


def newest_intact(output_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files match their hashes, warning about each damaged newer one.

    None when there is no complete checkpoint; DamagedCheckpointError when every one is damaged.
    """
    ckpts = list_checkpoints(output_dir)
    damaged = []
    for path in reversed(ckpts):
        try:
            verify_checkpoint(path)
        except DamagedCheckpointError as err:
            logger.warning("%s; falling back to an earlier checkpoint", err)
            damaged.append(str(err))
            continue
        return path
    if damaged:
        raise DamagedCheckpointError(
            f"no intact checkpoint in {output_dir}: " + "; ".join(damaged) + ". Start without "
            "--resume_from_checkpoint, or restore a checkpoint from a backup"
        )
    return None


def rotate_checkpoints(output_dir: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `limit`, never `keep`; also clear stale temp dirs."""
    output_dir = Path(output_dir)
    clear_stale(output_dir)
    if limit <= 0:
        return []
    ckpts = list_checkpoints(output_dir)
    removable = [c for c in ckpts[:-limit] if keep is None or c.resolve() != Path(keep).resolve()]
    for c in removable:
        _discard(c)
    return removable


def clear_stale(output_dir: Path) -> None:
    """Remove leftovers of interrupted writes and deletions (`.tmp-checkpoint-*`, `.trash-checkpoint-*`)."""
    for pattern in _STALE_GLOBS:
        for stale in Path(output_dir).glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def read_checkpoint_state(path: Path) -> dict:
    """The state saved with the checkpoint (step, run settings, objects), tensors restored."""
    from safetensors.torch import load_file

    state = read_marker(path)
    state.pop("files", None)
    tensor_file = Path(path) / TENSOR_FILE
    return join_tensors(state, load_file(str(tensor_file)) if tensor_file.is_file() else {})
