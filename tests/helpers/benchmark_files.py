"""Tiny benchmark files in each benchmark's published layout, written by the tests (no download).

`write_all(root)` lays them out under one --data_dir exactly as the README's table says; each writer returns
what the hand-computed expectations need.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(seed: int) -> bytes:
    rng = np.random.RandomState(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.randint(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def save_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(seed))


def write_mmbench(root: Path) -> Path:
    """Question 10: 4 options, answer C. Question 11: 3 options (D empty), answer A, its image given as a
    reference to row 10's. Row 1000010 is a circular copy of question 10 (left out: rotations are made here)."""
    path = root / "mmbench" / "MMBench_DEV_EN.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    img = base64.b64encode(png_bytes(1)).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category"]
    rows = [
        ["10", "What animal is shown?", "A photo from a farm.", "cat", "dog", "cow", "horse", "C", "animals", img, "x"],
        ["11", "What color is the sky?", "nan", "blue", "green", "red", "", "A", "colors", "10", "x"],
        ["1000010", "What animal is shown?", "A photo from a farm.", "dog", "cow", "horse", "cat", "B", "animals",
         img, "x"],
    ]  # fmt: skip
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def write_scienceqa(root: Path) -> Path:
    """problems.json: two test questions with an image (kept), one without an image, one in train."""
    base = root / "scienceqa"
    problems = {
        "5": {"question": "Which is a mammal?", "choices": ["whale", "shark"], "answer": 0, "hint": "",
              "image": "image.png", "split": "test", "subject": "natural science"},
        "6": {"question": "Which is warmer?", "choices": ["ice", "fire", "snow"], "answer": 1,
              "hint": "Look at the picture.", "image": "image.png", "split": "test", "subject": "natural science"},
        "7": {"question": "Text only?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
              "split": "test"},
        "8": {"question": "Train one?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": "image.png",
              "split": "train"},
    }  # fmt: skip
    base.mkdir(parents=True, exist_ok=True)
    (base / "problems.json").write_text(json.dumps(problems))
    for pid in ("5", "6", "8"):
        save_png(base / "images" / "test" / pid / "image.png", int(pid))
    return base / "problems.json"


def write_pope(root: Path) -> Path:
    """coco_pope_<split>.json as JSON lines: random has 2 yes + 3 no, popular and adversarial 1 yes + 1 no."""
    base = root / "pope"
    labels = {
        "random": ["yes", "no", "yes", "no", "no"],
        "popular": ["yes", "no"],
        "adversarial": ["no", "yes"],
    }
    for split, split_labels in labels.items():
        lines = [
            json.dumps({"question_id": i + 1, "image": f"COCO_val2014_{i:012d}.jpg",
                        "text": f"Is there a thing {i} in the image?", "label": label})
            for i, label in enumerate(split_labels)
        ]  # fmt: skip
        base.mkdir(parents=True, exist_ok=True)
        (base / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n")
    for i in range(5):
        save_png(base / "val2014" / f"COCO_val2014_{i:012d}.jpg", i)
    return base


def write_vqav2(root: Path) -> Path:
    base = root / "vqav2"
    base.mkdir(parents=True, exist_ok=True)
    questions = [{"image_id": 42, "question": "How many dogs?", "question_id": 420},
                 {"image_id": 43, "question": "Is it sunny?", "question_id": 430}]  # fmt: skip
    answers = {420: ["2"] * 2 + ["3"] * 8, 430: ["yes"] * 10}
    annotations = [
        {"question_id": q, "image_id": q // 10, "answer_type": "number" if q == 420 else "yes/no",
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(ans)]}
        for q, ans in answers.items()
    ]  # fmt: skip
    path = base / "v2_OpenEnded_mscoco_val2014_questions.json"
    path.write_text(json.dumps({"questions": questions}))
    (base / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    for image_id in (42, 43):
        save_png(base / "val2014" / f"COCO_val2014_{image_id:012d}.jpg", image_id)
    return path


def write_textvqa(root: Path) -> Path:
    base = root / "textvqa"
    base.mkdir(parents=True, exist_ok=True)
    data = [
        {
            "question_id": 1,
            "question": "What brand?",
            "image_id": "abc",
            "answers": ["coca cola"] * 3 + ["coke"] * 7,
        }
    ]
    path = base / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
    save_png(base / "train_images" / "abc.jpg", 7)
    return path


def write_vizwiz(root: Path) -> Path:
    base = root / "vizwiz"
    base.mkdir(parents=True, exist_ok=True)
    answers = [{"answer": "unanswerable", "answer_confidence": "yes"}] * 4 + [
        {"answer": "soup", "answer_confidence": "maybe"}
    ] * 6
    data = [{"image": "VizWiz_val_00000000.jpg", "question": "What is this?", "answers": answers,
             "answer_type": "other", "answerable": 1}]  # fmt: skip
    (base / "val.json").write_text(json.dumps(data))
    save_png(base / "val" / "VizWiz_val_00000000.jpg", 9)
    return base / "val.json"


def write_mmmu(root: Path) -> Path:
    """One subject's validation parquet: a multiple-choice question with <image 1> in the text, an open one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = root / "mmmu" / "Physics"
    base.mkdir(parents=True, exist_ok=True)
    img = {"bytes": png_bytes(3), "path": "a.png"}
    rows = {
        "id": ["validation_Physics_1", "validation_Physics_2"],
        "question": ["<image 1> Which force acts here?", "What is the speed in m/s? <image 1>"],
        "options": ["['gravity', 'friction', 'magnetism']", "[]"],
        "explanation": ["", ""],
        "image_1": [img, img],
        "image_2": [None, None],
        "answer": ["B", "12.5"],
        "question_type": ["multiple-choice", "open"],
    }
    path = base / "validation-00000-of-00001.parquet"
    pq.write_table(pa.table(rows), path)
    return path


def write_chartqa(root: Path) -> Path:
    base = root / "chartqa" / "test"
    base.mkdir(parents=True, exist_ok=True)
    human = [{"imgname": "c1.png", "query": "What is the peak?", "label": "40"},
             {"imgname": "c1.png", "query": "Which year?", "label": "2019"}]  # fmt: skip
    augmented = [{"imgname": "c2.png", "query": "What share?", "label": "0.25"}]
    (base / "test_human.json").write_text(json.dumps(human))
    (base / "test_augmented.json").write_text(json.dumps(augmented))
    save_png(base / "png" / "c1.png", 11)
    save_png(base / "png" / "c2.png", 12)
    return base


def write_custom(root: Path) -> tuple[Path, Path]:
    """A user's mcq jsonl and vqa json, both with the columns q, img, gt (and choices for mcq)."""
    base = root / "mine"
    base.mkdir(parents=True, exist_ok=True)
    mcq = [{"q": "Pick the fruit", "img": "x.png", "choices": ["car", "apple"], "gt": "apple"},
           {"q": "Pick the tool", "img": "x.png", "choices": ["hammer", "pear", "plum"], "gt": "A"}]  # fmt: skip
    (base / "mcq.jsonl").write_text("\n".join(json.dumps(r) for r in mcq) + "\n")
    vqa = [{"q": "What count?", "img": "x.png", "gt": "Two"},
           {"q": "What brand?", "img": "x.png", "gt": ["coke"] * 4 + ["pepsi"] * 6}]  # fmt: skip
    (base / "vqa.json").write_text(json.dumps(vqa))
    save_png(base / "x.png", 13)
    return base / "mcq.jsonl", base / "vqa.json"


FIELD_MAP = "question=q,image=img,options=choices,answer=gt"


def write_all(root: Path) -> dict[str, Path]:
    """Every format under `root` (a --data_dir); returns task -> file written."""
    mcq, vqa = write_custom(root)
    return {"mmbench": write_mmbench(root), "scienceqa_img": write_scienceqa(root), "pope": write_pope(root),
            "vqav2": write_vqav2(root), "textvqa": write_textvqa(root), "vizwiz": write_vizwiz(root),
            "mmmu": write_mmmu(root), "chartqa": write_chartqa(root), "mcq": mcq, "vqa": vqa}  # fmt: skip
