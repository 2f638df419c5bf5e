"""Data readers: every format to canonical records, with located errors and skip accounting."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlmkit.data.media import load_image
from vlmkit.data.readers import (
    FORMATS,
    read_dataset,
)
from vlmkit.data.records import BadSampleError, PreferenceSample, Sample, SkipCounter

QUESTION = "Что изображено на картинке? 日本語 ✓"


@pytest.fixture
def media(tmp_path):
    """An image folder with subfolders: coco/a.png (red), vg/b.jpg (green), coco/c.png (blue)."""
    root = tmp_path / "imgs"
    for rel, color in (("coco/a.png", (255, 0, 0)), ("vg/b.jpg", (0, 255, 0)), ("coco/c.png", (0, 0, 255))):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), color).save(root / rel)
    return root


def _write(path, records, jsonl=False):
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) if jsonl else json.dumps(records)
    path.write_text(text, encoding="utf-8")
    return str(path)


def _llava(conv, image=None, **extra):
    rec = {"id": "x", "conversations": [{"from": f, "value": v} for f, v in conv], **extra}
    if image is not None:
        rec["image"] = image
    return rec


def test_llava_multi_turn_non_ascii_subfolders_and_text_only(tmp_path, media):
    records = [
        _llava(
            [("human", f"{QUESTION}\n<image>"), ("gpt", "Красный квадрат."), ("human", "и?"), ("gpt", "всё")],
            "coco/a.png",
        ),
        _llava([("human", "2+2?"), ("gpt", "4")]),  # text-only
        _llava([("human", "<image> vs <image>"), ("gpt", "green, blue")], ["vg/b.jpg", "coco/c.png"]),
        _llava([("system", "Be brief."), ("human", "colour?"), ("gpt", "red")], "coco/a.png"),
    ]
    samples = read_dataset(_write(tmp_path / "llava.json", records), str(media), format="llava")
    assert [type(s) for s in samples] == [Sample] * 4
    first = samples[0]
    assert [t.role for t in first.turns] == ["user", "assistant", "user", "assistant"]
    assert first.turns[0].text == f"{QUESTION}\n<image>"  # placeholder stays after the question
    assert first.turns[1].text == "Красный квадрат."
    assert first.images == [str(media / "coco/a.png")]
    assert (first.source, first.index) == (str(tmp_path / "llava.json"), 0)
    assert samples[1].images == [] and samples[1].count("<image>") == 0
    assert samples[2].images == [str(media / "vg/b.jpg"), str(media / "coco/c.png")]
    assert np.asarray(load_image(samples[2].images[0], source="t", index=2))[0, 0, 1] > 200
    # LLaVA rule: one image, no placeholder -> "<image>\n" goes before the first human turn
    assert samples[3].turns[0].role == "system" and samples[3].turns[1].text == "<image>\ncolour?"


def test_sharegpt_jsonl_roles_system_and_images(tmp_path, media):
    records = [
        {
            "system": "Tu es utile.",
            "conversations": [
                {"role": "user", "content": "Décris <image> puis compare."},
                {"role": "assistant", "content": "Rouge."},
                {"from": "human", "value": "Et ça ?"},
                {"from": "gpt", "value": "Toujours rouge."},
            ],
            "images": ["coco/a.png"],
        },
        {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    samples = read_dataset(_write(tmp_path / "sg.jsonl", records, jsonl=True), str(media), format="sharegpt")
    assert [t.role for t in samples[0].turns] == ["system", "user", "assistant", "user", "assistant"]
    assert samples[0].turns[0].text == "Tu es utile."
    assert samples[0].turns[1].text == "Décris <image> puis compare."
    assert samples[0].images == [str(media / "coco/a.png")]
    assert samples[1].images == [] and samples[1].index == 1


def test_openai_messages_content_parts_in_order(tmp_path, media):
    parts = [
        {"type": "text", "text": QUESTION},
        {"type": "image", "image": "coco/a.png"},
        {"type": "text", "text": "и это"},
        {"type": "image_url", "image_url": {"url": "vg/b.jpg"}},
    ]
    records = [
        {
            "messages": [
                {"role": "user", "content": parts},
                {"role": "assistant", "content": "красный, зелёный"},
            ]
        },
        {"messages": [{"role": "user", "content": "text only"}, {"role": "assistant", "content": "ok"}]},
        {  # TRL style: bare image parts, media listed in the row's "images" column
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
            ],
            "images": ["coco/c.png"],
        },
    ]
    samples = read_dataset(_write(tmp_path / "msgs.json", records), str(media), format="messages")
    assert samples[0].turns[0].text == f"{QUESTION}\n<image>\nи это\n<image>"
    assert samples[0].images == [str(media / "coco/a.png"), str(media / "vg/b.jpg")]
    assert samples[1].images == []
    assert samples[2].turns[0].text == "<image>\nwhat?" and samples[2].turns[1].text == "blue"
    assert samples[2].images == [str(media / "coco/c.png")]


def test_openai_http_url_refused(tmp_path, media):
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    records = [{"messages": [{"role": "user", "content": [part]}, {"role": "assistant", "content": "cat"}]}]
    with pytest.raises(BadSampleError, match="remote media not supported") as exc:
        read_dataset(_write(tmp_path / "m.json", records), str(media), format="messages")
    assert exc.value.index == 0 and "https://example.com/cat.png" in str(exc.value)


def test_hf_parquet_with_image_bytes_and_paths(tmp_path, media):
    import datasets

    feats = datasets.Features(
        {
            "messages": datasets.List(
                {"role": datasets.Value("string"), "content": datasets.Value("string")}
            ),
            "images": datasets.List(datasets.Image()),
        }
    )
    rows = {
        "messages": [
            [{"role": "user", "content": "<image>Welche Farbe?"}, {"role": "assistant", "content": "Grün"}],
            [{"role": "user", "content": "no image"}, {"role": "assistant", "content": "fine"}],
        ],
        "images": [[Image.new("RGB", (3, 3), (0, 200, 0))], []],
    }
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(path))
    samples = read_dataset(str(path), image_folder=str(media), cache_dir=str(tmp_path / "cache"), format="hf")
    assert len(samples) == 2 and samples[0].turns[1].text == "Grün"
    assert isinstance(samples[0].images[0], bytes)  # kept encoded: decoded lazily by load_image
    assert np.asarray(load_image(samples[0].images[0], source="t", index=0))[0, 0].tolist() == [0, 200, 0]
    assert samples[1].images == []

    convs = [_llava([("human", "<image>?"), ("gpt", "red")], "coco/a.png")]
    jsonl = _write(tmp_path / "conv.jsonl", convs, jsonl=True)
    (one,) = read_dataset(jsonl, image_folder=str(media), cache_dir=str(tmp_path / "cache"), format="hf")
    assert one.images == [str(media / "coco/a.png")]


def test_hf_hub_name_offline_error_is_clear(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BadSampleError, match="cannot load dataset") as exc:
        read_dataset("no-such-org/no-such-dataset", cache_dir=str(tmp_path / "cache"), format="hf")
    assert "no-such-org/no-such-dataset" in str(exc.value) and "Hub" in str(exc.value)


def test_preference_string_and_conversational_rows(tmp_path, media):
    records = [
        {"prompt": "<image> Which digit?", "chosen": "Seven.", "rejected": "Один.", "images": ["coco/a.png"]},
        {
            "prompt": [{"role": "system", "content": "Short."}, {"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": {"role": "assistant", "content": "5"},
        },
    ]
    pairs = read_dataset(
        _write(tmp_path / "pref.jsonl", records, jsonl=True), str(media), format="preference"
    )
    assert all(isinstance(p, PreferenceSample) for p in pairs)
    assert pairs[0].prompt[0].text == "<image> Which digit?" and pairs[0].rejected == "Один."
    assert pairs[0].images == [str(media / "coco/a.png")]
    assert [t.role for t in pairs[1].prompt] == ["system", "user"]
    assert (pairs[1].chosen, pairs[1].rejected) == ("4", "5")


@pytest.mark.parametrize(
    ("row", "field", "category"),
    [
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "rejected", "identical pair"),
        (
            {"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "chosen",
            "bad answer",
        ),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "empty answer"),
        (
            {"prompt": [{"role": "assistant", "content": "a"}], "chosen": "x", "rejected": "y"},
            "prompt",
            "no user turn",
        ),
    ],
)
def test_preference_validation(tmp_path, row, field, category):
    with pytest.raises(BadSampleError) as exc:
        read_dataset(_write(tmp_path / "p.json", [row]), format="preference")
    assert (exc.value.index, exc.value.field_name) == (0, field)
    assert exc.value.reason.startswith(category)


def test_prompts_answer_becomes_final_assistant_turn(tmp_path, media):
    records = [
        {"prompt": "<image>Which digit is shown?", "images": ["vg/b.jpg"], "answer": 7},
        {"prompt": [{"role": "user", "content": "Say hi"}]},
    ]
    samples = read_dataset(_write(tmp_path / "rl.json", records), str(media), format="prompts")
    assert [(t.role, t.text) for t in samples[0].turns] == [
        ("user", "<image>Which digit is shown?"),
        ("assistant", "7"),
    ]
    assert samples[0].images == [str(media / "vg/b.jpg")]
    assert [t.role for t in samples[1].turns] == ["user"]


def test_auto_detects_every_format(tmp_path, media):
    cases = {
        "llava": _llava([("human", "q"), ("gpt", "a")], "coco/a.png"),
        "sharegpt": {
            "conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "images": [],
        },
        "messages": {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
        "preference": {"prompt": "q", "chosen": "a", "rejected": "b"},
        "prompts": {"prompt": "q", "answer": "a"},
    }
    for name, rec in cases.items():
        (out,) = read_dataset(_write(tmp_path / f"{name}.json", [rec]), str(media))
        assert isinstance(out, PreferenceSample if name == "preference" else Sample), name
        assert out.source.endswith(f"{name}.json")


def test_unknown_and_undetectable_format(tmp_path):
    path = _write(tmp_path / "d.json", [{"text": "hello"}])
    with pytest.raises(ValueError, match="valid: auto, " + ", ".join(FORMATS)):
        read_dataset(path, format="alpaca")
    with pytest.raises(BadSampleError, match=r"cannot detect the data format from keys \['text'\]"):
        read_dataset(path)


def test_jsonl_malformed_line_reports_line_number(tmp_path):
    good = json.dumps(_llava([("human", "q"), ("gpt", "a")]))
    path = tmp_path / "d.jsonl"
    path.write_text(f"{good}\n\n{good}\n{{'bad': 1}}\n{good}\n")
    with pytest.raises(BadSampleError, match="invalid JSON: line 4") as exc:
        read_dataset(str(path), format="llava")
    assert exc.value.index == 2  # third record (the blank line is not a record)


def test_jsonl_validation_error_carries_line_number(tmp_path):
    good = _llava([("human", "q"), ("gpt", "a")])
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(good), "", json.dumps(_llava([("robot", "q"), ("gpt", "a")]))]))
    with pytest.raises(BadSampleError, match=r"unknown role: 'robot'.*\(line 3\)") as exc:
        read_dataset(str(path), format="llava")
    assert (exc.value.index, exc.value.field_name) == (1, "conversations[0]")


def test_malformed_json_file_reports_line_and_column(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"conversations": []},\n  {"conversations": ]\n]')
    with pytest.raises(BadSampleError, match="invalid JSON: line 3, column 21") as exc:
        read_dataset(str(path))
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    ("record", "field", "category"),
    [
        ({"id": "1"}, "conversations", "missing field"),
        ({"conversations": "human: hi"}, "conversations", "bad conversation"),
        ({"conversations": []}, "conversations", "bad conversation"),
        (_llava([("human", "q"), ("wizard", "a")]), "conversations[1]", "unknown role: 'wizard'"),
        (_llava([("human", "q"), ("gpt", "  ")]), "conversations[1]", "empty assistant turn"),
        (_llava([("human", "q")]), "conversations", "no assistant turn"),
        (
            _llava([("human", "q"), ("gpt", "a"), ("system", "s")]),
            "conversations[2]",
            "misplaced system turn",
        ),
        (
            {"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]},
            "conversations[0]",
            "missing content",
        ),
    ],
)
def test_llava_validation_errors(tmp_path, record, field, category):
    with pytest.raises(BadSampleError) as exc:
        read_dataset(
            _write(tmp_path / "d.json", [_llava([("human", "ok"), ("gpt", "ok")]), record]), format="llava"
        )
    assert (exc.value.index, exc.value.field_name) == (1, field)
    assert exc.value.reason.startswith(category), exc.value.reason
    assert str(tmp_path / "d.json") in str(exc.value)


@pytest.mark.parametrize(
    ("text", "images", "n_text", "n_items"),
    [
        ("<image> and <image>", ["coco/a.png"], 2, 1),  # more placeholders than images
        ("<image> only one", ["coco/a.png", "vg/b.jpg"], 1, 2),  # fewer placeholders than images
        ("no placeholder", ["coco/a.png", "vg/b.jpg"], 0, 2),  # auto-prepend only for a single image
        ("<image> but no image", None, 1, 0),
    ],
)
def test_placeholder_count_mismatch_names_record(tmp_path, media, text, images, n_text, n_items):
    records = [_llava([("human", "fine"), ("gpt", "ok")]), _llava([("human", text), ("gpt", "a")], images)]
    with pytest.raises(BadSampleError, match="placeholder count mismatch") as exc:
        read_dataset(_write(tmp_path / "d.json", records), str(media), format="llava")
    assert (exc.value.index, exc.value.field_name) == (1, "images")
    assert f"has {n_text} <image>" in str(exc.value) and f"has {n_items} images" in str(exc.value)
    assert "record 1" in str(exc.value)


def test_media_path_escape_and_missing_file(tmp_path, media):
    (tmp_path / "secret.png").write_bytes(b"x")
    escape = [_llava([("human", "<image>"), ("gpt", "a")], "../secret.png")]
    with pytest.raises(BadSampleError, match="--allow_outside_media_root true") as exc:
        read_dataset(_write(tmp_path / "d.json", escape), str(media), format="llava")
    assert exc.value.field_name == "images[0]"
    (ok,) = read_dataset(
        _write(tmp_path / "d.json", escape), str(media), allow_outside_root=True, format="llava"
    )
    assert ok.images == [str(tmp_path / "secret.png")]
    missing = [_llava([("human", "<image>"), ("gpt", "a")], "coco/zzz.png")]
    with pytest.raises(BadSampleError, match="media file not found"):
        read_dataset(_write(tmp_path / "d.json", missing), str(media), format="llava")
    (lazy,) = read_dataset(
        _write(tmp_path / "d.json", missing), str(media), check_files=False, format="llava"
    )
    assert lazy.images == [str(media / "coco/zzz.png")]


def test_skip_mode_counts_and_drops_bad_records(tmp_path, media):
    good = _llava([("human", "<image>"), ("gpt", "a")], "coco/a.png")
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps(_llava([("human", "q"), ("bot", "a")])),
        json.dumps(_llava([("human", "<image>"), ("gpt", "a")], "coco/missing.png")),
        json.dumps(good),
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(BadSampleError):
        read_dataset(str(path), str(media))
    skips = SkipCounter()
    samples = read_dataset(str(path), str(media), on_bad_sample="skip", skips=skips)
    assert [s.index for s in samples] == [0, 4]
    assert skips.total == 3
    assert skips.as_dict() == {"invalid JSON": 1, "unknown role": 1, "media file not found": 1}


def test_empty_after_filtering_is_an_error(tmp_path):
    records = [_llava([("human", "q"), ("gpt", "")]), _llava([("human", "q")])]
    path = _write(tmp_path / "bad.json", records)
    skips = SkipCounter()
    with pytest.raises(BadSampleError, match="no usable records: 2 read, 2 skipped") as exc:
        read_dataset(path, on_bad_sample="skip", skips=skips)
    assert str(tmp_path / "bad.json") in str(exc.value) and skips.total == 2
    with pytest.raises(BadSampleError, match="no usable records"):
        read_dataset(_write(tmp_path / "empty.json", []), format="llava")
    with pytest.raises(ValueError, match="on_bad_sample must be one of"):
        read_dataset(path, on_bad_sample="ignore")
