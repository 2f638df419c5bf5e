"""MMBench: the published TSV (base64 images), LLaVA's prompt, every option rotation, circular accuracy.

Columns read: index, question, hint, A..F (missing or 'nan' ends the options), answer (a letter), image
(base64; a short number instead refers to the row with that index, as in the published files), category.
Rows whose index is 1,000,000 or more are the circular copies some releases include; they are left out,
because every question is rotated here (shift k puts option k first), which makes the same set.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from pathlib import Path

from vlmkit.eval.benchmarks.base import (
    LETTER_ANSWER,
    EvalItem,
    Parsed,
    RowReader,
    Task,
)
from vlmkit.eval.benchmarks.choice import LETTERS, circular_scores, format_options, parse_choice, rotations

CIRCULAR_COPY_OFFSET = 1_000_000


def _present(value) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "NaN", "None")


def mmbench_prompt(question: str, hint: str | None, options: list[str]) -> str:
    """LLaVA's MMBench prompt: <image>, the hint (if any), the question, lettered options, the instruction."""
    body = f"{hint}\n{question}" if _present(hint) else question
    return f"<image>\n{body}\n{format_options(options)}\n{LETTER_ANSWER}"


class MMBenchTask(Task):
    """MMBench dev/test TSV: every option rotation asked; circular and vanilla accuracy."""

    name, prompt_id = "mmbench", "mmbench_llava_letter"
    parser = "mmbench_letter_then_option_text"
    max_new_tokens = 8
    default_file = "mmbench/MMBench_DEV_EN.tsv"

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: benchmark file not found")
        csv.field_size_limit(sys.maxsize)
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        images = {str(r.get("index")): r.get("image") for r in rows}
        items = []
        for row, r in enumerate(rows):
            if not reader.require(r, ("index", "question", "answer", "image", "A", "B"), path, row):
                continue
            try:
                index = int(float(r["index"]))
            except ValueError:
                reader.bad(path, row, "index", f"malformed row: index '{r['index']}' is not a number")
                continue
            if index >= CIRCULAR_COPY_OFFSET:
                continue
            options = []
            for letter in LETTERS[:8]:
                if not _present(r.get(letter)):
                    break
                options.append(str(r[letter]).strip())
            answer = str(r["answer"]).strip()
            if answer not in LETTERS[: len(options)]:
                reader.bad(path, row, "answer", f"malformed row: answer '{answer}' is not one of the options")
                continue
            image = self._image(r["image"], images, path, row, reader)
            if image is None:
                continue
            for k, (shifted, target) in enumerate(rotations(options, LETTERS.index(answer))):
                meta = {"index": index, "rotation": k, "category": r.get("category"),
                        "options": dict(zip(LETTERS, shifted))}  # fmt: skip
                prompt = mmbench_prompt(str(r["question"]), r.get("hint"), shifted)
                items.append(
                    EvalItem(f"{index}/r{k}", prompt, [image], LETTERS[target], meta, str(path), row)
                )
        return items

    @staticmethod
    def _image(value: str, images: dict, path: Path, row: int, reader: RowReader) -> bytes | None:
        value = str(value).strip()
        if len(value) <= 64 and value.isdigit() and value in images:  # a reference to another row's image
            value = str(images[value]).strip()
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            reader.bad(path, row, "image", "malformed row: the image is not valid base64")
            return None

    def parse(self, item: EvalItem, text: str) -> Parsed:
        return parse_choice(text, item.meta["options"])

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        correct = [p.value == it.target for it, p in zip(items, parsed)]
        metrics = circular_scores(
            [str(it.meta["index"]) for it in items], [it.meta["rotation"] for it in items], correct
        )
        return metrics, [float(c) for c in correct]
