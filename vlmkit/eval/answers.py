"""Held-out answer accuracy: batched greedy generation with the KV cache, exact match after normalisation."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import torch

from vlmkit.data.prompts import left_padded_batch, prepare_prompts
from vlmkit.data.records import Sample
from vlmkit.models.native.encoding import NativeEncoder

NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, map number words (zero..ten) to numerals, squeeze spaces."""
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = _ARTICLES.sub(" ", text)
    words = [NUMBER_WORDS.get(w, w) for w in text.split()]
    return " ".join(words)


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


@torch.no_grad()
def generate_answers(
    model,
    processor,
    samples: list[Sample],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[tuple[str, str | None]]:
    """(generated answer, reference) for each sample; the model is put in eval mode.

    `processor` is a composite model's `VLMProcessor` or a native model's `NativeEncoder`.
    """
    if isinstance(processor, NativeEncoder):
        from vlmkit.eval.native_answers import native_generate_answers

        return native_generate_answers(
            model, processor, samples, batch_size=batch_size, max_new_tokens=max_new_tokens,
            do_sample=do_sample, temperature=temperature, top_p=top_p,
        )  # fmt: skip
    model.eval()
    tok = processor.tokenizer
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(samples), batch_size):
        prepared = prepare_prompts(samples[start : start + batch_size], processor)
        ids, mask = left_padded_batch([p[0] for p in prepared], tok.pad_token_id, device)
        media = processor.process_media([m for p in prepared for m in p[2]])
        gen = model.generate(
            ids, mask, media.to(device) if media is not None else None,
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        texts = tok.batch_decode(gen, skip_special_tokens=True)
        results.extend((t.strip(), p[1]) for t, p in zip(texts, prepared))
    return results


def answer_accuracy(model, processor, samples: list[Sample], **kwargs) -> tuple[float, list[dict]]:
    """Exact-match accuracy on samples whose last turn is the reference answer; also returns examples."""
    pairs = generate_answers(model, processor, samples, **kwargs)
    scored = [(pred, ref) for pred, ref in pairs if ref is not None]
    if not scored:
        raise ValueError("no evaluation sample has a reference answer (a final assistant turn)")
    correct = [exact_match(p, r) for p, r in scored]
    described = [describe_sample(s) for s, (_, ref) in zip(samples, pairs) if ref is not None]
    examples = [
        {**d, "prediction": p, "reference": r, "correct": c}
        for d, (p, r), c in zip(described, scored, correct)
    ]
    return sum(correct) / len(correct), examples


def describe_sample(sample: Sample) -> dict:
    """The question (last user turn) and first media path of a sample, for reports."""
    question = next((t.text for t in reversed(sample.turns) if t.role == "user"), "")
    media = next((m for m in (*sample.images, *sample.audios) if isinstance(m, str)), None)
    return {"question": question, "media": media, "source": sample.source, "index": sample.index}


def write_examples_before_after(path, samples: list[Sample], before: list[str], after: list[str]) -> None:
    """A JSON file of held-out prompts with the greedy answer before and after training (RL stages)."""
    rows = []
    for sample, was, now in zip(samples, before, after):
        reference = sample.turns[-1].text if sample.turns[-1].role == "assistant" else None
        correct = reference is not None and exact_match(now, reference)
        rows.append({**describe_sample(sample), "answer_before": was, "prediction": now,
                     "reference": reference, "correct": correct})  # fmt: skip
    Path(path).write_text(json.dumps(rows, indent=2))
