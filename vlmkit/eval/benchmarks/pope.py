"""POPE: yes/no object-hallucination questions; accuracy, precision, recall, F1 and yes-ratio per split.

Reads POPE's files as published (`coco_pope_random.json`, `..._popular.json`, `..._adversarial.json`: JSON
lines {question_id, image, text, label}) or rows with question/answer/category fields. The split is the row's
`category`, else the file name's last part. Answer rule (POPE's evaluate.py): keep the text before the first
period, drop commas, split on spaces; 'no', 'No' or 'not' among the words means no, anything else yes. An
answer with none of yes/Yes/no/No/not is the counted fallback (still read as yes, as POPE does).
"""

from __future__ import annotations

from pathlib import Path

from vlmkit.eval.benchmarks.base import (
    FALLBACK,
    RULE,
    SHORT_ANSWER,
    EvalItem,
    Parsed,
    RowReader,
    Task,
    mean,
    read_records,
)

SPLITS = ("random", "popular", "adversarial")


def parse_yes_no(text: str) -> Parsed:
    """POPE's rule: 'no'/'No'/'not' among the words before the first period -> 'no', else 'yes'."""
    words = text.split(".")[0].replace(",", "").split(" ")
    if {"no", "No", "not"} & set(words):
        return Parsed("no", RULE)
    return Parsed("yes", RULE if {"yes", "Yes"} & set(words) else FALLBACK)


def pope_metrics(labels: list[str], predictions: list[str]) -> dict:
    """Binary metrics with 'yes' as the positive class; yes_ratio = share of 'yes' predictions."""
    pairs = list(zip(labels, predictions))
    tp = sum(1 for y, p in pairs if y == "yes" and p == "yes")
    fp = sum(1 for y, p in pairs if y == "no" and p == "yes")
    tn = sum(1 for y, p in pairs if y == "no" and p == "no")
    fn = sum(1 for y, p in pairs if y == "yes" and p == "no")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(pairs)
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n if n else 0.0, "n": n}  # fmt: skip


class POPETask(Task):
    """POPE yes/no questions; binary metrics per split and their mean."""

    name, prompt_id = "pope", "pope_short_answer"
    parser = "pope_no_not_else_yes"
    max_new_tokens = 8
    default_file = "pope"  # a directory of coco_pope_<split>.json files, or one file
    default_images = "val2014"

    def data_files(self, path: Path) -> list[Path]:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and "pope" in p.name)
            if not found:
                raise FileNotFoundError(f"{path}: no *pope*.json files (e.g. coco_pope_random.json)")
            return found
        if not path.is_file():
            raise FileNotFoundError(f"{path}: benchmark file not found")
        return [path]

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        if path.is_dir() and image_folder == path / self.default_images and not image_folder.is_dir():
            image_folder = path
        items = []
        for file in self.data_files(path):
            split_from_name = file.stem.rsplit("_", 1)[-1]
            for row, r in enumerate(read_records(file, reader)):
                if isinstance(r, dict):  # POPE's own field names, or lmms-eval's question/answer
                    r = {
                        **r,
                        "text": r.get("text", r.get("question")),
                        "label": r.get("label", r.get("answer")),
                    }
                if not reader.require(r, ("text", "label", "image"), file, row):
                    continue
                question, label = r["text"], r["label"]
                label = str(label).strip().lower()
                if label not in ("yes", "no"):
                    reader.bad(file, row, "label", f"malformed row: label '{label}' is not yes or no")
                    continue
                image = r["image"]
                if isinstance(image, str):
                    image = reader.image_file(image_folder, image, file, row, "image")
                    if image is None:
                        continue
                split = str(r.get("category") or split_from_name)
                uid = f"{split}/{r.get('question_id', row)}"
                prompt = f"<image>\n{question}\n{SHORT_ANSWER}"
                items.append(EvalItem(uid, prompt, [image], label, {"split": split}, str(file), row))
        return items

    def parse(self, item: EvalItem, text: str) -> Parsed:
        return parse_yes_no(text)

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        metrics: dict = {}
        order = {s: i for i, s in enumerate(SPLITS)}
        splits = sorted({it.meta["split"] for it in items}, key=lambda s: (order.get(s, len(SPLITS)), s))
        for split in splits:
            chosen = [(it.target, p.value) for it, p in zip(items, parsed) if it.meta["split"] == split]
            for key, value in pope_metrics(*zip(*chosen)).items():
                metrics[f"{split}_{key}"] = value
        for key in ("accuracy", "f1"):  # the mean over splits, as papers report
            metrics[key] = mean(metrics[f"{s}_{key}"] for s in splits)
        return metrics, [float(it.target == p.value) for it, p in zip(items, parsed)]
