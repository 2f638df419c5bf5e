"""The embedded benchmark: held-out digits in MMBench's and POPE's published formats, built offline.

From the digits eval split only (images no stage trains on):
- `mmbench_digits.tsv`: MMBench's TSV (index, question, hint, A-D, answer, category, image as base64 PNG):
  "Which digit is shown in the image?" with the right numeral and three others, in a shuffled order;
- `pope/digits_pope_{random,popular,adversarial}.json`: POPE's JSON lines (question_id, image, text, label):
  "Is there a 3 in the image?", half yes (the shown digit) and half no; the absent digit is random, the
  most frequent training digit other than the shown one (popular), or its look-alike (adversarial);
- `pope/images/`: the PNGs the POPE files name.
"""

from __future__ import annotations

import base64
import csv
import json
import shutil
from collections import Counter
from pathlib import Path

from vlmkit.data.digits import CONFUSABLE, NUMERALS, build_atomically, rng_for

MCQ_QUESTION = "Which digit is shown in the image?"
POPE_QUESTION = "Is there a {} in the image?"
FORMAT_VERSION = 1


def build_digits_bench(
    out_dir: str | Path,
    digits_root: str | Path,
    seed: int = 0,
    num_questions: int = 100,
    num_options: int = 4,
) -> dict[str, str]:
    """Build (or reuse) the benchmark files under `out_dir` from the built digits dataset at `digits_root`."""
    digits_root = Path(digits_root)
    manifest = json.loads((digits_root / "manifest.json").read_text())
    params = {"seed": seed, "num_questions": num_questions, "num_options": num_options,
              "digits_fingerprint": manifest["fingerprint"], "format_version": FORMAT_VERSION}  # fmt: skip
    return build_atomically(
        out_dir,
        "digits_bench",
        params,
        lambda tmp: _build(tmp, digits_root, seed, num_questions, num_options),
    )


def _build(root: Path, digits_root: Path, seed: int, num_questions: int, num_options: int) -> dict:
    held_out = json.loads((digits_root / "clip_eval.json").read_text())
    chosen = [
        held_out[i] for i in sorted(rng_for(seed, "bench_pick").permutation(len(held_out))[:num_questions])
    ]
    train_counts = Counter(r["label"] for r in json.loads((digits_root / "clip_train.json").read_text()))
    _write_mmbench(root / "mmbench_digits.tsv", digits_root, chosen, seed, num_options)
    (root / "pope" / "images").mkdir(parents=True)
    for rec in chosen:
        shutil.copyfile(digits_root / rec["image"], root / "pope" / "images" / Path(rec["image"]).name)
    for split in ("random", "popular", "adversarial"):
        rows = _pope_rows(chosen, split, rng_for(seed, f"pope_{split}"), train_counts)
        lines = "".join(json.dumps(r) + "\n" for r in rows)
        (root / "pope" / f"digits_pope_{split}.json").write_text(lines, encoding="utf-8")
    return {"counts": {"mmbench_questions": len(chosen), "pope_questions_per_split": len(chosen)}}


def _write_mmbench(path: Path, digits_root: Path, chosen: list[dict], seed: int, num_options: int) -> None:
    rng = rng_for(seed, "bench_mmbench")
    letters = "ABCD"[:num_options]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
        writer.writerow(["index", "question", "hint", *letters, "answer", "category", "image"])
        for index, rec in enumerate(chosen):
            others = [d for d in range(10) if d != rec["label"]]
            options = [rec["label"], *rng.choice(others, size=num_options - 1, replace=False).tolist()]
            options = [options[i] for i in rng.permutation(num_options)]
            image = base64.b64encode((digits_root / rec["image"]).read_bytes()).decode()
            answer = letters[options.index(rec["label"])]
            writer.writerow(
                [index, MCQ_QUESTION, "", *(NUMERALS[d] for d in options), answer, "digits", image]
            )


def _pope_rows(chosen: list[dict], split: str, rng, train_counts: Counter) -> list[dict]:
    rows = []
    for i, rec in enumerate(chosen):
        label = rec["label"]
        if i % 2 == 0:
            asked, answer = label, "yes"
        else:
            answer = "no"
            if split == "random":
                asked = int(rng.choice([d for d in range(10) if d != label]))
            elif split == "popular":
                asked = max((d for d in range(10) if d != label), key=lambda d: (train_counts[d], -d))
            else:
                asked = CONFUSABLE[label]
        image = Path(rec["image"]).name
        rows.append(
            {"question_id": i + 1, "image": image, "text": POPE_QUESTION.format(asked), "label": answer}
        )
    return rows
