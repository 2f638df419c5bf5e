"""The first records of the embedded digits' stage-2 splits, written as small json files for quick runs.

Not a test module: `from tests.helpers.digits_subset import digits_subset`.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmkit.data.embedded import resolve_data_path


def digits_subset(out: Path, train: int, eval: int) -> dict[str, str]:
    """{"train": json path, "eval": json path, "images": the embedded dataset's folder} with the first `train`
    and `eval` records (their images stay where the embedded dataset put them)."""
    files = {}
    for split, n in (("train", train), ("eval", eval)):
        source = Path(resolve_data_path(f"vlmkit-data/digits/stage2_{split}.json"))
        files[split] = str(out / f"{split}.json")
        Path(files[split]).write_text(json.dumps(json.loads(source.read_text())[:n]))
        files["images"] = str(source.parent)
    return files
