"""The canonical in-memory record every reader produces and every collator consumes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

IMAGE_TOKEN = "<image>"
AUDIO_TOKEN = "<audio>"
ROLES = ("system", "user", "assistant")


class BadSampleError(ValueError):
    """A record that cannot be used; the message names the file, record index and field."""

    def __init__(self, source: str, index: int | None, field_name: str | None, reason: str):
        self.source, self.index, self.field_name, self.reason = source, index, field_name, reason
        where = f"{source}"
        if index is not None:
            where += f", record {index}"
        if field_name:
            where += f", field '{field_name}'"
        super().__init__(f"{where}: {reason}")


@dataclass
class Turn:
    """One chat turn. `text` may hold `<image>` / `<audio>` placeholders."""

    role: str
    text: str


@dataclass
class Sample:
    """A conversation plus its media, in placeholder order.

    `images` / `audios` are resolved file paths (or already-decoded PIL images / float arrays).
    `source` and `index` locate the record for error messages.
    """

    turns: list[Turn]
    images: list = field(default_factory=list)
    audios: list = field(default_factory=list)
    source: str = "<memory>"
    index: int = 0

    def count(self, placeholder: str) -> int:
        return sum(t.text.count(placeholder) for t in self.turns)


@dataclass
class PreferenceSample:
    """A prompt conversation (ending with a user turn) plus a chosen and a rejected answer."""

    prompt: list[Turn]
    chosen: str
    rejected: str
    images: list = field(default_factory=list)
    audios: list = field(default_factory=list)
    source: str = "<memory>"
    index: int = 0


class SkipCounter:
    """Counts skipped records by reason, for `on_bad_sample: skip` and the end-of-run report.

    A DataLoader worker counts into its own copy; `SkipReportingCollate` carries the worker's new skips
    in the batch and the training loop `absorb`s them into the main process's counter.
    """

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self._keys: set = set()
        self._new: list[tuple] = []

    def add(self, err: BadSampleError, key: Hashable | None = None) -> None:
        """Count `err` under its reason; with a `key` (e.g. the record whose media failed) only once,
        however many epochs meet it."""
        reason = err.reason.split(":")[0]
        if self._count(key, reason) and _in_dataloader_worker():
            self._new.append((key, reason))  # for the main process's counter: see SkipReportingCollate

    def _count(self, key: Hashable | None, reason: str) -> bool:
        if key is not None:
            if key in self._keys:
                return False
            self._keys.add(key)
        self.reasons[reason] += 1
        return True

    def take_new(self) -> list[tuple]:
        """(key, reason) of the skips added in this DataLoader worker process since the last call."""
        new, self._new = self._new, []
        return new

    def absorb(self, entries: list[tuple]) -> None:
        """Count skips taken (`take_new`) from a copy of this counter in a DataLoader worker process."""
        for key, reason in entries:
            self._count(key, reason)

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.reasons)


def _in_dataloader_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


class SkipReportingCollate:
    """A collate function that adds the skips counted while its items were read in a DataLoader worker
    to the batch as `batch["skipped"]` (a list of (key, reason)), for the main process to `absorb`.

    In the main process (no workers) the counter is already the main one and nothing is added; skips
    counted before the DataLoader started (e.g. at reading time) are never reported again by workers.
    """

    def __init__(self, collate_fn: Callable, skips: SkipCounter):
        self.collate_fn, self.skips = collate_fn, skips

    def __call__(self, items: list) -> dict:
        batch = self.collate_fn(items)
        new = self.skips.take_new()
        if new:
            batch["skipped"] = new
        return batch
