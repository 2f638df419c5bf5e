"""The embedded digits dataset: split, files, record formats, determinism; `digit_named_in` reads the answers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlmkit.data.digits as digits_mod
from vlmkit.data.digits import DIGIT_WORDS, build_digits_dataset, digit_named_in


def _load(paths: dict[str, str], stem: str) -> list | dict:
    return json.loads(Path(paths[stem]).read_text())


def _label_of(rel: str) -> int:
    return int(Path(rel).parent.name)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, str]:
    return build_digits_dataset(tmp_path_factory.mktemp("digits") / "data", seed=0)


def test_counts_and_stratified_split(built):
    manifest = _load(built, "manifest")
    n_train, n_eval = manifest["num_images"]["train"], manifest["num_images"]["eval"]
    assert n_train + n_eval == 1797
    assert abs(n_eval / 1797 - 0.2) < 0.01
    for stem, n in manifest["counts"].items():
        assert len(_load(built, stem)) == n, stem
    train, evl = _load(built, "stage2_train"), _load(built, "stage2_eval")
    assert len(train) == n_train and len(evl) == n_eval
    train_labels = Counter(_label_of(r["image"]) for r in train)
    eval_labels = Counter(_label_of(r["image"]) for r in evl)
    assert set(train_labels) == set(eval_labels) == set(range(10))
    for d in range(10):  # stratified: each class keeps ~80/20
        assert abs(eval_labels[d] / (train_labels[d] + eval_labels[d]) - 0.2) < 0.03
    train_src = {Path(r["image"]).stem for r in train}
    eval_src = {Path(r["image"]).stem for r in evl}
    assert not train_src & eval_src
    assert all("/train/" in r["image"] for r in train) and all("/eval/" in r["image"] for r in evl)
    assert _load(built, "labels") == DIGIT_WORDS


def test_images_are_rgb_pngs_of_the_source_digits(built):
    from sklearn.datasets import load_digits

    source = load_digits()
    root = Path(built["root"])
    records = _load(built, "clip_train") + _load(built, "clip_eval")
    assert len({r["image"] for r in records}) == 1797
    for r in records[::37]:
        img = Image.open(root / r["image"])
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (32, 32)
        idx = int(Path(r["image"]).stem)
        assert r["label"] == _label_of(r["image"]) == source.target[idx]
        small = np.asarray(img.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=float)
        corr = np.corrcoef(small.ravel(), source.images[idx].ravel())[0, 1]
        assert corr > 0.6, (r["image"], corr)  # white-on-black rendering of the same digit, maybe shifted


def test_llava_records(built):
    stage1 = _load(built, "stage1_train")
    for r in stage1:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and human["value"].count("<image>") == 1
        d = _label_of(r["image"])
        assert str(d) in gpt["value"] or DIGIT_WORDS[d] in gpt["value"]
    assert len({r["conversations"][1]["value"] for r in stage1}) > 20  # several caption templates

    for stem, multi_turn_expected in (("stage2_train", True), ("stage2_eval", False)):
        records = _load(built, stem)
        for r in records:
            conv = r["conversations"]
            assert conv[0]["value"].count("<image>") == 1
            assert conv[1]["value"] == str(_label_of(r["image"]))
            assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        after = sum(r["conversations"][0]["value"].endswith("<image>") for r in records)
        assert 0.05 < after / len(records) < 0.4  # <image> after the question in some records
        assert any(len(r["conversations"]) > 2 for r in records) == multi_turn_expected
        assert len({r["conversations"][0]["value"] for r in records}) >= 6
        assert len({r["id"] for r in records}) == len(records)


def test_preference_and_prompt_records(built):
    prefs = _load(built, "preference_train")
    hard = 0
    for r in prefs:
        d = str(_label_of(r["images"][0]))
        assert r["prompt"].count("<image>") == 1 and len(r["images"]) == 1
        assert digit_named_in(r["chosen"]) == d != digit_named_in(r["rejected"])
        if r["chosen"] != d:  # a sentence pair differing only in the digit
            hard += 1
            assert r["chosen"].replace(d, "#") == r["rejected"].replace(digit_named_in(r["rejected"]), "#")
    assert 0.3 < hard / len(prefs) < 0.7
    for r in _load(built, "prompts_eval"):
        assert r["answer"] == str(_label_of(r["images"][0])) and "<image>" in r["prompt"]


def test_zero_shot_templates_never_used_in_training(built):
    zs = _load(built, "clip_zero_shot_templates")
    assert zs["classnames"] == DIGIT_WORDS and len(zs["templates"]) >= 2
    assert not set(zs["templates"]) & set(zs["train_templates"])
    zero_shot_texts = {t.format(c) for t in zs["templates"] for c in DIGIT_WORDS + zs["numerals"]}
    captions = {r["caption"] for r in _load(built, "clip_train")}
    assert len(captions) >= 20 and not captions & zero_shot_texts
    train_shapes = {c for r in _load(built, "clip_train") for c in [_template_of(r["caption"], r["label"])]}
    assert train_shapes <= set(zs["train_templates"])


def _template_of(caption: str, label: int) -> str:
    for word in (DIGIT_WORDS[label], str(label)):
        if word in caption:
            return caption.replace(word, "{}", 1)
    raise AssertionError(caption)


def test_determinism_rebuild_and_no_leftovers(built, tmp_path):
    fp0 = _load(built, "manifest")["fingerprint"]
    again = build_digits_dataset(tmp_path / "d", seed=0)
    assert _load(again, "manifest")["fingerprint"] == fp0
    other = build_digits_dataset(tmp_path / "d", seed=1)  # different params: rebuilt in place
    assert other["root"] == again["root"]
    m1 = _load(other, "manifest")
    assert m1["params"]["seed"] == 1 and m1["fingerprint"] != fp0
    eval0 = {r["image"] for r in _load(built, "stage2_eval")}
    eval1 = {r["image"] for r in _load(other, "stage2_eval")}
    assert eval0 != eval1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # temp and old dirs are gone


def _fail(*args, **kwargs):
    raise AssertionError("rebuilt although a complete dataset exists")


def test_same_parameters_skip_the_build(built, monkeypatch):
    monkeypatch.setattr(digits_mod, "_build", _fail)
    assert build_digits_dataset(Path(built["root"]), seed=0) == built
    with pytest.raises(AssertionError, match="rebuilt"):
        build_digits_dataset(Path(built["root"]), seed=0, image_size=16)


def test_incomplete_build_is_redone(built, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(built["root"], root)
    (root / digits_mod.COMPLETE_MARKER).unlink()
    monkeypatch.setattr(digits_mod, "_build", _fail)
    with pytest.raises(AssertionError, match="rebuilt"):
        build_digits_dataset(root, seed=0)


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        build_digits_dataset(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs", [{"image_size": 4}, {"eval_fraction": 0.0}, {"eval_fraction": 1.5}, {"max_shift": 9}]
)
def test_bad_parameters(tmp_path, kwargs):
    with pytest.raises(ValueError):
        build_digits_dataset(tmp_path / "x", **kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Seven.", "7"),
        ("The digit is 7", "7"),
        (" 7 ", "7"),
        ("7", "7"),
        ("It's a ZERO!", "0"),
        ("nine, or maybe 4", "9"),  # the first digit token wins
        ("seventeen", "seventeen"),  # not a digit word: returned cleaned, never equal to a numeral
        ("17", "17"),
        ("Yes.", "yes"),
        ("", ""),
    ],
)
def test_digit_in(text, expected):
    assert digit_named_in(text) == expected
