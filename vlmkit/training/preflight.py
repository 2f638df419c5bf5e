"""Pre-flight: check every input a run will need before any model loads or any step runs.

A run that trains for hours and then dies in evaluation on a missing held-out image wastes the whole budget.
`preflight(cfg)` fails in seconds instead, with the same located errors the run would have raised later:
- data: the training and held-out files are read the way the recipe reads them (records, roles, media
  placeholders, media files present and inside their root; for the stage-0 encoder recipes, each record's
  media file). With `on_bad_sample: error` the first bad record stops the run here; with `skip` the bad
  records are only reported here and counted when the run reads them;
- models: every model path that is meant as a local directory or file exists;
- output: `output_dir` is (or can be made) a writable directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from vlmkit.data.embedded import media_root, resolve_data_path
from vlmkit.data.loading import held_out_paths, read_samples
from vlmkit.data.media import resolve_media_item
from vlmkit.data.records import BadSampleError, SkipCounter

logger = logging.getLogger(__name__)

# Config fields that name a model (a local path, a Hub id or a vlmkit-tiny/<name>).
MODEL_FIELDS = (
    "model_name_or_path", "vision_tower", "audio_tower", "language_model", "pretrain_connector",
    "reward_model_name_or_path", "value_model_name_or_path",
)  # fmt: skip
TINY_PREFIX = "vlmkit-tiny/"


class PreflightError(ValueError):
    """An input of the run that is missing or unusable, found before training started."""


def preflight(cfg) -> None:
    """Check the run's output directory, model paths and data (see the module docstring); raise if unusable."""
    check_output_dir(cfg.output_dir)
    check_model_paths(cfg)
    check_data(cfg)


def check_output_dir(output_dir: str) -> None:
    """`output_dir` must be a directory, or creatable, and writable."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise PreflightError(f"--output_dir {output_dir}: exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise PreflightError(f"--output_dir {output_dir}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"--output_dir {output_dir}: {existing} is not writable")


def _meant_as_local_path(value: str) -> bool:
    """Whether a model reference can only be a local path: not a Hub id ('name' or 'owner/name')."""
    return (
        value.startswith(("/", "./", "../", "~"))
        or value.count("/") >= 2
        or value.endswith((".safetensors", ".bin", ".pt", ".gguf"))
    )


def check_model_paths(cfg) -> None:
    """Every model field that names a local path must exist (Hub ids and vlmkit-tiny/ names are left alone)."""
    for name in MODEL_FIELDS:
        value = getattr(cfg, name, None)
        if not value or value.startswith(TINY_PREFIX):
            continue
        if not Path(value).expanduser().exists() and _meant_as_local_path(value):
            raise PreflightError(
                f"--{name} {value}: no such file or directory (a local path, as it is not a Hub id "
                "'owner/name'); check the path, or run the stage that writes it first"
            )


def _data_files(cfg) -> list[tuple[str, str | None]]:
    """(path, format) of every data file the run reads; None: the config's data_format."""
    if not cfg.data_path:
        raise PreflightError("no training data: set --data_path")
    files = [(cfg.data_path, None)]
    for path in held_out_paths(cfg):
        files.append((path, "auto" if path == getattr(cfg, "eval_prompts_path", None) else None))
    return files


def check_data(cfg) -> None:
    """Read every data file as the run will; bad records raise here (error mode) or are reported (skip mode).

    Recipes with `data_format` read conversations, preference or prompt rows (`read_samples`); the stage-0
    encoder recipes read `{image|audio, ...}` records, whose media files are checked here; text pretraining
    reads text files (checked to exist) or a dataset by name."""
    for path, fmt in _data_files(cfg):
        skips = SkipCounter()  # the run counts its skips itself when it reads the data
        if hasattr(cfg, "data_format"):
            read_samples(cfg, path, skips, format=fmt)
        elif hasattr(cfg, "image_folder") or hasattr(cfg, "audio_folder"):
            _check_media_records(cfg, path, skips)
        else:
            _check_text_source(path)
        if skips.total:
            logger.warning("pre-flight: %s has %d bad records, which the run will skip: %s",
                           path, skips.total, skips.as_dict())  # fmt: skip


TEXT_SUFFIXES = (".txt", ".json", ".jsonl")


def _check_text_source(path: str) -> None:
    """Text pretraining data: a local file must exist (anything else is read as a dataset name)."""
    resolved = resolve_data_path(path)
    if Path(resolved).suffix in TEXT_SUFFIXES and not Path(resolved).is_file():
        raise PreflightError(f"data file not found: {path}")


def _check_media_records(cfg, path: str, skips: SkipCounter) -> None:
    """Stage-0 records (a JSON list or JSON lines of `{image: ...}` or `{audio: ...}`): each media file exists."""
    key, folder = ("image", cfg.image_folder) if hasattr(cfg, "image_folder") else ("audio", cfg.audio_folder)
    if path != cfg.data_path and path in held_out_paths(cfg):
        folder = getattr(cfg, f"eval_{key}_folder", None) or folder
    resolved = resolve_data_path(path)
    if not Path(resolved).is_file():
        raise PreflightError(f"data file not found: {path}")
    text = Path(resolved).read_text(encoding="utf-8")
    try:
        rows = json.loads(text) if not resolved.endswith(".jsonl") else None
    except json.JSONDecodeError:
        rows = None
    if rows is None:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise PreflightError(f"{resolved}: neither a JSON list nor JSON lines ({err})") from err
    if not isinstance(rows, list) or not rows:
        raise PreflightError(f"{resolved}: expected a non-empty JSON list of {{{key}, ...}} records")
    root = media_root(path, folder) or str(Path(resolved).resolve().parent)
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict) or key not in row:
                raise BadSampleError(resolved, i, key, f"missing field: every record needs an '{key}'")
            resolve_media_item(
                row[key], root, allow_outside_root=cfg.allow_outside_media_root,
                source=resolved, index=i, field_name=key,
            )  # fmt: skip
        except BadSampleError as err:
            if cfg.on_bad_sample == "error":
                raise
            skips.add(err)
