"""ScienceQA-IMG: the test questions with an image, LLaVA-1.5's prompt, answer-letter parsing.

Reads ScienceQA's problems.json ({pid: {question, choices, answer (index), hint, image, split, ...}}) and the
images at `<image_folder>/<pid>/<image>` (LLaVA's layout: scienceqa/images/test/<pid>/image.png). Only the
`test` split's questions that have an image are used (2017 in the release). Accuracy: the parsed letter
equals the answer; `accuracy_rule_only` counts fallback-parsed answers as wrong, as LLaVA's script does.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmkit.eval.benchmarks.base import LETTER_ANSWER, RULE, EvalItem, Parsed, RowReader, Task, mean
from vlmkit.eval.benchmarks.choice import LETTERS, format_options, parse_scienceqa_letter


def scienceqa_prompt(question: str, hint: str, choices: list[str]) -> str:
    """<image>, 'Context: <hint or N/A>', the question, lettered choices, the letter instruction."""
    context = hint.strip() if hint and hint.strip() else "N/A"
    return f"<image>\nContext: {context}\n{question}\n{format_options(choices)}\n{LETTER_ANSWER}"


class ScienceQATask(Task):
    """ScienceQA-IMG: test questions with an image; accuracy, and accuracy by LLaVA's rule alone."""

    name, prompt_id = "scienceqa_img", "scienceqa_llava15_context_question_options"
    parser = "scienceqa_llava_letter_then_mmbench_letter"
    max_new_tokens = 8
    default_file = "scienceqa/problems.json"
    default_images = "images/test"
    split = "test"

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: benchmark file not found")
        problems = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(problems, dict):
            raise ValueError(f"{path}: expected ScienceQA's problems.json, an object keyed by question id")
        items = []
        for row, (pid, p) in enumerate(problems.items()):
            if not isinstance(p, dict) or p.get("split") != self.split or not p.get("image"):
                continue
            if not reader.require(p, ("question", "choices", "answer"), path, row):
                continue
            choices = [str(c) for c in p["choices"]]
            if not isinstance(p["answer"], int) or not 0 <= p["answer"] < len(choices):
                reader.bad(
                    path, row, "answer", f"malformed row: answer {p['answer']!r} is not a choice index"
                )
                continue
            image = reader.image_file(image_folder / str(pid), p["image"], path, row, "image")
            if image is None:
                continue
            meta = {"pid": pid, "options": dict(zip(LETTERS, choices)), "subject": p.get("subject")}
            prompt = scienceqa_prompt(p["question"], p.get("hint", ""), choices)
            items.append(EvalItem(str(pid), prompt, [image], LETTERS[p["answer"]], meta, str(path), row))
        return items

    def parse(self, item: EvalItem, text: str) -> Parsed:
        return parse_scienceqa_letter(text, item.meta["options"])

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        scores = [float(p.value == it.target) for it, p in zip(items, parsed)]
        rule_only = [s if p.how == RULE else 0.0 for s, p in zip(scores, parsed)]
        return {"accuracy": mean(scores), "accuracy_rule_only": mean(rule_only)}, scores
