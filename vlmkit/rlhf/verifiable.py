"""Verifiable reward functions, by name: checks of a completion against its reference answer or a format.

Every function is called as `fn(completions=[str], references=[str | None], prompts=[str])` and returns one
float per completion. `REWARD_FUNCTIONS` is the registry that `--reward_funcs` names resolve against; a
`module:function` name imports a user's own function with the same signature.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable

from vlmkit.eval.answers import exact_match

RewardFunction = Callable[..., list[float]]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_ANSWER = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
_LETTER = re.compile(r"(?:^|[^A-Za-z])\(?([A-Z])\)?(?:[.):]|\s|$)")
_NUMBER = re.compile(r"[-+]?\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|[-+]?\.\d+")
NUMERIC_REL_TOL = 0.05  # ChartQA's relaxed accuracy: within 5% of the reference


def answer_part(completion: str) -> str:
    """The text inside `<answer>...</answer>` when the completion has the tag, else the whole completion."""
    match = _ANSWER_TAG.search(completion)
    return match.group(1).strip() if match else completion


def exact_answer(completions: list[str], references: list[str | None], **kwargs) -> list[float]:
    """1.0 where the (tagged) answer equals the reference after normalisation ("Seven." == "7")."""
    return [
        float(ref is not None and exact_match(answer_part(c), ref)) for c, ref in zip(completions, references)
    ]


def digit_match(completions: list[str], references: list[str | None], **kwargs) -> list[float]:
    """The embedded digits' reward: 1.0 when the answer names the reference digit (as `exact_answer`)."""
    return exact_answer(completions, references)


def choice_letter(completions: list[str], references: list[str | None], **kwargs) -> list[float]:
    """1.0 where the first option letter in the answer ("B", "(B)", "B.", "Answer: B") is the reference's."""
    scores = []
    for completion, ref in zip(completions, references):
        match = _LETTER.search(answer_part(completion).strip())
        scores.append(float(ref is not None and match is not None and match.group(1) == ref.strip().upper()))
    return scores


def parse_number(text: str) -> float | None:
    """The last number written in `text` ("1,234.5" -> 1234.5; a trailing "%" is ignored), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", "").rstrip("."))
    except ValueError:
        return None


def numeric_match(completions: list[str], references: list[str | None], **kwargs) -> list[float]:
    """1.0 where the answer's last number is within 5% of the reference number (exactly equal for 0)."""
    scores = []
    for completion, ref in zip(completions, references):
        pred, target = parse_number(answer_part(completion)), parse_number(ref or "")
        ok = pred is not None and target is not None and math.isclose(pred, target, rel_tol=NUMERIC_REL_TOL)
        scores.append(float(ok))
    return scores


def think_answer_format(completions: list[str], **kwargs) -> list[float]:
    """1.0 for completions shaped `<think>...</think><answer>...</answer>` (nothing else around), else 0.0."""
    return [float(_THINK_ANSWER.match(c) is not None) for c in completions]


REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "exact_answer": exact_answer,
    "digit_match": digit_match,
    "choice_letter": choice_letter,
    "numeric_match": numeric_match,
    "think_answer_format": think_answer_format,
}


def resolve_reward_function(name: str) -> RewardFunction:
    """A registered reward function by name, or `module:function` imported."""
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"reward function {name!r}: not a registered name ({', '.join(REWARD_FUNCTIONS)}) "
            "nor 'module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward function {name!r}: cannot import {module_name!r} ({err})") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward function {name!r}: {module_name} has no function {attr!r}")
    return fn
