"""Embedded default image data: scikit-learn's bundled handwritten digits, written to disk offline.

`build_digits_dataset(out_dir)` renders the 1797 8x8 `load_digits()` images as RGB PNGs (white digit on
black) and writes every file format the stage recipes read: LLaVA stage-1 captions and stage-2 questions,
CLIP image-caption pairs with held-out zero-shot templates, preference pairs and RL prompts. Output is a pure
function of the parameters (seed included), is built in a temporary directory and renamed into place, and a
second call with the same parameters returns at once.

The record builders and the atomic build helper here are shared with `vlmkit.data.spoken_digits`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlmkit.data.records import IMAGE_TOKEN

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUMERALS = [str(d) for d in range(10)]
FORMAT_VERSION = 3  # 2: the LM pretraining corpus lm_corpus_{train,eval}.txt; 3: it covers the audio captions
MANIFEST = "manifest.json"
COMPLETE_MARKER = "BUILD_COMPLETE"

# Stage 1 (connector alignment): a short caption per image. {n} is the numeral, {w} the word.
CAPTION_TEMPLATES = [
    "A handwritten digit {n}.",
    "An image of the number {w}.",
    "The digit {n}, written by hand.",
    "A white handwritten {w} on a black background.",
    "A small picture of the number {n}.",
    "A hand-drawn {w}.",
]
STAGE1_INSTRUCTIONS = [
    "{token}",
    "{token}\nDescribe the image briefly.",
    "{token}\nGive a short caption for this picture.",
    "Describe the image briefly.\n{token}",
]
# Stage 2 (instruction tuning), preference pairs and RL prompts.
QUESTIONS = [
    "What digit is this?",
    "Which number is shown in the image?",
    "Name the digit in the picture.",
    "What number is written here?",
    "Which digit does the image show?",
    "Read the digit in the image.",
]
# CLIP training captions, and zero-shot templates that never appear in training ("{}" = class name).
CLIP_TRAIN_TEMPLATES = [
    "a handwritten digit {w}.",
    "the number {n}, handwritten.",
    "a picture of the number {w}.",
    "{w}, written by hand.",
    "an image of a handwritten {n}.",
]
ZERO_SHOT_TEMPLATES = ["a photo of the digit {}.", "a drawing of the number {}.", "the digit {}."]
ANSWER_SENTENCES = ["The digit is {}.", "It is a {}.", "This is the number {}."]
# Visually (or acoustically) close digits, used for the harder preference pairs.
CONFUSABLE = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}
FOLLOW_UPS: list[tuple[str, Callable[[int], str]]] = [
    ("Is it an even number?", lambda d: "yes" if d % 2 == 0 else "no"),
    ("Write the digit as a word.", lambda d: DIGIT_WORDS[d]),
]


_WORD_TO_NUMERAL = {w: str(i) for i, w in enumerate(DIGIT_WORDS)}


def digit_named_in(text: str) -> str:
    """The digit a free-form text names (a caption, an answer sentence), for reading digits back out of text;
    answer accuracy uses `vlmkit.eval.answers.exact_match`, not this.

    Steps: lowercase; replace every character that is not a-z or 0-9 with a space; split on whitespace;
    return the first token that is a single numeral ("7") or a digit word ("seven" -> "7"). If no token is a
    digit, return the cleaned tokens joined by one space, so it never equals a numeral by accident:
    "Seven." -> "7", "The digit is 7" -> "7", " 7 " -> "7", "seventeen" -> "seventeen", "17" -> "17",
    "Yes!" -> "yes", "" -> "".
    """
    tokens = re.sub(r"[^a-z0-9]+", " ", text.lower()).split()
    for tok in tokens:
        if len(tok) == 1 and tok.isdigit():
            return tok
        if tok in _WORD_TO_NUMERAL:
            return _WORD_TO_NUMERAL[tok]
    return " ".join(tokens)


@dataclass(frozen=True)
class MediaItem:
    """One media file of a built dataset: path relative to the dataset root, class label, record id."""

    path: str
    label: int
    uid: str


def rng_for(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on `seed` and `name`, so each output file has its own stream."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _fill(template: str, label: int) -> str:
    return template.format(n=NUMERALS[label], w=DIGIT_WORDS[label])


def caption_records(
    items: Sequence[MediaItem],
    rng: np.random.Generator,
    token: str,
    media_key: str,
    captions: Sequence[str],
    instructions: Sequence[str] = STAGE1_INSTRUCTIONS,
) -> list[dict]:
    """LLaVA stage-1 records: human turn = placeholder (+ optional instruction), gpt turn = a caption."""
    out = []
    for it in items:
        human = instructions[rng.integers(len(instructions))].format(token=token)
        caption = _fill(captions[rng.integers(len(captions))], it.label)
        conv = [{"from": "human", "value": human}, {"from": "gpt", "value": caption}]
        out.append({"id": it.uid, media_key: it.path, "conversations": conv})
    return out


def _prompt(token: str, question: str, rng: np.random.Generator, after_prob: float = 0.2) -> str:
    """Placeholder before the question in most records, after it in about `after_prob` of them."""
    return f"{question}\n{token}" if rng.random() < after_prob else f"{token}\n{question}"


def qa_records(
    items: Sequence[MediaItem],
    rng: np.random.Generator,
    token: str,
    media_key: str,
    questions: Sequence[str],
    follow_up_prob: float = 0.0,
) -> list[dict]:
    """LLaVA stage-2 records: a question about the digit, answered with its numeral ("7").

    With probability `follow_up_prob` a second exchange from `FOLLOW_UPS` is appended (multi-turn).
    """
    out = []
    for it in items:
        q = questions[rng.integers(len(questions))]
        conv = [
            {"from": "human", "value": _prompt(token, q, rng)},
            {"from": "gpt", "value": NUMERALS[it.label]},
        ]
        if rng.random() < follow_up_prob:
            fq, answer = FOLLOW_UPS[rng.integers(len(FOLLOW_UPS))]
            conv += [{"from": "human", "value": fq}, {"from": "gpt", "value": answer(it.label)}]
        out.append({"id": it.uid, media_key: it.path, "conversations": conv})
    return out


def preference_records(
    items: Sequence[MediaItem],
    rng: np.random.Generator,
    token: str,
    media_list_key: str,
    questions: Sequence[str],
) -> list[dict]:
    """Preference pairs: half bare numerals ("7" vs a random wrong digit), half harder sentence pairs that
    differ only in the digit ("The digit is 7." vs "The digit is 1."), whose wrong digit is the confusable
    one (`CONFUSABLE`) half the time."""
    out = []
    for it in items:
        wrong = [d for d in range(10) if d != it.label]
        hard = rng.random() < 0.5
        if hard and rng.random() < 0.5:
            rejected = CONFUSABLE[it.label]
        else:
            rejected = int(wrong[rng.integers(len(wrong))])
        if hard:
            sentence = ANSWER_SENTENCES[rng.integers(len(ANSWER_SENTENCES))]
            chosen_text, rejected_text = sentence.format(it.label), sentence.format(rejected)
        else:
            chosen_text, rejected_text = NUMERALS[it.label], NUMERALS[rejected]
        prompt = _prompt(token, questions[rng.integers(len(questions))], rng)
        base = {"id": it.uid, "prompt": prompt, media_list_key: [it.path]}
        out.append(base | {"chosen": chosen_text, "rejected": rejected_text})
    return out


def prompt_records(
    items: Sequence[MediaItem],
    rng: np.random.Generator,
    token: str,
    media_list_key: str,
    questions: Sequence[str],
) -> list[dict]:
    """RL prompts: a question plus the reference answer numeral (scored with `eval.answers.exact_match`)."""
    out = []
    for it in items:
        prompt = _prompt(token, questions[rng.integers(len(questions))], rng)
        out.append({"id": it.uid, "prompt": prompt, "answer": NUMERALS[it.label], media_list_key: [it.path]})
    return out


def write_json(path: Path, obj: object) -> None:
    """Write `obj` as UTF-8 JSON (byte-identical for identical input)."""
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def fingerprint(root: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs of every file except the manifest/marker."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in (MANIFEST, COMPLETE_MARKER):
            h.update(f"{rel}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, name: str, params: dict) -> bool:
    m = _read_manifest(root)
    return (
        m is not None
        and (root / COMPLETE_MARKER).is_file()
        and m.get("name") == name
        and m.get("params") == params
    )


def _paths(root: Path, manifest: dict) -> dict[str, str]:
    paths = {"root": str(root), "manifest": str(root / MANIFEST)}
    paths.update({Path(f).stem: str(root / f) for f in manifest["json_files"]})
    return paths


def build_atomically(
    out_dir: str | Path, name: str, params: dict, build: Callable[[Path], dict]
) -> dict[str, str]:
    """Run `build(tmp_dir)` (returns extra manifest fields) and move the result to `out_dir` atomically.

    Skips the build when `out_dir` already holds a complete dataset `name` built with `params`. Refuses to
    replace a non-empty directory that is not a dataset built here. Returns {"root", "manifest", and one
    entry per JSON file keyed by its stem} as absolute paths.
    """
    out = Path(out_dir).resolve()
    params = json.loads(json.dumps(params))  # the form it takes after a JSON round trip (tuples -> lists)
    if _is_complete(out, name, params):
        return _paths(out, _read_manifest(out))
    existing = _read_manifest(out)
    if out.exists() and any(out.iterdir()) and (existing or {}).get("name") != name:
        raise FileExistsError(
            f"{out} is not empty and holds no {name} {MANIFEST}: refusing to overwrite it with the {name} "
            "dataset. Pass an empty or new out_dir."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        extra = build(tmp)
        json_files = sorted(p.name for p in tmp.glob("*.json"))
        manifest = {"name": name, "params": params, **extra, "json_files": json_files}
        manifest["fingerprint"] = fingerprint(tmp)
        write_json(tmp / MANIFEST, manifest)
        (tmp / COMPLETE_MARKER).write_text(manifest["fingerprint"] + "\n")
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except OSError:
            if not _is_complete(out, name, params):  # not a concurrent builder that finished first
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _paths(out, manifest)


def _render(image8: np.ndarray, size: int, dx: int, dy: int):
    """8x8 values 0..16 -> RGB PIL image of size x size, white on black, shifted by (dx, dy) pixels."""
    from PIL import Image

    gray = Image.fromarray(np.round(image8 * (255.0 / 16.0)).astype(np.uint8))
    arr = np.asarray(gray.resize((size, size), Image.Resampling.BILINEAR))
    shifted = np.zeros_like(arr)
    ys, yd = (slice(0, size - dy), slice(dy, size)) if dy >= 0 else (slice(-dy, size), slice(0, size + dy))
    xs, xd = (slice(0, size - dx), slice(dx, size)) if dx >= 0 else (slice(-dx, size), slice(0, size + dx))
    shifted[yd, xd] = arr[ys, xs]
    return Image.fromarray(shifted).convert("RGB")


def build_digits_dataset(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = 32,
    eval_fraction: float = 0.2,
    max_shift: int = 1,
) -> dict[str, str]:
    """Build the embedded digits dataset under `out_dir` (idempotent, atomic, deterministic by `seed`).

    Images: `images/{train,eval}/<label>/<idx>.png` (RGB, `image_size` square, bilinear upscale, each
    shifted by up to `max_shift` pixels). Split: stratified by label, `eval_fraction` held out.
    JSON files: stage1_*, stage2_* (LLaVA), clip_* (image/caption/label), clip_zero_shot_templates,
    preference_*, prompts_* (for train and eval), labels (class names), manifest (counts, fingerprint).
    Text: lm_corpus_{train,eval}.txt, the LLM pretraining corpus (`vlmkit.data.lm_corpus`).
    Returns absolute paths keyed by file stem plus "root" and "manifest".
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the source images are 8x8), got {image_size}")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if not 0 <= max_shift < image_size // 4:
        raise ValueError(f"max_shift must be in [0, {image_size // 4}) for image_size {image_size}")
    params = {
        "seed": seed,
        "image_size": image_size,
        "eval_fraction": eval_fraction,
        "max_shift": max_shift,
        "format_version": FORMAT_VERSION,
    }
    return build_atomically(out_dir, "digits", params, lambda tmp: _build(tmp, **params))


def _build(
    root: Path, seed: int, image_size: int, eval_fraction: float, max_shift: int, format_version: int
) -> dict:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    labels = digits.target.astype(int)
    idx = np.arange(len(labels))
    train_idx, eval_idx = train_test_split(idx, test_size=eval_fraction, stratify=labels, random_state=seed)
    shifts = rng_for(seed, "shift").integers(-max_shift, max_shift + 1, size=(len(labels), 2))
    splits: dict[str, list[MediaItem]] = {}
    for split, chosen in (("train", np.sort(train_idx)), ("eval", np.sort(eval_idx))):
        items = []
        for i in chosen:
            rel = f"images/{split}/{labels[i]}/{i:04d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            _render(digits.images[i], image_size, *map(int, shifts[i])).save(root / rel, format="PNG")
            items.append(MediaItem(rel, int(labels[i]), f"digits-{split}-{i:04d}"))
        splits[split] = items

    counts, tok = {}, IMAGE_TOKEN
    for split, items in splits.items():
        follow_up = 0.25 if split == "train" else 0.0
        clip_k = rng_for(seed, f"clip_{split}").integers(len(CLIP_TRAIN_TEMPLATES), size=len(items))
        files = {
            "stage1": caption_records(
                items, rng_for(seed, f"stage1_{split}"), tok, "image", CAPTION_TEMPLATES
            ),
            "stage2": qa_records(items, rng_for(seed, f"stage2_{split}"), tok, "image", QUESTIONS, follow_up),
            "clip": [
                {"image": it.path, "caption": _fill(CLIP_TRAIN_TEMPLATES[k], it.label), "label": it.label}
                for it, k in zip(items, clip_k)
            ],
            "preference": preference_records(items, rng_for(seed, f"pref_{split}"), tok, "images", QUESTIONS),
            "prompts": prompt_records(items, rng_for(seed, f"prompts_{split}"), tok, "images", QUESTIONS),
        }
        for kind, records in files.items():
            write_json(root / f"{kind}_{split}.json", records)
            counts[f"{kind}_{split}"] = len(records)
    from vlmkit.data.lm_corpus import write_lm_corpus

    text_documents = write_lm_corpus(root, seed)
    write_json(root / "labels.json", DIGIT_WORDS)
    write_json(
        root / "clip_zero_shot_templates.json",
        {
            "templates": ZERO_SHOT_TEMPLATES,
            "classnames": DIGIT_WORDS,
            "numerals": NUMERALS,
            "train_templates": [t.replace("{w}", "{}").replace("{n}", "{}") for t in CLIP_TRAIN_TEMPLATES],
            "note": "Fill each template's {} with a class name; none of these templates is used in "
            "clip_train.json. Classifier: average the text embeddings over templates per class.",
        },
    )
    return {
        "counts": counts,
        "text_documents": text_documents,
        "num_images": {s: len(v) for s, v in splits.items()},
        "source": "sklearn.datasets.load_digits (8x8, values 0..16), white digit on black",
    }
