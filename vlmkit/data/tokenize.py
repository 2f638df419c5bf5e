"""Chat-template tokenization with assistant-only labels and media placeholder expansion.

Labels come from the rendered template itself: for every assistant turn the text of `messages[:i]` with a
generation prompt must be a prefix of `messages[:i+1]`, and the characters in between are the supervised span.
This works for any chat template (no `{% generation %}` markers needed) and refuses templates where it
cannot hold, instead of silently training on nothing (LLaVA's "tokenization mismatch").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlmkit.data.records import AUDIO_TOKEN, IMAGE_TOKEN, BadSampleError, Sample

IGNORE_INDEX = -100


class SampleDropped(BadSampleError):
    """A sample removed by a data option (e.g. `truncation: drop`); always counted, never fatal."""


@dataclass
class TokenizedSample:
    """Token ids and labels with media placeholders already expanded to `num_media_tokens` ids each."""

    input_ids: list[int]
    labels: list[int]
    media: list = field(default_factory=list)
    source: str = "<memory>"
    index: int = 0

    @property
    def num_supervised(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


def check_media_counts(sample: Sample, modality: str) -> list:
    """The sample's media for `modality`, after checking placeholder counts; raises BadSampleError."""
    for token, items, name in (
        (IMAGE_TOKEN, sample.images, "images"),
        (AUDIO_TOKEN, sample.audios, "audios"),
    ):
        n = sample.count(token)
        if n != len(items):
            raise BadSampleError(
                sample.source, sample.index, name, f"{n} '{token}' placeholders but {len(items)} {name}"
            )
    other = sample.audios if modality == "image" else sample.images
    if other:
        kind = "audio" if modality == "image" else "image"
        raise BadSampleError(
            sample.source, sample.index, f"{kind}s", f"this is a {modality} model; got {kind} input"
        )
    return sample.images if modality == "image" else sample.audios


def _render(
    tokenizer,
    messages: list[dict],
    add_generation_prompt: bool = False,
    *,
    source: str = "<memory>",
    index: int = 0,
) -> str:
    """The chat template's text; a conversation the template refuses is a BadSampleError naming the record."""
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as err:  # jinja's TemplateError (raise_exception in the template) or a ValueError
        roles = [m["role"] for m in messages]
        raise BadSampleError(
            source, index, "conversations",
            f"the tokenizer's chat template refuses this conversation (roles {roles}): {err}; make the turns "
            "follow the template's rules (most want user and assistant turns alternating, the user first)",
        ) from err  # fmt: skip


def assistant_spans(tokenizer, messages: list[dict], source: str = "<memory>", index: int = 0):
    """Render the conversation; return (text, [(start, end) character spans of assistant replies])."""
    where = {"source": source, "index": index}
    text = _render(tokenizer, messages, **where)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True, **where)
        upto = _render(tokenizer, messages[: i + 1], **where)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise BadSampleError(
                source, index, "conversations",
                f"tokenization mismatch: the chat template does not render turn {i} as a prefix of the "
                "conversation, so assistant tokens cannot be located; use a standard chat template",
            )  # fmt: skip
        end = len(upto.rstrip())
        spans.append((len(prompt), end))
    return text, spans


def tokenize_sample(
    sample: Sample,
    tokenizer,
    *,
    modality: str,
    num_media_tokens: int,
    max_length: int,
    truncation: str = "error",
) -> TokenizedSample:
    """Tokenize one conversation; labels only on assistant replies; media placeholders expanded."""
    media = check_media_counts(sample, modality)
    media_token = IMAGE_TOKEN if modality == "image" else AUDIO_TOKEN
    media_id = tokenizer.convert_tokens_to_ids(media_token)
    messages = [{"role": t.role, "content": t.text} for t in sample.turns]
    text, spans = assistant_spans(tokenizer, messages, sample.source, sample.index)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids, labels = [], []
    for tok, (start, _end) in zip(enc["input_ids"], enc["offset_mapping"]):
        supervised = any(s <= start < e for s, e in spans)
        if tok == media_id:
            input_ids.extend([media_id] * num_media_tokens)
            labels.extend([IGNORE_INDEX] * num_media_tokens)
        else:
            input_ids.append(tok)
            labels.append(tok if supervised else IGNORE_INDEX)
    if not any(t != IGNORE_INDEX for t in labels):
        raise BadSampleError(
            sample.source, sample.index, "conversations",
            "zero supervised tokens: no assistant reply survives the chat template (LLaVA's 'tokenization "
            "mismatch'); check the roles and the tokenizer's chat template",
        )  # fmt: skip
    if len(input_ids) > max_length:
        input_ids, labels = _truncate(input_ids, labels, media_id, max_length, truncation, sample)
    return TokenizedSample(input_ids, labels, list(media), sample.source, sample.index)


def _truncate(input_ids, labels, media_id, max_length, truncation, sample):
    kept_media = sum(1 for t in input_ids[:max_length] if t == media_id)
    total_media = sum(1 for t in input_ids if t == media_id)
    if kept_media != total_media:
        reason = (
            f"too long: the sample needs {len(input_ids)} tokens; cutting to max_length={max_length} would "
            "cut through media tokens (raise max_length, or set truncation: drop)"
        )
        if truncation == "drop":
            raise SampleDropped(sample.source, sample.index, "max_length", reason)
        raise BadSampleError(sample.source, sample.index, "max_length", reason)
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    if not any(t != IGNORE_INDEX for t in labels):
        raise SampleDropped(
            sample.source, sample.index, "max_length",
            f"no supervised tokens left after truncation to max_length={max_length}",
        )  # fmt: skip
    return input_ids, labels


def tokenize_prompt(
    sample: Sample, tokenizer, *, modality: str, num_media_tokens: int
) -> tuple[list[int], str | None]:
    """Token ids of the conversation up to its last assistant turn, with a generation prompt.

    Returns (input_ids with expanded media, reference answer or None).
    """
    check_media_counts(sample, modality)
    turns = list(sample.turns)
    reference = None
    if turns and turns[-1].role == "assistant":
        reference = turns.pop().text
    messages = [{"role": t.role, "content": t.text} for t in turns]
    text = _render(tokenizer, messages, add_generation_prompt=True, source=sample.source, index=sample.index)
    media_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN if modality == "image" else AUDIO_TOKEN)
    ids = []
    for tok in tokenizer(text, add_special_tokens=False)["input_ids"]:
        ids.extend([tok] * num_media_tokens if tok == media_id else [tok])
    return ids, reference
