"""Reading the digit back out of the embedded digits data's answer sentences."""

from __future__ import annotations

import re

from vlmkit.data.digits import DIGIT_WORDS

_WORD_TO_NUMERAL = {w: str(i) for i, w in enumerate(DIGIT_WORDS)}


def digit_in(text: str) -> str:
    """The digit a built record's answer names, to check the data (evaluation uses eval.answers.exact_match).

    Steps: lowercase; replace every character that is not a-z or 0-9 with a space; split on whitespace;
    return the first token that is a single numeral ("7") or a digit word ("seven" -> "7"). If no token is a
    digit, return the cleaned tokens joined by one space, so it never equals a numeral by accident:
    "Seven." -> "7", "The digit is 7" -> "7", " 7 " -> "7", "seventeen" -> "seventeen", "17" -> "17",
    "Yes!" -> "yes", "" -> "".
    """
    tokens = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    for tok in tokens:
        if len(tok) == 1 and tok.isdigit():
            return tok
        if tok in _WORD_TO_NUMERAL:
            return _WORD_TO_NUMERAL[tok]
    return " ".join(tokens)
