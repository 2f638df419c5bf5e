"""Multiple choice: reading the chosen letter from an answer, and MMBench's circular evaluation.

The letter rule (MMBench / VLMEvalKit's "can infer option"): replace the characters . ( ) [ ] , : ; ! * # { }
with spaces, split on whitespace; if exactly one of the valid letters appears as a whole token, that is the
answer ("B", "(B)", "B. cat", "The answer is B."). The fallback ("can infer text"): if exactly one option's
text appears in the lower-cased answer, its letter. Otherwise the answer is unparsed and scores 0.

ScienceQA's own rule (LLaVA's eval_science_qa): the answer is a bare valid letter, or starts with "X. ", or
holds exactly one "The answer is X." -- else it failed; the letter rule above is then the fallback.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict

from vlmkit.eval.benchmarks.base import FAILED, FALLBACK, RULE, Parsed

LETTERS = string.ascii_uppercase
_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")
_THE_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def letter_by_token(text: str, letters: str) -> str | None:
    """The one valid letter that appears as a whole token (after removing separators), else None."""
    tokens = set(_SEPARATORS.sub(" ", text).split())
    found = [c for c in letters if c in tokens]
    return found[0] if len(found) == 1 else None


def letter_by_option_text(text: str, options: dict[str, str]) -> str | None:
    """The letter of the one option whose text appears in the lower-cased answer, else None."""
    lowered = text.lower()
    found = [k for k, v in options.items() if str(v).lower() in lowered]
    return found[0] if len(found) == 1 else None


def parse_choice(text: str, options: dict[str, str]) -> Parsed:
    """The letter rule, then the option-text fallback (MMBench's order)."""
    letter = letter_by_token(text, "".join(options))
    if letter is not None:
        return Parsed(letter, RULE)
    letter = letter_by_option_text(text, options)
    return Parsed(letter, FALLBACK) if letter is not None else Parsed(None, FAILED)


def parse_scienceqa_letter(text: str, options: dict[str, str]) -> Parsed:
    """LLaVA's ScienceQA rule first, then `parse_choice` as the counted fallback."""
    text = text.strip()
    letters = "".join(options)
    if text in letters and len(text) == 1:
        return Parsed(text, RULE)
    if len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        return Parsed(text[0], RULE)
    said = _THE_ANSWER_IS.findall(text)
    if len(said) == 1 and said[0] in letters:
        return Parsed(said[0], RULE)
    fallback = parse_choice(text, options)
    return Parsed(fallback.value, FALLBACK) if fallback.value is not None else Parsed(None, FAILED)


def rotations(options: list[str], answer_index: int) -> list[tuple[list[str], int]]:
    """Every circular shift of the options with the answer's new index: shift k puts option k first."""
    n = len(options)
    return [(options[k:] + options[:k], (answer_index - k) % n) for k in range(n)]


def format_options(options: list[str]) -> str:
    """'A. first\\nB. second...'."""
    return "\n".join(f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options))


def circular_scores(groups: list[str], rotation: list[int], correct: list[bool]) -> dict:
    """MMBench metrics from per-prompt correctness.

    groups: question id of each prompt; rotation: its circular shift (0 = the original order).
    `circular_accuracy`: a question counts only if every one of its rotations is right (MMBench's metric);
    `vanilla_accuracy`: the original order alone.
    """
    by_question: dict[str, list[bool]] = defaultdict(list)
    vanilla: dict[str, bool] = {}
    for g, r, c in zip(groups, rotation, correct):
        by_question[g].append(c)
        if r == 0:
            vanilla[g] = c
    n = len(by_question)
    return {
        "circular_accuracy": sum(all(v) for v in by_question.values()) / n if n else 0.0,
        "vanilla_accuracy": sum(vanilla.values()) / len(vanilla) if vanilla else 0.0,
        "questions": n,
    }
