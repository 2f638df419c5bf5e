"""`mcq` and `vqa`: a user's own json/jsonl/parquet file, with a field mapping.

Fields (rename with `--field_map question=q,answer=gt,...`): `question`, `image` (a path relative to the
image folder, a list of them, or {bytes, path}), `answer`, `options` (mcq: a list, or a {letter: text}
object) and an optional `id`. mcq: the answer may be a letter, an option index or the option text; the prompt
and parser are MMBench's (one order, no rotation). vqa: a string answer is scored by exact match after the
VQA normalisation; a list of human answers by the VQA accuracy.
"""

from __future__ import annotations

from pathlib import Path

from vlmkit.eval.benchmarks.base import (
    EvalItem,
    Parsed,
    RowReader,
    Task,
    mean,
    read_records,
    with_image_token,
)
from vlmkit.eval.benchmarks.choice import LETTERS, parse_choice
from vlmkit.eval.benchmarks.mmbench import mmbench_prompt
from vlmkit.eval.benchmarks.vqa import RULE, SHORT_ANSWER, normalize_vqa_answer, vqa_accuracy

FIELDS = ("question", "image", "answer", "options", "id")


def parse_field_map(text: str | dict | None) -> dict[str, str]:
    """'question=q,answer=gt' -> {'question': 'q', 'answer': 'gt', other fields: themselves}."""
    given = dict(text) if isinstance(text, dict) else {}
    if isinstance(text, str) and text.strip():
        for pair in text.split(","):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"field_map entry '{pair}' is not field=column")
            given[key.strip()] = value.strip()
    unknown = set(given) - set(FIELDS)
    if unknown:
        raise ValueError(f"field_map: unknown fields {sorted(unknown)}; valid: {', '.join(FIELDS)}")
    return {f: given.get(f, f) for f in FIELDS}


class CustomTask(Task):
    """Shared loading of a user's rows; `mcq` and `vqa` differ in options, parsing and scoring."""

    default_file = ""
    needs_options = False

    def __init__(self, field_map: str | dict | None = None):
        self.fields = parse_field_map(field_map)

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        f = self.fields
        required = (f["question"], f["image"], f["answer"]) + ((f["options"],) if self.needs_options else ())
        items = []
        for row, r in enumerate(read_records(path, reader)):
            if not reader.require(r, required, path, row):
                continue
            images = r[f["image"]] if isinstance(r[f["image"]], list) else [r[f["image"]]]
            resolved = []
            for img in images:
                if isinstance(img, str):
                    img = reader.image_file(image_folder, img, path, row, f["image"])
                resolved.append(img)
            if any(img is None for img in resolved):
                continue
            item = self.make_item(r, row, resolved, path, reader)
            if item is not None:
                items.append(item)
        return items


class MCQTask(CustomTask):
    """A user's multiple-choice rows (answer as letter, index or option text); accuracy."""

    name, prompt_id, parser = "mcq", "mmbench_llava_letter", "mmbench_letter_then_option_text"
    max_new_tokens = 8
    needs_options = True

    def make_item(self, r: dict, row: int, images: list, path: Path, reader: RowReader) -> EvalItem | None:
        f = self.fields
        raw = r[f["options"]]
        options = [str(v) for v in (raw.values() if isinstance(raw, dict) else raw)]
        letters = LETTERS[: len(options)]
        answer = str(r[f["answer"]]).strip()
        if answer in letters:
            target = answer
        elif answer.isdigit() and int(answer) < len(options):
            target = letters[int(answer)]
        elif answer in options:
            target = letters[options.index(answer)]
        else:
            reader.bad(path, row, f["answer"], f"malformed row: answer '{answer}' is not an option")
            return None
        prompt = _fix_placeholders(mmbench_prompt(str(r[f["question"]]), None, options), len(images))
        meta = {"options": dict(zip(letters, options))}
        return EvalItem(str(r.get(f["id"], row)), prompt, images, target, meta, str(path), row)

    def parse(self, item: EvalItem, text: str) -> Parsed:
        return parse_choice(text, item.meta["options"])

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        scores = [float(p.value == it.target) for it, p in zip(items, parsed)]
        return {"accuracy": mean(scores)}, scores


class VQACustomTask(CustomTask):
    """A user's open questions (one answer, or a list of human answers); VQA-normalised accuracy."""

    name, prompt_id, parser = "vqa", "vqa_short_answer", "vqa_normalize"
    max_new_tokens = 16

    def make_item(self, r: dict, row: int, images: list, path: Path, reader: RowReader) -> EvalItem | None:
        f = self.fields
        answer = r[f["answer"]]
        target = [str(a) for a in answer] if isinstance(answer, list) else str(answer)
        prompt = _fix_placeholders(f"{r[f['question']]}\n{SHORT_ANSWER}", len(images))
        return EvalItem(str(r.get(f["id"], row)), prompt, images, target, {}, str(path), row)

    def parse(self, item: EvalItem, text: str) -> Parsed:
        return Parsed(text.strip(), RULE)

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        scores = [
            vqa_accuracy(p.value, it.target) if isinstance(it.target, list)
            else float(normalize_vqa_answer(p.value) == normalize_vqa_answer(it.target))
            for it, p in zip(items, parsed)
        ]  # fmt: skip
        return {"accuracy": mean(scores)}, scores


def _fix_placeholders(prompt: str, n_images: int) -> str:
    """Drop the default leading placeholder, then put one `<image>` line per image the text lacks."""
    if prompt.startswith("<image>\n"):
        prompt = prompt[len("<image>\n") :]
    return with_image_token(prompt, n_images)
