"""Each task reads a tiny file in its published format and scores fixed predictions to hand-computed values."""

from __future__ import annotations

import pytest

from tests.helpers.benchmark_files import (
    FIELD_MAP,
    write_chartqa,
    write_custom,
    write_mmbench,
    write_mmmu,
    write_pope,
    write_scienceqa,
    write_textvqa,
    write_vizwiz,
    write_vqav2,
)
from vlmkit.eval.benchmarks.base import RowReader
from vlmkit.eval.benchmarks.registry import build_task
from vlmkit.eval.benchmarks.runner import BenchmarkOptions, locate, score_task


def load(name, root, **kwargs):
    task = build_task(name, **kwargs)
    path, images = locate(task, BenchmarkOptions(tasks=[name], data_dir=str(root)))
    return task, task.load(path, images, RowReader())


def test_mmbench_circular_eval_where_one_rotation_fails(tmp_path):
    write_mmbench(tmp_path)
    task, items = load("mmbench", tmp_path)
    # Question 10 (4 options) and 11 (3 options) rotated: 4 + 3 prompts; the circular copy row is left out.
    assert [it.uid for it in items] == ["10/r0", "10/r1", "10/r2", "10/r3", "11/r0", "11/r1", "11/r2"]
    assert items[0].prompt == (
        "<image>\nA photo from a farm.\nWhat animal is shown?\nA. cat\nB. dog\nC. cow\nD. horse\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert items[1].prompt.endswith("A. dog\nB. cow\nC. horse\nD. cat\nAnswer with the option's letter from "
                                    "the given choices directly.")  # fmt: skip
    assert "nan" not in items[4].prompt and items[4].prompt.startswith("<image>\nWhat color is the sky?")
    assert [it.target for it in items] == ["C", "B", "A", "D", "A", "C", "B"]
    assert items[4].images == items[0].images  # row 11's image refers to row 10's
    # Q10: right in rotations 0, 1, 3 (by letter or option text), wrong in rotation 2; Q11 right in all three.
    texts = ["C", "cow", "B", "D. cat", "(A)", "The answer is C", "blue"]
    result, rows = score_task(task, items, texts)
    assert result["metrics"] == {"circular_accuracy": 0.5, "vanilla_accuracy": 1.0, "questions": 2}
    assert result["fallback_count"] == 2 and result["unparsed_count"] == 0  # "cow", "blue" by option text
    assert [r["score"] for r in rows] == [1, 1, 0, 1, 1, 1, 1]


def test_scienceqa_img_uses_test_questions_with_an_image(tmp_path):
    write_scienceqa(tmp_path)
    task, items = load("scienceqa_img", tmp_path)
    assert [it.uid for it in items] == ["5", "6"]
    assert items[0].prompt == (
        "<image>\nContext: N/A\nWhich is a mammal?\nA. whale\nB. shark\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert items[1].prompt.startswith(
        "<image>\nContext: Look at the picture.\nWhich is warmer?\nA. ice\nB. fire"
    )
    result, _ = score_task(task, items, ["A", "I think it is B"])  # the second needs the fallback
    assert result["metrics"] == {"accuracy": 1.0, "accuracy_rule_only": 0.5}
    assert result["fallback_count"] == 1


def test_pope_all_yes_per_split(tmp_path):
    write_pope(tmp_path)
    task, items = load("pope", tmp_path)
    assert len(items) == 9 and items[0].prompt.endswith("Answer the question using a single word or phrase.")
    result, _ = score_task(task, items, ["Yes, there is."] * 9)
    m = result["metrics"]
    # random: 2 yes + 3 no labels -> precision 2/5, recall 1, F1 2*0.4/1.4; popular/adversarial: 1 + 1.
    assert m["random_accuracy"] == 0.4 and m["random_precision"] == 0.4 and m["random_recall"] == 1.0
    assert m["random_f1"] == pytest.approx(0.8 / 1.4) and m["random_yes_ratio"] == 1.0
    assert m["popular_accuracy"] == 0.5 and m["popular_f1"] == pytest.approx(2 / 3)
    assert m["adversarial_precision"] == 0.5 and m["adversarial_yes_ratio"] == 1.0
    assert m["f1"] == pytest.approx((0.8 / 1.4 + 2 / 3 + 2 / 3) / 3)
    assert result["fallback_count"] == 0


def test_vqav2_textvqa_vizwiz(tmp_path):
    write_vqav2(tmp_path), write_textvqa(tmp_path), write_vizwiz(tmp_path)
    task, items = load("vqav2", tmp_path)
    assert items[0].prompt == "<image>\nHow many dogs?\nAnswer the question using a single word or phrase."
    result, _ = score_task(task, items, ["Two.", "yes"])  # 2 of 10 said "2" -> 0.6; "yes" -> 1
    assert result["metrics"] == {"accuracy": pytest.approx(0.8), "accuracy_number": pytest.approx(0.6),
                                 "accuracy_yes/no": 1.0}  # fmt: skip
    task, items = load("textvqa", tmp_path)
    result, _ = score_task(task, items, ["Coca-Cola"])  # "coca cola" (3 of 10) after normalisation -> 0.9
    assert result["metrics"]["accuracy"] == pytest.approx(0.9)
    task, items = load("vizwiz", tmp_path)
    assert "respond with 'Unanswerable'" in items[0].prompt
    result, _ = score_task(task, items, ["Unanswerable"])  # 4 of 10 -> 1
    assert result["metrics"]["accuracy"] == 1.0


def test_mmmu_parquet_choice_and_open(tmp_path):
    write_mmmu(tmp_path)
    task, items = load("mmmu", tmp_path)
    assert items[0].prompt == (
        "<image> Which force acts here?\n\n(A) gravity\n(B) friction\n(C) magnetism\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert items[1].prompt == (
        "What is the speed in m/s? <image>\n\nAnswer the question using a single word or phrase."
    )
    assert len(items[0].images) == 1 and items[0].images[0]["bytes"].startswith(b"\x89PNG")
    result, _ = score_task(task, items, ["(B) friction", "The speed is 12.50 m/s"])
    assert result["metrics"] == {"accuracy": 1.0, "accuracy_multiple_choice": 1.0, "accuracy_open": 1.0}
    result, _ = score_task(task, items, ["(A)", "It is 13"])
    assert result["metrics"]["accuracy"] == 0.0


def test_chartqa_relaxed_accuracy_per_split(tmp_path):
    write_chartqa(tmp_path)
    task, items = load("chartqa", tmp_path)
    assert [it.meta["split"] for it in items] == ["human", "human", "augmented"]
    result, _ = score_task(task, items, ["41", "2021", "25%"])  # 2.5% off: right; 2021 vs 2019: 0.1% off
    assert result["metrics"] == {"relaxed_accuracy_human": 1.0, "relaxed_accuracy_augmented": 1.0,
                                 "relaxed_accuracy": 1.0}  # fmt: skip
    result, _ = score_task(task, items, ["44", "2019", "0.3"])  # 10% off, right, 20% off
    assert (
        result["metrics"]["relaxed_accuracy_human"] == 0.5 and result["metrics"]["relaxed_accuracy"] == 0.25
    )


def test_custom_mcq_and_vqa_with_a_field_map(tmp_path):
    mcq, vqa = write_custom(tmp_path)
    task = build_task("mcq", field_map=FIELD_MAP)
    items = task.load(mcq, mcq.parent, RowReader())
    assert [it.target for it in items] == ["B", "A"]  # by option text, by letter
    assert items[0].prompt == ("<image>\nPick the fruit\nA. car\nB. apple\n"
                               "Answer with the option's letter from the given choices directly.")  # fmt: skip
    result, _ = score_task(task, items, ["B", "pear"])
    assert result["metrics"] == {"accuracy": 0.5} and result["fallback_count"] == 1
    task = build_task("vqa", field_map=FIELD_MAP)
    items = task.load(vqa, vqa.parent, RowReader())
    result, _ = score_task(task, items, ["2", "Coke."])  # "Two" == "2"; 4 of 10 humans said coke -> 1
    assert result["metrics"] == {"accuracy": 1.0}


def test_max_samples_keeps_whole_questions_per_split(tmp_path):
    from vlmkit.eval.benchmarks.runner import first_questions

    write_mmbench(tmp_path), write_pope(tmp_path)
    _, items = load("mmbench", tmp_path)
    assert [it.uid for it in first_questions(items, 1)] == ["10/r0", "10/r1", "10/r2", "10/r3"]
    _, items = load("pope", tmp_path)
    kept = first_questions(items, 1)
    assert sorted(it.meta["split"] for it in kept) == ["adversarial", "popular", "random"]
    assert first_questions(items, 0) == items


def test_data_hash_covers_the_question_files_not_the_images(tmp_path):
    from vlmkit.eval.benchmarks.base import file_hash

    write_pope(tmp_path), write_vqav2(tmp_path)
    pope = build_task("pope")
    files = pope.data_files(tmp_path / "pope")
    assert [f.name for f in files] == [f"coco_pope_{s}.json" for s in ("adversarial", "popular", "random")]
    before = file_hash(*files)
    (tmp_path / "pope" / "val2014" / "COCO_val2014_000000000000.jpg").write_bytes(b"other")
    assert file_hash(*pope.data_files(tmp_path / "pope")) == before
    (tmp_path / "pope" / "coco_pope_random.json").write_text('{"question_id": 1}\n')
    assert file_hash(*pope.data_files(tmp_path / "pope")) != before
    questions = tmp_path / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"
    names = [f.name for f in build_task("vqav2").data_files(questions)]
    assert names == [questions.name, "v2_mscoco_val2014_annotations.json"]
