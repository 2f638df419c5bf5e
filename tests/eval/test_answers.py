"""Held-out answer accuracy: normalisation, scoring and batched (left-padded) generation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmkit.config.recipes import Stage2Config
from vlmkit.data.records import Sample, Turn
from vlmkit.eval.answers import (
    answer_accuracy,
    exact_match,
    generate_answers,
    normalize_answer,
)
from vlmkit.models.build import build_vlm

QUESTIONS = [
    "What digit is this?",
    "Name the digit in the picture, please.",
    "Digit?",
    "Which number is shown?",
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Seven.", "7"),
        ("  The answer is SEVEN!  ", "answer is 7"),
        ("an Eight", "8"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("It's 3", "its 3"),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    "prediction, reference, match",
    [
        ("7", "7", True),
        ("seven", "7", True),
        ("The 7.", "7", True),
        ("7", "seven", True),
        ("7 8", "7", False),
        ("1", "7", False),
        ("", "7", False),
        ("Yes", "yes", True),
        ("no.", "yes", False),
    ],
)
def test_exact_match(prediction, reference, match):
    assert exact_match(prediction, reference) is match


@pytest.fixture(scope="module")
def vlm():
    torch.manual_seed(0)
    cfg = Stage2Config(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    return build_vlm(cfg, cfg)


def _samples(n: int) -> list[Sample]:
    out = []
    for i in range(n):
        image = Image.new("RGB", (32, 32), (30 * i % 256, 80, 200 - 20 * i))
        turns = [Turn("user", f"<image>\n{QUESTIONS[i % len(QUESTIONS)]}"), Turn("assistant", str(i % 10))]
        out.append(Sample(turns, images=[image], source="eval.json", index=i))
    return out


def _fake_generate(processor, answer_for_row, calls):
    tok = processor.tokenizer

    def generate(input_ids, attention_mask, media=None, **kwargs):
        calls.append((input_ids.clone(), attention_mask.clone(), media, kwargs))
        rows = [tok(answer_for_row(len(calls), r) + tok.eos_token, add_special_tokens=False)["input_ids"]
                for r in range(input_ids.shape[0])]  # fmt: skip
        width = max(map(len, rows))
        return torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])

    return generate


@pytest.mark.parametrize("correct", [True, False])
def test_answer_accuracy_scores_what_the_model_says(vlm, monkeypatch, correct):
    model, processor = vlm
    samples = _samples(7)
    batch_size = 3
    calls = []

    def answer(call: int, row: int) -> str:
        digit = int(samples[(call - 1) * batch_size + row].turns[-1].text)
        words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
        return f"{words[digit].capitalize()}." if correct else str((digit + 1) % 10)

    monkeypatch.setattr(model, "generate", _fake_generate(processor, answer, calls))
    accuracy, examples = answer_accuracy(model, processor, samples, batch_size=batch_size, max_new_tokens=5)
    assert accuracy == (1.0 if correct else 0.0)
    assert len(examples) == 7 and all(e["correct"] is correct for e in examples)
    assert [e["reference"] for e in examples] == [s.turns[-1].text for s in samples]
    assert [ids.shape[0] for ids, *_ in calls] == [3, 3, 1]
    ids, mask, media, kwargs = calls[0]
    assert media.shape == (3, 3, 32, 32)  # one image per prompt, in order
    assert kwargs["max_new_tokens"] == 5 and kwargs["do_sample"] is False
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any()  # left-padded
    assert not (ids == processor.tokenizer.convert_tokens_to_ids("<|im_end|>"))[:, -1].any()
    # Each prompt ends with the generation prompt, not with the answer.
    assert processor.tokenizer.decode(ids[0][mask[0] == 1]).endswith("<|im_start|>assistant\n")


def test_samples_without_reference_cannot_be_scored(vlm, monkeypatch):
    model, processor = vlm
    sample = _samples(1)[0]
    sample.turns = sample.turns[:1]
    monkeypatch.setattr(model, "generate", _fake_generate(processor, lambda c, r: "1", []))
    with pytest.raises(ValueError, match="no evaluation sample has a reference answer"):
        answer_accuracy(model, processor, [sample])


def test_left_padding_gives_the_same_answers_as_batch_size_one(vlm):
    model, processor = vlm
    samples = _samples(5)
    lengths = {len(s.turns[0].text) for s in samples}
    assert len(lengths) > 1  # prompts of different lengths, so the batch really is padded
    batched = generate_answers(model, processor, samples, batch_size=5, max_new_tokens=6)
    single = [generate_answers(model, processor, [s], batch_size=1, max_new_tokens=6)[0] for s in samples]
    assert batched == single
    assert any(text for text, _ in batched)  # the random model does say something
    assert not model.training
