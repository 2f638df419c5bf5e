"""Readers that turn data files into canonical records (`Sample`, `PreferenceSample`); see `FORMATS`.

Shared rules: roles human/gpt map to user/assistant, other unknown roles are errors. Media paths resolve
against ``image_folder`` / ``audio_folder`` (default: the data file's folder; audio falls back to
``image_folder``) and must stay inside unless ``allow_outside_root``. ``<image>``/``<audio>`` placeholders
must match the media count; as in LLaVA, a record with exactly one image (audio) and no placeholder gets
``"<image>\\n"`` prepended to its first user turn. ``.json`` holds a list, ``.jsonl`` one record per line;
other paths go through ``datasets``. Errors are ``BadSampleError`` naming file, record index (0-based),
field and, for jsonl, line; ``on_bad_sample="skip"`` drops and counts bad records instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from vlmkit.data.media import resolve_media_item
from vlmkit.data.records import (
    AUDIO_TOKEN,
    IMAGE_TOKEN,
    ROLES,
    BadSampleError,
    PreferenceSample,
    Sample,
    SkipCounter,
    Turn,
)

logger = logging.getLogger(__name__)

FORMATS = ("llava", "sharegpt", "messages", "hf", "preference", "prompts")
ON_BAD_SAMPLE = ("error", "skip")
_ROLE_MAP = {"human": "user", "gpt": "assistant"} | {r: r for r in ROLES}
_MEDIA = (("images", IMAGE_TOKEN, ("images", "image")), ("audios", AUDIO_TOKEN, ("audios", "audio")))
_PART_KIND = {"image": "images", "image_url": "images", "audio": "audios", "input_audio": "audios"}
_HF_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


_MediaLists = dict[str, list]


@dataclasses.dataclass
class _Ctx:
    """Where a record lives and how its media are resolved; builds located errors."""

    source: str
    index: int
    line: int | None
    image_root: str | None
    audio_root: str | None
    allow_outside_root: bool
    check_files: bool

    def error(self, field_name: str | None, reason: str) -> BadSampleError:
        if self.line is not None:
            reason += f" (line {self.line})"
        return BadSampleError(self.source, self.index, field_name, reason)


def _first(d: dict, *keys: str) -> Any:
    """The first of `keys` whose value is not None (rows from `datasets` carry None for absent keys)."""
    return next((d[k] for k in keys if d.get(k) is not None), None)


def _file_error(path: str, reason: str) -> BadSampleError:
    return BadSampleError(path, None, None, reason)


def _no_decode(feat: Any) -> Any:
    """Features with every Image/Audio set to decode=False, so rows stay lazy ({"bytes", "path"})."""
    import datasets

    if isinstance(feat, (datasets.Image, datasets.Audio)):
        return dataclasses.replace(feat, decode=False)
    if isinstance(feat, dict):
        return type(feat)({k: _no_decode(v) for k, v in feat.items()})
    if isinstance(feat, (datasets.List, datasets.LargeList)):
        return dataclasses.replace(feat, feature=_no_decode(feat.feature))
    return feat


def _hf_rows(name: str, split: str, cache_dir: str | None) -> list[dict]:
    """Rows of a local file/directory or hub dataset, loaded with `datasets`, media left undecoded."""
    import datasets

    ext = os.path.splitext(name)[1].lower()
    if ext in _HF_BUILDERS and not os.path.exists(name):
        raise _file_error(name, f"data file not found: {name}; check the path")
    if os.path.isfile(name) and ext not in _HF_BUILDERS:
        raise _file_error(name, f"unknown file type: {ext!r}; use one of {sorted(_HF_BUILDERS)}")
    try:
        if os.path.isfile(name):
            ds = datasets.load_dataset(_HF_BUILDERS[ext], data_files=name, split=split, cache_dir=cache_dir)
        elif any(os.path.exists(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(name)  # a save_to_disk directory
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(name, split=split, cache_dir=cache_dir)
    except Exception as err:
        hint = "check the split name and that the folder holds data files"
        if not os.path.exists(name):
            hint = (
                "it is no local path, so the Hugging Face Hub was asked: that needs network or a cached copy"
            )
        raise _file_error(name, f"cannot load dataset: {type(err).__name__}: {err}; {hint}") from err
    return list(ds.cast(_no_decode(ds.features)))


def _load_rows(path: str, split: str, cache_dir: str | None) -> list[tuple[int | None, Any]]:
    """(jsonl line or None, record) pairs; a malformed jsonl line is kept as its BadSampleError."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".json", ".jsonl") or not os.path.isfile(path):
        return [(None, row) for row in _hf_rows(path, split, cache_dir)]
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise _file_error(path, f"not UTF-8: byte {err.start} cannot be decoded; re-save as UTF-8") from err
    if ext == ".jsonl":
        rows: list[tuple[int | None, Any]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((lineno, json.loads(line)))
                except json.JSONDecodeError as err:
                    reason = f"invalid JSON: line {lineno}, column {err.colno}: {err.msg}"
                    rows.append((lineno, BadSampleError(path, len(rows), None, reason)))
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        reason = f"invalid JSON: line {err.lineno}, column {err.colno}: {err.msg}"
        raise _file_error(path, reason + "; for one record per line name the file .jsonl") from err
    if not isinstance(data, list):
        raise _file_error(path, f"bad file: expected a JSON list of records, got {type(data).__name__}")
    return [(None, row) for row in data]


def _media_item(item: Any, ctx: _Ctx, field_name: str, root: str | None) -> Any:
    opts = {"allow_outside_root": ctx.allow_outside_root, "check_files": ctx.check_files, "index": ctx.index}
    try:
        return resolve_media_item(item, root, source=ctx.source, field_name=field_name, **opts)
    except BadSampleError as err:
        raise ctx.error(field_name, err.reason) from err


def _part_source(part: dict, kind: str) -> Any:
    """The path/URL/bytes a media content part points at, or None for a bare placeholder part."""
    src = _first(part, kind, "path", "url", "file")
    if isinstance(src, dict) and isinstance(src.get("data"), str):  # OpenAI input_audio: base64 + format
        return f"data:audio/{src.get('format', 'wav')};base64,{src['data']}"
    return _first(src, "url", "path", "bytes") if isinstance(src, dict) else src


def _content_text(content: Any, ctx: _Ctx, field_name: str, media: _MediaLists | None) -> str:
    """Text of a turn; content parts are joined by newlines, media parts become placeholders in place."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ctx.error(
            field_name, f"bad content: expected text or a list of parts, not {type(content).__name__}"
        )
    pieces = []
    for k, part in enumerate(content):
        where, kind = f"{field_name}.content[{k}]", part.get("type") if isinstance(part, dict) else None
        if isinstance(part, str) or kind == "text":
            text = part if isinstance(part, str) else part.get("text")
            if not isinstance(text, str):
                raise ctx.error(where, "bad content: a text part needs a string 'text'")
            pieces.append(text)
        elif kind in _PART_KIND:
            if media is None:
                raise ctx.error(where, f"unexpected media: a {kind!r} part is not allowed in an answer")
            if (src := _part_source(part, kind)) is not None:
                media[_PART_KIND[kind]].append(src)
            pieces.append(IMAGE_TOKEN if _PART_KIND[kind] == "images" else AUDIO_TOKEN)
        else:
            raise ctx.error(where, f"unknown content part: {kind!r}; expected text or {list(_PART_KIND)}")
    return "\n".join(pieces)


def _parse_turns(msgs: Any, ctx: _Ctx, field_name: str, media: _MediaLists | None) -> list[Turn]:
    """Turns from a list of {"from"|"role", "value"|"content"} dicts, with roles mapped and checked."""
    if not isinstance(msgs, list) or not msgs:
        got = "nothing" if msgs is None else f"{type(msgs).__name__} {str(msgs)[:40]!r}"
        raise ctx.error(field_name, f"bad conversation: expected a non-empty list of turns, got {got}")
    turns = []
    for j, m in enumerate(msgs):
        where = f"{field_name}[{j}]"
        if not isinstance(m, dict):
            raise ctx.error(where, f"bad turn: expected an object with role and content, not {m!r:.40}")
        role = _first(m, "role", "from")
        if role not in _ROLE_MAP:
            raise ctx.error(where, f"unknown role: {role!r}; expected one of {sorted(_ROLE_MAP)}")
        content = _first(m, "content", "value")
        if content is None:
            raise ctx.error(where, "missing content: the turn has no 'value' or 'content'")
        turns.append(Turn(_ROLE_MAP[role], _content_text(content, ctx, where, media)))
    return turns


def _check_turns(turns: list[Turn], ctx: _Ctx, field_name: str, *, need_assistant: bool) -> None:
    for j, t in enumerate(turns):
        if t.role == "system" and j != 0:
            raise ctx.error(f"{field_name}[{j}]", "misplaced system turn: a system turn may only come first")
        if t.role == "assistant" and not t.text.strip():
            raise ctx.error(f"{field_name}[{j}]", "empty assistant turn: the answer text is empty")
    if not any(t.role == "user" for t in turns):
        raise ctx.error(field_name, "no user turn: the conversation needs at least one user (human) turn")
    first = next(j for j, t in enumerate(turns) if t.role != "system")  # a user turn exists
    if turns[first].role == "assistant":
        raise ctx.error(
            f"{field_name}[{first}]",
            "assistant turn first: a conversation starts with a user (human) turn, after an optional system "
            "turn; add the question before this answer or drop the answer",
        )
    if need_assistant and not any(t.role == "assistant" for t in turns):
        raise ctx.error(field_name, "no assistant turn: nothing to train on")


def _with_system(row: dict, turns: list[Turn]) -> list[Turn]:
    """Prepend a row-level `system` string (LLaMA-Factory style) unless the turns already have one."""
    system = row.get("system")
    if isinstance(system, str) and system.strip() and turns[0].role != "system":
        return [Turn("system", system), *turns]
    return turns


def _attach_media(row: dict, turns: list[Turn], part_media: _MediaLists, ctx: _Ctx) -> tuple[list, list]:
    """Resolve the record's images/audios and check they match the placeholders in `turns`."""
    out = []
    for kind, token, keys in _MEDIA:
        listed = _first(row, *keys)
        listed = [] if listed is None else listed if isinstance(listed, list) else [listed]
        if part_media[kind] and listed:
            raise ctx.error(kind, f"media given twice: in content parts and in the '{kind}' list")
        root = ctx.image_root if kind == "images" else ctx.audio_root
        items = [
            _media_item(it, ctx, f"{kind}[{k}]", root) for k, it in enumerate(part_media[kind] or listed)
        ]
        n = sum(t.text.count(token) for t in turns)
        user = next((t for t in turns if t.role == "user"), None)
        if n == 0 and len(items) == 1 and user is not None:  # LLaVA: a lone image goes before the question
            user.text, n = f"{token}\n{user.text}", 1
        if n != len(items):
            raise ctx.error(
                kind,
                f"placeholder count mismatch: the text has {n} {token} placeholder(s) but the record has "
                f"{len(items)} {kind}; put one {token} in the text where each item goes",
            )
        out.append(items)
    return out[0], out[1]


def _chat_converter(key: str | None) -> Callable[[dict, _Ctx], Sample]:
    """Converter for rows with turns under `key` ("conversations", "messages"; None: whichever exists)."""

    def convert(row: dict, ctx: _Ctx) -> Sample:
        k = key or ("messages" if row.get("messages") is not None else "conversations")
        if row.get(k) is None:
            raise ctx.error(k, f"missing field: the record has no {k!r} (keys: {sorted(row)})")
        media: _MediaLists = {"images": [], "audios": []}
        turns = _parse_turns(row[k], ctx, k, media)
        _check_turns(turns, ctx, k, need_assistant=True)
        turns = _with_system(row, turns)
        return Sample(turns, *_attach_media(row, turns, media, ctx), ctx.source, ctx.index)

    return convert


def _prompt_turns(row: dict, ctx: _Ctx, media: _MediaLists) -> list[Turn]:
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ctx.error("prompt", "empty prompt: the prompt text is empty")
        turns = [Turn("user", prompt)]
    else:
        turns = _parse_turns(prompt, ctx, "prompt", media)
    _check_turns(turns, ctx, "prompt", need_assistant=False)
    if turns[-1].role != "user":
        raise ctx.error("prompt", f"bad prompt: it must end with a user turn, not {turns[-1].role!r}")
    return _with_system(row, turns)


def _answer_text(value: Any, ctx: _Ctx, field_name: str) -> str:
    """A chosen/rejected answer: a string or assistant message(s), joined by newlines."""
    if isinstance(value, (dict, list)):
        turns = _parse_turns([value] if isinstance(value, dict) else value, ctx, field_name, None)
        if any(t.role != "assistant" for t in turns):
            raise ctx.error(field_name, "bad answer: only assistant messages; the prompt goes in 'prompt'")
        value = "\n".join(t.text for t in turns)
    if not isinstance(value, str) or not value.strip():
        raise ctx.error(field_name, f"empty answer: expected text or assistant message(s), got {value!r}")
    if IMAGE_TOKEN in value or AUDIO_TOKEN in value:
        raise ctx.error(field_name, "unexpected media: answers cannot hold media placeholders")
    return value


def _convert_preference(row: dict, ctx: _Ctx) -> PreferenceSample:
    media: _MediaLists = {"images": [], "audios": []}
    prompt = _prompt_turns(row, ctx, media)
    chosen, rejected = (_answer_text(row.get(k), ctx, k) for k in ("chosen", "rejected"))
    if chosen == rejected:
        raise ctx.error("rejected", "identical pair: chosen and rejected are the same text, nothing to learn")
    images, audios = _attach_media(row, prompt, media, ctx)
    return PreferenceSample(prompt, chosen, rejected, images, audios, ctx.source, ctx.index)


def _convert_prompt(row: dict, ctx: _Ctx) -> Sample:
    media: _MediaLists = {"images": [], "audios": []}
    turns = _prompt_turns(row, ctx, media)
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None:
        if not isinstance(answer, str) or not answer.strip():
            raise ctx.error("answer", f"bad answer: expected a non-empty string or number, got {answer!r}")
        turns.append(Turn("assistant", answer))
    return Sample(turns, *_attach_media(row, turns, media, ctx), ctx.source, ctx.index)


_CONVERTERS: dict[str, Callable[[dict, _Ctx], Any]] = {
    "llava": _chat_converter("conversations"),
    "sharegpt": _chat_converter("conversations"),
    "messages": _chat_converter("messages"),
    "hf": _chat_converter(None),
    "preference": _convert_preference,
    "prompts": _convert_prompt,
}


def detect_format(record: dict) -> str:
    """Guess the format name from one record's keys (preference > messages > conversations > prompts)."""
    keys = {k for k, v in record.items() if v is not None}
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt" if "images" in keys else "llava"
    if "prompt" in keys:
        return "prompts"
    raise ValueError(f"cannot detect the data format from keys {sorted(keys)}; pass format= one of {FORMATS}")


def read_dataset(
    path: str,
    image_folder: str | None = None,
    *,
    format: str = "auto",
    audio_folder: str | None = None,
    allow_outside_root: bool = False,
    check_files: bool = True,
    on_bad_sample: str = "error",
    skips: SkipCounter | None = None,
    split: str = "train",
    cache_dir: str | None = None,
) -> list[Sample] | list[PreferenceSample]:
    """Read any supported format (`FORMATS`, or "auto" to detect it from the first record).

    `check_files` checks media files exist while reading; `on_bad_sample` is "error" (raise on the first bad
    record) or "skip" (drop it, count it in `skips`). `split`/`cache_dir` apply to `datasets` loads.
    """
    if format not in ("auto", *FORMATS):
        raise ValueError(f"unknown data format {format!r} for {path}; valid: auto, {', '.join(FORMATS)}")
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
    path = os.fspath(path)
    if format == "hf":
        rows: list[tuple[int | None, Any]] = [(None, r) for r in _hf_rows(path, split, cache_dir)]
    else:
        rows = _load_rows(path, split, cache_dir)
    if format == "auto":
        first = next((r for _, r in rows if isinstance(r, dict)), None)
        if first is None:
            raise _file_error(path, "no usable records: the file holds no JSON object records")
        try:
            format = detect_format(first)
        except ValueError as err:
            raise _file_error(path, f"unknown format: {err}") from err
    local = os.path.exists(path)
    data_dir = os.path.abspath(path) if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    image_root = image_folder or (data_dir if local else None)
    counter = skips if skips is not None else SkipCounter()
    skipped_before, out = counter.total, []
    for i, (line, row) in enumerate(rows):
        ctx = _Ctx(path, i, line, image_root, audio_folder or image_root, allow_outside_root, check_files)
        try:
            if isinstance(row, BadSampleError):
                raise row
            if not isinstance(row, dict):
                raise ctx.error(None, f"bad record: expected a JSON object, got {type(row).__name__}")
            out.append(_CONVERTERS[format](row, ctx))
        except BadSampleError as err:
            if on_bad_sample == "error":
                raise
            counter.add(err)
    n_bad = counter.total - skipped_before
    if not out:
        raise _file_error(path, f"no usable records: {len(rows)} read, {n_bad} skipped as bad; fix the data")
    if n_bad:
        logger.warning(
            "%s: kept %d records, skipped %d bad ones: %s", path, len(out), n_bad, counter.as_dict()
        )
    return out
