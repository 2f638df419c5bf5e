"""The scoring rules as pure functions, against values computed by hand."""

from __future__ import annotations

import pytest

from vlmkit.eval.benchmarks.base import FAILED, FALLBACK, RULE
from vlmkit.eval.benchmarks.chartqa import relaxed_correct
from vlmkit.eval.benchmarks.choice import (
    circular_scores,
    parse_choice,
    parse_scienceqa_letter,
    rotations,
)
from vlmkit.eval.benchmarks.mmmu import mmmu_open_correct, parse_mmmu_choice, parse_mmmu_open
from vlmkit.eval.benchmarks.pope import parse_yes_no, pope_metrics
from vlmkit.eval.benchmarks.vqa import normalize_vqa_answer, vqa_accuracy


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs!", "2 dogs"),  # number word, '!' with no space around it becomes a space, then squeezed
        ("The cat", "cat"),  # article dropped
        ("an apple a day", "apple day"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),  # only none/zero..ten are mapped
        ("dont", "don't"),  # contraction restored
        ("isnt", "isn't"),
        ("couldnt've", "couldn't've"),  # one of two apostrophes dropped
        ("Im", "im"),  # the VQA script's "Im" key never fires after lowercasing
        ("3.5", "3.5"),  # a period before a digit stays
        ("end.", "end"),
        ("1,000", "1000"),  # a digit-comma-digit group: marks are deleted, not spaced
        ("yes, sir", "yes sir"),  # a mark next to a space is deleted
        ("red-green", "red green"),  # a mark with no space around becomes a space
        ("\tYes\n", "yes"),
        ("left (top)", "left top"),
    ],
)
def test_normalize_vqa_answer_corner_cases(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_vqa_accuracy_leave_one_out():
    # 2 of 10 humans said "2": leaving out one of them leaves 1 match (1/3), else 2 (2/3): (2/3 + 16/3) / 10.
    assert vqa_accuracy("two", ["2", "2"] + ["3"] * 8) == pytest.approx(0.6)
    # 3 matches: left-out matching (3 subsets) -> 2/3; the other 7 -> 1: (2 + 7) / 10.
    assert vqa_accuracy("2", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0
    assert vqa_accuracy("4", ["2"] * 10) == 0.0
    assert vqa_accuracy("The Dog.", ["dog"] * 10) == 1.0  # both sides normalised
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("10.4", "10", True),  # 4% off
        ("10.6", "10", False),  # 6% off
        ("40%", "0.41", True),  # 0.40 vs 0.41: 2.4%
        ("0", "0", True),  # a zero answer falls back to string equality
        ("0.01", "0", False),
        ("Yes", "yes", True),
        (" 2019 ", "2019", True),
        ("2020", "2019", True),  # numbers are relaxed, years too (ChartQA's rule)
        ("Germany", "France", False),
    ],
)
def test_chartqa_relaxed_correct(pred, gold, ok):
    assert relaxed_correct(pred, gold) is ok


def test_pope_metrics_all_yes():
    m = pope_metrics(["yes", "yes", "no", "no", "no"], ["yes"] * 5)
    assert m == {"accuracy": 0.4, "precision": 0.4, "recall": 1.0, "f1": pytest.approx(0.8 / 1.4),
                 "yes_ratio": 1.0, "n": 5}  # fmt: skip


def test_pope_metrics_mixed():
    # tp=1 (yes,yes), fn=1 (yes,no), tn=1 (no,no), fp=1 (no,yes)
    m = pope_metrics(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
    assert (m["accuracy"], m["precision"], m["recall"], m["f1"], m["yes_ratio"]) == (0.5, 0.5, 0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "text, value, how",
    [
        ("Yes.", "yes", RULE),
        ("No, there is not.", "no", RULE),
        ("I do not see one", "no", RULE),
        ("Yes. But no.", "yes", RULE),  # only the text before the first period counts
        ("There is a cat", "yes", FALLBACK),  # POPE's default is yes; counted
        ("Nope", "yes", FALLBACK),
    ],
)
def test_parse_yes_no(text, value, how):
    parsed = parse_yes_no(text)
    assert (parsed.value, parsed.how) == (value, how)


OPTIONS = {"A": "cat", "B": "dog", "C": "cow", "D": "horse"}


@pytest.mark.parametrize(
    "text, value, how",
    [
        ("B", "B", RULE),
        ("(C) cow", "C", RULE),
        ("The answer is D.", "D", RULE),
        ("It is a dog", "B", FALLBACK),  # no letter token; one option's text
        ("B or C", None, FAILED),  # two letters, and no option text
        ("a cow or a dog", None, FAILED),  # two option texts
        ("", None, FAILED),
    ],
)
def test_parse_choice(text, value, how):
    parsed = parse_choice(text, OPTIONS)
    assert (parsed.value, parsed.how) == (value, how)


@pytest.mark.parametrize(
    "text, value, how",
    [
        ("B", "B", RULE),
        ("C. cow", "C", RULE),
        ("The answer is A.", "A", RULE),
        ("I pick (D)", "D", FALLBACK),
        ("cow", "C", FALLBACK),
        ("no idea", None, FAILED),
    ],
)
def test_parse_scienceqa_letter(text, value, how):
    parsed = parse_scienceqa_letter(text, OPTIONS)
    assert (parsed.value, parsed.how) == (value, how)


def test_rotations_move_the_answer():
    assert rotations(["a", "b", "c"], 2) == [(["a", "b", "c"], 2), (["b", "c", "a"], 1), (["c", "a", "b"], 0)]


def test_circular_eval_one_failed_rotation_fails_the_question():
    groups = ["q1"] * 4 + ["q2"] * 3
    rotation = [0, 1, 2, 3, 0, 1, 2]
    correct = [True, True, False, True, True, True, True]  # q1 fails its rotation 2
    m = circular_scores(groups, rotation, correct)
    assert m == {"circular_accuracy": 0.5, "vanilla_accuracy": 1.0, "questions": 2}


MMMU_OPTIONS = {"A": "gravity", "B": "friction", "C": "magnetism"}


@pytest.mark.parametrize(
    "text, value",
    [
        ("(B)", "B"),
        ("B", "B"),
        ("The answer is C because", "C"),
        ("(A) is wrong, so (C) is right", "C"),  # several: the last one mentioned
        ("I believe the force here is really friction acting", "B"),  # > 5 words: option text
    ],
)
def test_parse_mmmu_choice_rule(text, value):
    parsed = parse_mmmu_choice(text, MMMU_OPTIONS, seed="q")
    assert (parsed.value, parsed.how) == (value, RULE)


def test_parse_mmmu_choice_random_fallback_is_seeded_and_counted():
    first = parse_mmmu_choice("no idea", MMMU_OPTIONS, seed="q7")
    assert first.how == FALLBACK and first.value in MMMU_OPTIONS
    assert parse_mmmu_choice("no idea", MMMU_OPTIONS, seed="q7") == first


def test_parse_mmmu_open():
    parsed = parse_mmmu_open("The answer is 42.")
    assert 42.0 in parsed.value
    assert mmmu_open_correct("42", parsed.value)
    assert mmmu_open_correct("42.001", parsed.value)  # numbers rounded to 2 decimals
    assert not mmmu_open_correct("41", parsed.value)
    assert mmmu_open_correct(["paris", "Paris, France"], parse_mmmu_open("It is Paris").value)
    assert mmmu_open_correct("1,000", parse_mmmu_open("so the total = 1000").value)
