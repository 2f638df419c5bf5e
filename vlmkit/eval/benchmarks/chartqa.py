"""ChartQA: relaxed accuracy (numbers within 5% of the answer, other answers exactly, case-insensitive).

Reads the published test files (`test_human.json`, `test_augmented.json`: [{imgname, query, label}]) and
the charts in `png/`. Relaxed correctness (Methani et al., as in ChartQA's paper): both parse as numbers
("12.5", "40%" -> 0.4) and the answer is non-zero -> |pred - gold| / |gold| <= 0.05; else lower-cased strings
must match. `relaxed_accuracy` is the mean of the two splits, as papers report.
"""

from __future__ import annotations

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
)

SPLITS = ("human", "augmented")


def _to_float(text: str) -> float | None:
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA's relaxed accuracy for one answer."""
    pred, gold = _to_float(prediction.strip()), _to_float(target.strip())
    if pred is not None and gold:
        return abs(pred - gold) / abs(gold) <= max_relative_change
    return prediction.strip().lower() == target.strip().lower()


class ChartQATask(Task):
    """ChartQA test (human and augmented); relaxed accuracy per split and their mean."""

    name, prompt_id = "chartqa", "chartqa_short_answer"
    parser = "strip"
    max_new_tokens = 16
    default_file = "chartqa/test"  # the directory holding test_human.json and test_augmented.json
    default_images = "png"

    def load(self, path: Path, image_folder: Path, reader: RowReader) -> list[EvalItem]:
        if path.is_dir():
            files = [path / f"test_{s}.json" for s in SPLITS if (path / f"test_{s}.json").is_file()]
            if not files:
                raise FileNotFoundError(f"{path}: no test_human.json or test_augmented.json")
        else:
            files = [path]
        items = []
        for file in files:
            split = file.stem.replace("test_", "")
            for row, r in enumerate(read_records(file, reader)):
                if not reader.require(r, ("imgname", "query", "label"), file, row):
                    continue
                image = reader.image_file(image_folder, r["imgname"], file, row, "imgname")
                if image is not None:
                    prompt = f"<image>\n{r['query']}\n{SHORT_ANSWER}"
                    uid = f"{split}/{row}"
                    items.append(
                        EvalItem(uid, prompt, [image], str(r["label"]), {"split": split}, str(file), row)
                    )
        return items

    def parse(self, item: EvalItem, text: str) -> Parsed:
        return Parsed(text.strip(), RULE)

    def score(self, items: list[EvalItem], parsed: list[Parsed]) -> tuple[dict, list[float]]:
        scores = [float(relaxed_correct(p.value, it.target)) for it, p in zip(items, parsed)]
        metrics = {}
        splits = [s for s in dict.fromkeys(it.meta["split"] for it in items)]
        for split in splits:
            metrics[f"relaxed_accuracy_{split}"] = mean(
                s for s, it in zip(scores, items) if it.meta["split"] == split
            )
        metrics["relaxed_accuracy"] = mean(metrics[f"relaxed_accuracy_{s}"] for s in splits)
        return metrics, scores
