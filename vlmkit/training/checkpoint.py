"""Atomic, rotating, resumable checkpoints.

A checkpoint is written into `.tmp-checkpoint-<step>`, flushed to disk, and only then renamed to
`checkpoint-<step>`; the `latest` pointer file is replaced after the rename. A crash at any moment leaves
either no new checkpoint or a complete one, never a half-written directory that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

COMPLETE_MARKER = "checkpoint_complete.json"
LATEST_FILE = "latest"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file so readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tmp_checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / f".tmp-checkpoint-{step}"


def finalize_checkpoint(output_dir: Path, tmp_dir: Path, step: int, state: dict) -> Path:
    """Mark `tmp_dir` complete, fsync it, rename it to checkpoint-<step> and move `latest` to it."""
    output_dir = Path(output_dir)
    (tmp_dir / COMPLETE_MARKER).write_text(json.dumps({"step": step, **state}, indent=2))
    fsync_tree(tmp_dir)
    final = output_dir / f"checkpoint-{step}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp_dir, final)
    dir_fd = os.open(output_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    atomic_write_text(output_dir / LATEST_FILE, final.name + "\n")
    return final


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
        return ckpts[-1] if ckpts else None
    path = Path(resume_from)
    if not path.is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from}: no such directory")
    if not is_complete(path):
        raise ValueError(
            f"--resume_from_checkpoint {resume_from}: incomplete checkpoint ({COMPLETE_MARKER} missing)"
        )
    return path


def rotate_checkpoints(output_dir: Path, limit: int, keep: Path | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `limit`, never `keep`; also clear stale temp dirs."""
    output_dir = Path(output_dir)
    for stale in output_dir.glob(".tmp-checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if limit <= 0:
        return []
    ckpts = list_checkpoints(output_dir)
    removable = [c for c in ckpts[:-limit] if keep is None or c.resolve() != Path(keep).resolve()]
    for c in removable:
        shutil.rmtree(c, ignore_errors=True)
    return removable


def read_checkpoint_state(path: Path) -> dict:
    return json.loads((Path(path) / COMPLETE_MARKER).read_text())
