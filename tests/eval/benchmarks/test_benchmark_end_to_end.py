"""The real runner end to end: a tiny model (random, a LoRA adapter, a trained stage 2) on every format,
through `vlmkit eval --tasks`, `recipes/eval.py` and `accelerate launch` on 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.benchmark_files import FIELD_MAP, write_all, write_pope
from vlmkit.cli import main
from vlmkit.config.args import LoraArgs, ModelArgs
from vlmkit.data.records import Sample, Turn
from vlmkit.eval.answers import generate_answers
from vlmkit.eval.benchmarks.runner import PREDICTIONS_FILE, RESULTS_FILE, TABLE_FILE
from vlmkit.models.build import build_vlm, load_vlm

# Prompts per task in the files of tests/helpers/benchmark_files.py (MMBench: 4 + 3 rotations; POPE: 5 + 2 + 2).
PROMPTS = {"mmbench": 7, "scienceqa_img": 2, "pope": 9, "vqav2": 2, "textvqa": 1, "vizwiz": 1, "mmmu": 2,
           "chartqa": 3, "mcq": 2, "vqa": 2}  # fmt: skip
MEAN_OF_SCORES = {"scienceqa_img": "accuracy", "vqav2": "accuracy", "textvqa": "accuracy", "vizwiz": "accuracy",
                  "mmmu": "accuracy", "mcq": "accuracy", "vqa": "accuracy"}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A random-init tiny full checkpoint and a LoRA-adapter one."""
    root = tmp_path_factory.mktemp("bench_models")
    torch.manual_seed(0)
    args = ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    for name, lora in (("full", False), ("adapter", True)):
        model, processor = build_vlm(args, LoraArgs(use_lora=lora, lora_r=4))
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return root


def read_predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / PREDICTIONS_FILE).read_text().splitlines()]


def test_every_format_through_the_cli(tiny_checkpoints, tmp_path, capsys):
    data = tmp_path / "data"
    files = write_all(data)
    out = tmp_path / "out"
    checkpoint = str(tiny_checkpoints / "full")
    argv = ["eval", checkpoint, "--tasks", ",".join(PROMPTS), "--data_dir", str(data), "--output_dir", str(out),
            "--data_files", f"mcq={files['mcq']}", f"vqa={files['vqa']}", "--field_map", FIELD_MAP,
            "--batch_size", "4"]  # fmt: skip
    assert main(argv) == 0
    assert "| mmbench | circular_accuracy |" in capsys.readouterr().out
    results = json.loads((out / RESULTS_FILE).read_text())
    rows = read_predictions(out)
    assert list(results) == list(PROMPTS)
    for task, n in PROMPTS.items():
        r = results[task]
        assert r["n"] == n and r["model"] == checkpoint and len(r["data_hash"]) == 16
        assert r["prompt_template"] and r["parser"] and r["skipped_rows"] == 0
        mine = [row for row in rows if row["task"] == task]
        assert len(mine) == n
        assert r["fallback_count"] == sum(row["parsed_by"] == "fallback" for row in mine)
        if task in MEAN_OF_SCORES:
            assert r["metrics"][MEAN_OF_SCORES[task]] == pytest.approx(sum(row["score"] for row in mine) / n)
        assert f"| {task} |" in (out / TABLE_FILE).read_text()
    # The predictions are the model's own greedy answers to the exact prompts shown.
    model, processor = load_vlm(checkpoint)
    row = next(row for row in rows if row["task"] == "chartqa")
    image = data / "chartqa" / "test" / "png" / "c1.png"
    sample = Sample([Turn("user", row["prompt"])], images=[str(image)])
    assert generate_answers(model, processor, [sample], max_new_tokens=16)[0][0] == row["prediction"]


def test_skipped_rows_are_counted_in_the_results(tiny_checkpoints, tmp_path, capsys):
    base = write_pope(tmp_path / "data")
    (base / "val2014" / "COCO_val2014_000000000001.jpg").unlink()  # row 1 of each split's file
    out = tmp_path / "out"
    argv = ["eval", str(tiny_checkpoints / "full"), "--tasks", "pope", "--data_dir", str(tmp_path / "data"),
            "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 2  # stops at the first bad row by default
    missing_model = ["eval", str(tmp_path / "no_model"), *argv[2:]]
    capsys.readouterr()
    assert main(missing_model) == 2  # the data is read before the model loads
    assert "coco_pope_adversarial.json, record 1, field 'image': missing image" in capsys.readouterr().err
    assert main([*argv, "--on_bad_sample", "skip"]) == 0
    result = json.loads((out / RESULTS_FILE).read_text())["pope"]
    assert result["n"] == 6 and result["skipped_rows"] == 3
    assert result["skipped_reasons"] == {"missing image": 3}


@pytest.mark.slow
def test_recipe_on_a_lora_adapter_with_the_embedded_digits(recipe, tiny_checkpoints, tmp_path):
    out = tmp_path / "eval"
    metrics = recipe("eval").main(
        ["--config", "recipes/configs/digits_eval.yaml", "--model_name_or_path", str(tiny_checkpoints / "adapter"),
         "--output_dir", str(out), "--max_samples", "3", "--resume_from_checkpoint", "latest"]
    )  # fmt: skip
    assert (out / "metrics.json").is_file() and (out / "config.yaml").is_file()
    assert metrics["eval_digits_mmbench_questions"] == 3
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["digits_mmbench"]["n"] == 12  # 3 questions x 4 rotations
    assert results["digits_pope"]["n"] == 9  # 3 per split
    assert results["digits_pope"]["data_file"].endswith("digits_bench/pope")
    assert 0.0 <= metrics["eval_digits_pope_f1"] <= 1.0


@pytest.mark.slow
def test_trained_stage2_scores_far_above_chance_on_the_digits_benchmark(recipe, trained_stage2, tmp_path):
    _, stage2 = trained_stage2
    out = tmp_path / "eval"
    metrics = recipe("eval").main(
        ["--config", "recipes/configs/digits_eval.yaml", "--model_name_or_path", str(stage2),
         "--output_dir", str(out)]
    )  # fmt: skip
    # 100 questions x 4 rotations; all 4 must be right. Random letters: 0.25^4 = 0.004.
    assert metrics["eval_digits_mmbench_questions"] == 100
    assert metrics["eval_digits_mmbench_circular_accuracy"] > 0.6, metrics
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["digits_mmbench"]["n"] == 400 and results["digits_pope"]["n"] == 300


@pytest.mark.slow
def test_two_processes_shard_and_gather_the_same_predictions(tiny_checkpoints, tmp_path):
    from tests.helpers.launching import run_recipe

    args = ["--config", "recipes/configs/digits_eval.yaml", "--model_name_or_path", str(tiny_checkpoints / "full"),
            "--max_samples", "5"]  # fmt: skip
    run_recipe("eval", *args, "--output_dir", str(tmp_path / "one"))
    run_recipe("eval", *args, "--output_dir", str(tmp_path / "two"), config_file="multi_gpu.yaml")
    one, two = read_predictions(tmp_path / "one"), read_predictions(tmp_path / "two")
    assert len(one) == 5 * 4 + 5 * 3
    assert [(r["uid"], r["prediction"]) for r in two] == [(r["uid"], r["prediction"]) for r in one]
    m_one, m_two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert (m_one["world_size"], m_two["world_size"]) == (1, 2)  # really two processes
    evals = [k for k in m_one if k.startswith("eval_")]
    assert evals and {k: m_two[k] for k in evals} == {k: m_one[k] for k in evals}
