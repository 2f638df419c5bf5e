"""The embedded text corpus for pretraining the tiny LLM: the tiny world's language, written offline.

Documents (separated by blank lines in `lm_corpus_{train,eval}.txt`) are drawn from a seeded generator:
captions, questions and answers about digits in many phrasings, chat-formatted exchanges in the ChatML form
the later stages use (with the digit named in the user turn where an image or a recording will stand; the
image and audio stage-1 captions and instructions and stage-2 questions all appear), and
general sentences (counting, parity, sums, order). There is no image or audio in text, so no held-out label
can leak: "a handwritten seven" says nothing about which eval image shows a seven.

The train and eval files come from different random streams of the same generator: eval measures how well
the model learned the language, not memorised documents.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vlmkit.data.digits import (
    ANSWER_SENTENCES,
    CAPTION_TEMPLATES,
    CLIP_TRAIN_TEMPLATES,
    DIGIT_WORDS,
    NUMERALS,
    QUESTIONS,
    STAGE1_INSTRUCTIONS,
    rng_for,
)
from vlmkit.data.spoken_digits import AUDIO_CAPTIONS, AUDIO_QUESTIONS, AUDIO_STAGE1_INSTRUCTIONS

EXTRA_CAPTIONS = [
    "A picture of a handwritten {w}.",
    "This image shows the digit {n}.",
    "The number {w}, drawn in white.",
    "A {w} written by hand on a dark background.",
    "A blurry handwritten {n}.",
    "A white {w}.",
    "The handwritten number {w}.",
]
# The audio stage-1 captions and stage-2 questions themselves, plus a few more phrasings.
SPOKEN_CAPTIONS = [
    *AUDIO_CAPTIONS,
    "A recording of someone saying {w}.",
    "The spoken digit {w}.",
    "A voice says {w}.",
    "Someone says the number {w}.",
]
SPOKEN_QUESTIONS = [*AUDIO_QUESTIONS, "Transcribe the audio."]
DESCRIBE_AUDIO = [s.replace("{token}", "").strip() for s in AUDIO_STAGE1_INSTRUCTIONS if s != "{token}"]
# How the user turn names the digit where the recording will stand.
SPOKEN_MENTIONS = ["{w}", "the word {w}", "a voice saying {w}", "someone says {w}", "the spoken digit {w}"]
DESCRIBE = [s.replace("{token}", "").strip() for s in STAGE1_INSTRUCTIONS if s != "{token}"]
# How the user turn names the digit where the media will stand. Each puts the digit after a space, the form
# captions use, so the model learns to carry it from the prompt into the answer.
MEDIA_MENTIONS = [
    "the digit {w}", "a {w}", "number {n}", "digit {n}", "a handwritten {w}", "this is a {w}",
    "the number {w}", "image of a {w}", "an image: {n}",
]  # fmt: skip


def _im(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>"


def _fill(template: str, d: int) -> str:
    return template.format(n=NUMERALS[d], w=DIGIT_WORDS[d])


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[rng.integers(len(options))]


def _caption(rng, d: int) -> str:
    return _fill(_pick(rng, CAPTION_TEMPLATES + CLIP_TRAIN_TEMPLATES + EXTRA_CAPTIONS), d)


def _answer(rng, d: int) -> str:
    return _pick(rng, [NUMERALS[d], DIGIT_WORDS[d], *(s.format(d) for s in ANSWER_SENTENCES)])


def doc_captions(rng, d: int) -> str:
    """A few captions of one digit in a row, in different phrasings."""
    return " ".join(_caption(rng, d) for _ in range(rng.integers(2, 5)))


def doc_chat_caption(rng, d: int) -> str:
    """A stage-1-shaped exchange: the digit named where the image will be, then a caption."""
    mention = _fill(_pick(rng, MEDIA_MENTIONS), d)
    instruction = _pick(rng, ["", *DESCRIBE])
    user = _pick(rng, [f"{mention}\n{instruction}", f"{instruction}\n{mention}"]) if instruction else mention
    return _im("user", user) + "\n" + _im("assistant", _caption(rng, d))


def doc_chat_question(rng, d: int) -> str:
    """A stage-2-shaped exchange: the digit named, a question, the answer."""
    mention = _fill(_pick(rng, MEDIA_MENTIONS), d)
    question = _pick(rng, QUESTIONS)
    return _im("user", f"{mention}\n{question}") + "\n" + _im("assistant", _answer(rng, d))


def doc_spoken(rng, d: int) -> str:
    """Audio-shaped text: a spoken-digit caption alone, or the digit named where the recording will stand,
    then an audio stage-1 instruction and caption or an audio stage-2 question and answer."""
    kind = rng.random()
    if kind < 0.3:
        return _fill(_pick(rng, SPOKEN_CAPTIONS), d)
    mention = _fill(_pick(rng, SPOKEN_MENTIONS), d)
    if kind < 0.65:
        instruction = _pick(rng, ["", *DESCRIBE_AUDIO])
        user = (
            _pick(rng, [f"{mention}\n{instruction}", f"{instruction}\n{mention}"]) if instruction else mention
        )
        return _im("user", user) + "\n" + _im("assistant", _fill(_pick(rng, SPOKEN_CAPTIONS), d))
    user = f"{mention}\n{_pick(rng, SPOKEN_QUESTIONS)}"
    return _im("user", user) + "\n" + _im("assistant", _pick(rng, [DIGIT_WORDS[d], NUMERALS[d]]))


def doc_general(rng, d: int) -> str:
    """General sentences about numbers: parity, counting, sums, neighbours, words and numerals."""
    e = int(rng.integers(10))
    kind = int(rng.integers(6))
    if kind == 0:
        return f"{DIGIT_WORDS[d].capitalize()} is an {'even' if d % 2 == 0 else 'odd'} number."
    if kind == 1:
        start = int(rng.integers(0, 6))
        return " ".join(DIGIT_WORDS[start : start + int(rng.integers(3, 5))]) + "."
    if kind == 2 and d + e <= 9:
        return f"{DIGIT_WORDS[d].capitalize()} plus {DIGIT_WORDS[e]} is {DIGIT_WORDS[d + e]}."
    if kind == 3:
        return f"The word {DIGIT_WORDS[d]} is written {NUMERALS[d]}."
    if kind == 4 and d < 9:
        return f"After {DIGIT_WORDS[d]} comes {DIGIT_WORDS[d + 1]}."
    question = _pick(rng, ["Is it an even number?", "Write the digit as a word."])
    answer = ("yes" if d % 2 == 0 else "no") if "even" in question else DIGIT_WORDS[d]
    return f"{question} {answer}"


DOC_KINDS: list[tuple[float, Callable[[np.random.Generator, int], str]]] = [
    (0.2, doc_captions),
    (0.35, doc_chat_caption),
    (0.15, doc_chat_question),
    (0.2, doc_spoken),
    (0.1, doc_general),
]


def corpus_documents(rng: np.random.Generator, n: int) -> list[str]:
    """`n` documents drawn from `DOC_KINDS` with their weights; digits uniform."""
    weights = np.array([w for w, _ in DOC_KINDS])
    kinds = rng.choice(len(DOC_KINDS), size=n, p=weights / weights.sum())
    return [DOC_KINDS[k][1](rng, int(rng.integers(10))) for k in kinds]


def write_lm_corpus(root: Path, seed: int, n_train: int = 6000, n_eval: int = 600) -> dict[str, int]:
    """Write `lm_corpus_train.txt` and `lm_corpus_eval.txt` (documents separated by blank lines)."""
    counts = {}
    for split, n in (("train", n_train), ("eval", n_eval)):
        docs = corpus_documents(rng_for(seed, f"lm_corpus_{split}"), n)
        (root / f"lm_corpus_{split}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        counts[f"lm_corpus_{split}"] = n
    return counts
