"""Bad benchmark input: a missing image, a malformed row, an unknown task -> a clear error naming the file and
row, or a counted skip with on_bad_sample=skip."""

from __future__ import annotations

import json

import pytest

from tests.helpers.benchmark_files import write_mmbench, write_pope, write_vqav2
from vlmkit.cli import main
from vlmkit.data.records import BadSampleError
from vlmkit.eval.benchmarks.base import RowReader
from vlmkit.eval.benchmarks.registry import TASKS, build_task
from vlmkit.eval.benchmarks.runner import BenchmarkOptions, locate, parse_assignments


def load(name, root, on_bad_sample="error"):
    task = build_task(name)
    path, images = locate(task, BenchmarkOptions(tasks=[name], data_dir=str(root)))
    reader = RowReader(on_bad_sample)
    return task.load(path, images, reader), reader


def test_missing_image_names_file_row_and_path(tmp_path):
    base = write_pope(tmp_path)
    (base / "val2014" / "COCO_val2014_000000000001.jpg").unlink()
    with pytest.raises(BadSampleError) as err:
        load("pope", tmp_path)
    assert err.value.source.endswith("coco_pope_adversarial.json") and err.value.index == 1
    assert "missing image" in str(err.value) and "COCO_val2014_000000000001.jpg" in str(err.value)
    items, reader = load("pope", tmp_path, on_bad_sample="skip")
    assert len(items) == 9 - 3  # image 1 is row 1 of each split's file
    assert reader.skips.total == 3 and reader.skips.as_dict() == {"missing image": 3}


def test_malformed_rows_name_file_row_and_field(tmp_path):
    base = write_pope(tmp_path)
    path = base / "coco_pope_random.json"
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"question_id": 3, "image": "COCO_val2014_000000000002.jpg", "text": "Is there x?"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        BadSampleError, match=r"coco_pope_random.json, record 2, field 'label': malformed row"
    ):
        load("pope", tmp_path)
    lines[2] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadSampleError, match=r"coco_pope_random.json, record 2: malformed row: invalid JSON"):
        load("pope", tmp_path)


def test_mmbench_bad_answer_and_bad_base64(tmp_path):
    path = write_mmbench(tmp_path)
    text = path.read_text().replace("\tC\tanimals", "\tQ\tanimals", 1)
    path.write_text(text)
    with pytest.raises(BadSampleError, match=r"MMBench_DEV_EN.tsv, record 0, field 'answer'"):
        load("mmbench", tmp_path)
    items, reader = load("mmbench", tmp_path, on_bad_sample="skip")
    assert [it.uid for it in items] == ["11/r0", "11/r1", "11/r2"] and reader.skips.total == 1
    path.write_text(text.replace("\tQ\tanimals", "\tC\tanimals", 1).replace("\t10\tx", "\t!!notbase64\tx"))
    with pytest.raises(
        BadSampleError, match=r"record 1, field 'image': malformed row: the image is not valid"
    ):
        load("mmbench", tmp_path)


def test_vqav2_question_without_annotation(tmp_path):
    path = write_vqav2(tmp_path)
    ann = path.with_name("v2_mscoco_val2014_annotations.json")
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][:1]
    ann.write_text(json.dumps(data))
    with pytest.raises(BadSampleError, match=r"annotations.json, record 1, field 'answers'.*question 430"):
        load("vqav2", tmp_path)


def test_missing_benchmark_file_and_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MMBench_DEV_EN.tsv: benchmark file not found"):
        load("mmbench", tmp_path)
    with pytest.raises(
        ValueError, match=r"task 'mmbench': pass --data_dir \(expects mmbench/MMBench_DEV_EN.tsv"
    ):
        locate(build_task("mmbench"), BenchmarkOptions(tasks=["mmbench"]))


def test_unknown_task_names_the_valid_ones(tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"unknown benchmark task 'mmbenhc'; valid: mmbench, scienceqa_img, pope"
    ):
        build_task("mmbenhc")
    with pytest.raises(ValueError, match=r"--data_files: unknown benchmark task 'nope'"):
        parse_assignments(["nope=a.tsv"], "--data_files")
    with pytest.raises(ValueError, match=r"field_map: unknown fields \['questoin'\]"):
        build_task("mcq", field_map="questoin=q")
    # The command line fails before loading any model (the checkpoint does not even exist).
    assert main(["eval", str(tmp_path / "no_model"), "--tasks", "mmbench,mmbenhc"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark task 'mmbenhc'" in err and all(name in err for name in TASKS)
