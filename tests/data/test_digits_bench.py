"""The embedded digits benchmark: held-out images only, in MMBench's and POPE's published formats."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path

from vlmkit.data.digits import CONFUSABLE
from vlmkit.data.embedded import build_embedded
from vlmkit.eval.benchmarks.base import RowReader
from vlmkit.eval.benchmarks.registry import build_task
from vlmkit.eval.benchmarks.runner import BenchmarkOptions, locate


def _load(name):
    task = build_task(name)
    path, images = locate(task, BenchmarkOptions(tasks=[name]))
    return task.load(path, images, RowReader())


def test_digits_benchmark_in_mmbench_and_pope_formats(digits_data):
    root = build_embedded("digits_bench")
    held_out = {
        (digits_data / r["image"]).read_bytes(): r["label"]
        for r in json.loads((digits_data / "clip_eval.json").read_text())
    }
    items = _load("digits_mmbench")
    assert len(items) == 400  # 100 questions x 4 rotations
    first = [it for it in items if it.meta["rotation"] == 0]
    for it in first:  # every image is a held-out one, and the answer's option is its label
        assert it.images[0] in held_out
        assert it.meta["options"][it.target] == str(held_out[it.images[0]])
        assert len(set(it.meta["options"].values())) == 4
    assert len(Counter(it.target for it in first)) == 4  # the right option's place is shuffled
    header = (root / "mmbench_digits.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]

    pope = _load("digits_pope")
    assert Counter(it.meta["split"] for it in pope) == {"random": 100, "popular": 100, "adversarial": 100}
    assert Counter(it.target for it in pope) == {"yes": 150, "no": 150}
    for it in pope:
        label = held_out[Path(it.images[0]).read_bytes()]
        asked = int(it.prompt.split("Is there a ")[1][0])
        assert (asked == label) == (it.target == "yes")
        if it.meta["split"] == "adversarial" and it.target == "no":
            assert asked == CONFUSABLE[label]
    line = (root / "pope" / "digits_pope_random.json").read_text().splitlines()[0]
    assert set(json.loads(line)) == {"question_id", "image", "text", "label"}
    assert base64.b64decode(
        (root / "mmbench_digits.tsv").read_text().splitlines()[1].split("\t")[-1]
    ).startswith(b"\x89PNG")
