"""The canonical in-memory record every reader produces and every collator consumes."""

from __future__ import annotations

from collections import Counter
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
    """Counts skipped records by reason, for `on_bad_sample: skip` and the end-of-run report."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def add(self, err: BadSampleError) -> None:
        self.reasons[err.reason.split(":")[0]] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.reasons)
