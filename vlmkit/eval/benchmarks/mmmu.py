"""MMMU (validation): multiple-choice and open questions, with MMMU's answer-extraction rules.

Reads the published parquet files (`<Subject>/validation-*.parquet`: id, question, options as a Python list
literal, answer, question_type, image_1..image_7 as {bytes, path}). `<image k>` marks in the question and
options become `<image>` placeholders, with image_k passed in that order. Prompt (MMMU's LLaVA-1.5 config):
question, blank line, "(A) option" lines, blank line, then the letter instruction; open questions get the
short-answer instruction.

Multiple choice (MMMU's parse_multi_choice_response): strip , . ! ? ; : ' from both ends and pad with spaces;
candidates are letters written "(X)", else " X "; else, for answers longer than five words, options whose text
appears in the answer. Several candidates: the one mentioned last. None: a random letter (seeded by the
question id) -- that is MMMU's own fallback, counted here as the fallback.
Open (MMMU's parse_open_response): lower-case; per line, the text after the last of the key phrases
('could be ', 'so ', 'is ', 'thus ', 'therefore ', 'final ', 'answer ', 'result ', and '=' on the last
line), keeping the shortest; plus every number in them; numbers are rounded to 2 decimals, one-letter strings
are padded. Correct when a gold number equals a predicted number or a gold string is inside a predicted one.
"""

from __future__ import annotations

import ast
import random
import re
from pathlib import Path

from vlmkit.eval.benchmarks.base import (
    FALLBACK,
    LETTER_ANSWER,
    RULE,
    SHORT_ANSWER,
    EvalItem,
    Parsed,
    RowReader,
    Task,
    mean,
    read_records,
)
from vlmkit.eval.benchmarks.choice import LETTERS

_IMAGE_REF = re.compile(r"<image (\d+)>")
_KEY_PHRASES = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
_NUMBER_WITH_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUMBER_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUMBER_PLAIN = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])")


def parse_mmmu_choice(response: str, options: dict[str, str], seed: str = "") -> Parsed:
    """MMMU's multiple-choice extraction (module docstring); the random pick is the fallback."""
    text = response
    for ch in ",.!?;:'":
        text = text.strip(ch)
    text = f" {text} "
    letters = list(options)
    candidates = [c for c in letters if f"({c})" in text]
    marks = "bracket" if candidates else "letter"
    if not candidates:
        candidates = [c for c in letters if f" {c} " in text]
    if not candidates and len(text.split()) > 5:
        candidates = [c for c in letters if options[c].lower() in text.lower()]
        marks = "text"
    if not candidates:
        return Parsed(random.Random(seed).choice(letters), FALLBACK)
    if len(candidates) == 1:
        return Parsed(candidates[0], RULE)
    where = {
        "bracket": lambda c: text.rfind(f"({c})"),
        "letter": lambda c: text.rfind(f" {c} "),
        "text": lambda c: text.lower().rfind(options[c].lower()),
    }[marks]
    return Parsed(max(candidates, key=lambda c: (where(c), -candidates.index(c))), RULE)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_mmmu_str(text: str) -> list:
    """A number -> [rounded float]; a one-letter string -> [' x', 'x ']; else [lower-cased string]."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    return _NUMBER_WITH_COMMAS.findall(text) + _NUMBER_SCIENTIFIC.findall(text) + _NUMBER_PLAIN.findall(text)


def _key_answers(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    lines = response.split("\n")  # MMMU also splits on ". " before a capital, which never fires after lower()
    keys = []
    for i, line in enumerate(lines):
        phrases = _KEY_PHRASES + (["="] if i == len(lines) - 1 else [])
        shortest = None
        for phrase in phrases:
            if phrase in line:
                tail = line.split(phrase)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_mmmu_open(response: str) -> Parsed:
    """MMMU's open-answer extraction: the list of normalised candidate answers."""
    keys = _key_answers(response)
    candidates = keys + [n for k in keys for n in extract_numbers(k)]
    normalized = []
    for c in candidates:
        for v in normalize_mmmu_str(c):
            if v not in normalized:
                normalized.append(v)
    return Parsed(normalized, RULE)


def mmmu_open_correct(gold: str | list[str], predicted: list) -> bool:
    golds = [g for a in (gold if isinstance(gold, list) else [gold]) for g in normalize_mmmu_str(str(a))]
    for pred in predicted:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


def mmmu_prompt(question: str, options: list[str]) -> str:
    if not options:
        return f"{question}\n\n{SHORT_ANSWER}"
    lines = "".join(f"({LETTERS[i]}) {opt}\n" for i, opt in enumerate(options))
    return f"{question}\n\n{lines}\n{LETTER_ANSWER}"


class MMMUTask(Task):
    """MMMU validation parquet files; accuracy overall, on multiple-choice and on open questions."""

    name, prompt_id = "mmmu", "mmmu_llava15"
    parser = "mmmu_parse_multi_choice_or_open"
    max_new_tokens = 32
    default_file = "mmmu"  # a directory holding */validation-*.parquet, or one file

    def data_files(self, path: Path) -> list[Path]:
        if path.is_dir():
            found = sorted(path.rglob("validation-*.parquet"))
            if not found:
                raise FileNotFoundError(f"{path}: no validation-*.parquet files (MMMU/MMMU's layout)")
            return found
        if not path.is_file():
            raise FileNotFoundError(f"{path}: benchmark file not found")
        return [path]

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        items = []
        for file in self.data_files(path):
            for row, r in enumerate(read_records(file, reader)):
                if not reader.require(r, ("id", "question", "answer"), file, row):
                    continue
                try:
                    options = [str(o) for o in ast.literal_eval(r.get("options") or "[]")]
                except (ValueError, SyntaxError):
                    reader.bad(file, row, "options", "malformed row: options is not a list literal")
                    continue
                is_open = r.get("question_type") == "open" or not options
                prompt = mmmu_prompt(str(r["question"]), [] if is_open else options)
                order = [int(k) for k in _IMAGE_REF.findall(prompt)]
                images = [r.get(f"image_{k}") for k in order]
                if order and any(img is None for img in images):
                    reader.bad(file, row, f"image_{order[images.index(None)]}", "missing image")
                    continue
                prompt = _IMAGE_REF.sub("<image>", prompt)
                if not order and r.get("image_1") is not None:
                    prompt, images = f"<image>\n{prompt}", [r["image_1"]]
                answer = str(r["answer"])
                if is_open and answer.startswith("["):
                    answer = [str(a) for a in ast.literal_eval(answer)]
                meta = {"open": is_open, "options": dict(zip(LETTERS, options)), "id": r["id"]}
                items.append(EvalItem(str(r["id"]), prompt, images, answer, meta, str(file), row))
        return items

    def parse(self, item: EvalItem, text: str) -> Parsed:
        if item.meta["open"]:
            return parse_mmmu_open(text)
        return parse_mmmu_choice(text, item.meta["options"], seed=item.uid)

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        scores = []
        for it, p in zip(items, parsed):
            if it.meta["open"]:
                scores.append(float(mmmu_open_correct(it.target, p.value)))
            else:
                scores.append(
                    float(p.value in it.target if isinstance(it.target, list) else p.value == it.target)
                )
        metrics = {"accuracy": mean(scores)}
        for kind, is_open in (("multiple_choice", False), ("open", True)):
            chosen = [s for s, it in zip(scores, items) if it.meta["open"] == is_open]
            if chosen:
                metrics[f"accuracy_{kind}"] = mean(chosen)
        return metrics, scores
