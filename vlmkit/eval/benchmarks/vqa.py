"""VQAv2, TextVQA and VizWiz: open answers scored by the VQA accuracy with its answer normalisation.

Normalisation (the VQA evaluation script's rules, both for predictions and human answers): newlines and tabs
become spaces; the punctuation marks ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! are deleted when the text has
a mark next to a space or a digit-comma-digit group, and otherwise become spaces; a period not followed by a
digit is deleted ("2." -> "2", "3.5" stays); then, word by word in lower case, number words none..ten become
numerals, the articles a/an/the are dropped and apostrophe-less contractions get their apostrophe back
("dont" -> "don't").

Accuracy of one answer against the (usually 10) human answers: for each human left out in turn,
min(#other humans giving exactly that answer / 3, 1); the mean over the leave-one-out subsets.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from vlmkit.eval.benchmarks.base import (
    RULE,
    SHORT_ANSWER,
    EvalItem,
    Parsed,
    RowReader,
    Task,
    mean,
    read_records,
    with_image_token,
)

_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]  # fmt: skip
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# The contractions the VQA script restores. Its keys are every form with one or more apostrophes dropped;
# forms starting with "I" never fire there (it looks words up after lowercasing), and we'll, we're, she'd,
# she'll are not in its table (their apostrophe-less forms are words), so they are left out here too.
_CONTRACTED_TEXT = """ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll let's ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've she's should've shouldn't
shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll
they're they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's
where've who'd who'd've who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all
y'all'll y'all'd've you'd you'd've you'll you're you've"""
_CONTRACTED = _CONTRACTED_TEXT.split()


def _apostrophe_variants(word: str) -> set[str]:
    """`word` with every non-empty subset of its apostrophes removed."""
    spots = [i for i, c in enumerate(word) if c == "'"]
    out = set()
    for k in range(1, len(spots) + 1):
        for dropped in itertools.combinations(spots, k):
            out.add("".join(c for i, c in enumerate(word) if i not in dropped))
    return out


CONTRACTIONS = {v: w for w in _CONTRACTED for v in _apostrophe_variants(w)}


def _strip_punctuation(text: str) -> str:
    out = text
    glue = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in _PUNCTUATION:
        delete = glue or f"{p} " in text or f" {p}" in text
        out = out.replace(p, "" if delete else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation (see the module docstring): "Two dogs!" -> "2 dogs"."""
    text = _strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """Mean over leave-one-out subsets of min(#matching others / 3, 1), after normalisation (0..1)."""
    if not human_answers:
        raise ValueError("vqa_accuracy needs at least one human answer")
    pred = normalize_vqa_answer(prediction)
    humans = [normalize_vqa_answer(a) for a in human_answers]
    scores = []
    for left_out in range(len(humans)):
        matches = sum(1 for j, h in enumerate(humans) if j != left_out and h == pred)
        scores.append(min(matches / 3.0, 1.0))
    return mean(scores)


class VQATask(Task):
    """Shared by the VQA-style tasks: the short-answer prompt, VQA accuracy, per-answer-type breakdown."""

    parser = "vqa_normalize"
    max_new_tokens = 16
    instruction = SHORT_ANSWER

    def item(self, uid, question: str, image, answers: list[str], meta: dict, source, row) -> EvalItem:
        prompt = with_image_token(f"{question}\n{self.instruction}", 1)
        return EvalItem(str(uid), prompt, [image], answers, meta, str(source), row)

    def parse(self, item: EvalItem, text: str) -> Parsed:
        return Parsed(text.strip(), RULE)

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        scores = [vqa_accuracy(p.value, it.target) for it, p in zip(items, parsed)]
        metrics = {"accuracy": mean(scores)}
        kinds = sorted({it.meta.get("answer_type") for it in items} - {None})
        for kind in kinds:
            metrics[f"accuracy_{kind.replace(' ', '_')}"] = mean(
                s for s, it in zip(scores, items) if it.meta.get("answer_type") == kind
            )
        return metrics, scores


class VQAv2Task(VQATask):
    """VQAv2 questions + annotations JSON (the official files), COCO images named by image id."""

    name, prompt_id = "vqav2", "vqav2_short_answer"
    default_file = "vqav2/v2_OpenEnded_mscoco_val2014_questions.json"
    default_images = "val2014"

    @staticmethod
    def annotations_file(questions: Path) -> Path:
        """v2_OpenEnded_mscoco_val2014_questions.json -> v2_mscoco_val2014_annotations.json beside it."""
        return questions.with_name(
            questions.name.replace("_questions", "_annotations").replace("OpenEnded_", "")
        )

    def data_files(self, path: Path) -> list[Path]:
        return [path, self.annotations_file(path)]

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        ann_path = self.annotations_file(path)
        annotations = {a.get("question_id"): a for a in read_records(ann_path) if isinstance(a, dict)}
        split = "val2014" if "val2014" in path.name else image_folder.name
        items = []
        for row, q in enumerate(read_records(path, reader)):
            if not reader.require(q, ("question_id", "question", "image_id"), path, row):
                continue
            ann = annotations.get(q["question_id"])
            if ann is None or not ann.get("answers"):
                reader.bad(
                    ann_path, row, "answers", f"malformed row: no answers for question {q['question_id']}"
                )
                continue
            name = f"COCO_{split}_{int(q['image_id']):012d}.jpg"
            image = reader.image_file(image_folder, name, path, row, "image_id")
            if image is None:
                continue
            answers = [a["answer"] for a in ann["answers"]]
            meta = {"answer_type": ann.get("answer_type"), "question_id": q["question_id"]}
            items.append(self.item(q["question_id"], q["question"], image, answers, meta, path, row))
        return items


class TextVQATask(VQATask):
    """TextVQA_0.5.1_val.json ({"data": [...]} with 10 answer strings), images `<image_id>.jpg`."""

    name, prompt_id = "textvqa", "textvqa_short_answer"
    default_file = "textvqa/TextVQA_0.5.1_val.json"
    default_images = "train_images"

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        items = []
        for row, r in enumerate(read_records(path, reader)):
            if not reader.require(r, ("question_id", "question", "image_id", "answers"), path, row):
                continue
            image = reader.image_file(image_folder, f"{r['image_id']}.jpg", path, row, "image_id")
            if image is not None:
                meta = {"question_id": r["question_id"]}
                items.append(self.item(r["question_id"], r["question"], image, r["answers"], meta, path, row))
        return items


class VizWizTask(VQATask):
    """VizWiz val.json (image, question, answers [{answer, answer_confidence}], answer_type)."""

    name, prompt_id = "vizwiz", "vizwiz_unanswerable_short_answer"
    instruction = (
        "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER
    )
    default_file = "vizwiz/val.json"
    default_images = "val"

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        items = []
        for row, r in enumerate(read_records(path, reader)):
            if not reader.require(r, ("image", "question", "answers"), path, row):
                continue
            image = reader.image_file(image_folder, r["image"], path, row, "image")
            if image is not None:
                answers = [a["answer"] if isinstance(a, dict) else str(a) for a in r["answers"]]
                meta = {"answer_type": r.get("answer_type"), "image": r["image"]}
                items.append(self.item(r["image"], r["question"], image, answers, meta, path, row))
        return items
