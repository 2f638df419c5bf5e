"""The embedded default data: `vlmkit-data/<dataset>/<file>` paths that build themselves on first use.

`vlmkit-data/digits/stage2_train.json` resolves to a file under the data cache (VLMKIT_DATA_DIR, default
~/.cache/vlmkit/data), built offline and deterministically from scikit-learn's digits (or espeak-ng speech).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_PREFIX = "vlmkit-data/"
DATASETS = ("digits", "spoken_digits", "digits_bench")


def data_cache_dir() -> Path:
    return Path(os.environ.get("VLMKIT_DATA_DIR", Path.home() / ".cache" / "vlmkit" / "data"))


def build_embedded(name: str) -> Path:
    """Build (or reuse) the embedded dataset `name` and return its root directory."""
    if name not in DATASETS:
        raise ValueError(f"unknown embedded dataset '{name}'; valid: {', '.join(DATASETS)}")
    out = data_cache_dir() / name
    if name == "digits":
        from vlmkit.data.digits import build_digits_dataset

        build_digits_dataset(out)
    elif name == "digits_bench":  # the held-out digits in MMBench's and POPE's formats
        from vlmkit.data.digits_bench import build_digits_bench

        build_digits_bench(out, build_embedded("digits"))
    else:
        from vlmkit.data.spoken_digits import build_spoken_digits_dataset

        build_spoken_digits_dataset(out)
    return out


def resolve_data_path(path: str | None) -> str | None:
    """Map `vlmkit-data/<dataset>/<file>` to a real file (building the dataset if needed); else unchanged."""
    if not path or not path.startswith(DATA_PREFIX):
        return path
    name, _, rest = path[len(DATA_PREFIX) :].partition("/")
    root = build_embedded(name)
    resolved = root / rest
    if not resolved.exists():
        available = sorted(p.name for p in root.iterdir() if p.suffix in (".json", ".tsv", ".txt"))
        raise FileNotFoundError(f"{path}: no such file in the embedded '{name}' data; available: {available}")
    return str(resolved)


def media_root(path: str | None, folder: str | None) -> str | None:
    """The root for relative media paths of data file `path`: `folder`, except for an embedded
    `vlmkit-data/...` file, whose media always live beside it (a user's own --image_folder is not theirs)."""
    if path and path.startswith(DATA_PREFIX):
        return None  # the readers' default: the data file's own folder
    return folder
