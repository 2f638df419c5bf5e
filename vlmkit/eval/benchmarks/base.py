"""What every benchmark task shares: the item to generate for, the parsed answer, bad-row handling, file hashes.

A task turns a published file into `EvalItem`s (a prompt with `<image>` placeholders, the images and the
target), parses each generated answer by its official rule (`Parsed.how` says whether the rule or the
fallback found it), and scores the parsed answers into metrics. Generation itself lives in `runner`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmkit.data.records import IMAGE_TOKEN, BadSampleError, SkipCounter

RULE, FALLBACK, FAILED = "rule", "fallback", "failed"
SHORT_ANSWER = "Answer the question using a single word or phrase."
LETTER_ANSWER = "Answer with the option's letter from the given choices directly."
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".tsv")


@dataclass
class EvalItem:
    """One prompt to answer. `images` are paths, bytes or PIL images in placeholder order."""

    uid: str
    prompt: str
    images: list
    target: Any
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"
    row: int = 0


@dataclass(frozen=True)
class Parsed:
    """A parsed answer: `value` (None when nothing could be read) and which parser produced it."""

    value: Any
    how: str


@dataclass
class RowReader:
    """Raises `BadSampleError` for a bad row, or counts and drops it when `on_bad_sample` is 'skip'."""

    on_bad_sample: str = "error"
    skips: SkipCounter = field(default_factory=SkipCounter)

    def __post_init__(self) -> None:
        if self.on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got '{self.on_bad_sample}'")

    def bad(self, source: str | Path, row: int | None, field_name: str | None, reason: str) -> None:
        err = BadSampleError(str(source), row, field_name, reason)
        if self.on_bad_sample == "error":
            raise err
        self.skips.add(err)

    def require(self, record: dict, keys: tuple[str, ...], source: str | Path, row: int) -> bool:
        """True when `record` is a dict holding every key; otherwise report the first missing one."""
        if not isinstance(record, dict):
            self.bad(source, row, None, f"malformed row: expected an object, got {type(record).__name__}")
            return False
        for key in keys:
            if record.get(key) is None or (isinstance(record[key], float) and record[key] != record[key]):
                self.bad(source, row, key, f"malformed row: missing '{key}'")
                return False
        return True

    def image_file(
        self, folder: Path, name: str, source: str | Path, row: int, field_name: str
    ) -> str | None:
        """The image path under `folder`, or None (reported) when the file does not exist."""
        path = Path(folder) / str(name)
        if not path.is_file():
            self.bad(source, row, field_name, f"missing image: {path} does not exist")
            return None
        return str(path)


def file_hash(*paths: str | Path) -> str:
    """sha256 over the names and bytes of the given files, first 16 hex digits."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_records(path: str | Path, reader: RowReader | None = None) -> list:
    """Rows of a .json (a list, or {'data'|'questions'|'annotations': list}), JSON lines (.jsonl, or .json
    as POPE ships them) or .parquet file. A bad JSON line goes to `reader` (error or counted skip)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # not several JSON values one per line
                raise BadSampleError(str(path), None, None, f"invalid JSON ({err})") from err
        else:
            return _rows_of(data, path)
    rows = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                (reader or RowReader()).bad(path, i, None, f"malformed row: invalid JSON ({err})")
    return rows


def _rows_of(data, path: Path) -> list:
    if isinstance(data, dict):
        for key in ("data", "questions", "annotations"):
            if isinstance(data.get(key), list):
                return data[key]
        raise BadSampleError(str(path), None, None, "expected a list of rows or an object with a 'data' list")
    if not isinstance(data, list):
        raise BadSampleError(str(path), None, None, "expected a list of rows")
    return data


def with_image_token(text: str, n_images: int) -> str:
    """`text` with one `<image>` line in front when it holds fewer placeholders than images."""
    missing = n_images - text.count(IMAGE_TOKEN)
    return "\n".join([IMAGE_TOKEN] * missing + [text]) if missing > 0 else text


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


class Task:
    """A benchmark: where its file is, how it prompts, parses and scores. Subclasses fill these in."""

    name: str = ""
    prompt_id: str = ""  # names the exact prompt template (README lists them)
    parser: str = ""  # names the answer-parsing rule and its fallback
    max_new_tokens: int = 16
    default_file: str = ""  # relative to --data_dir
    default_images: str = ""  # relative to the data file's directory

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        raise NotImplementedError

    def data_files(self, path: Path) -> list[Path]:
        """The files whose contents define the questions and answers (hashed into the results; no images)."""
        if path.is_dir():
            return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        return [path]

    def parse(self, item: EvalItem, text: str) -> Parsed:
        raise NotImplementedError

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        """(metrics, per-item score) for the parsed answers, in item order."""
        raise NotImplementedError
