"""LLaVA stage 1 -> stage 2 on the embedded digits: the run contract, held-out learning and the launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "recipes" / "configs"
STAGE2_CONFIG = str(CONFIGS / "digits_llava_stage2.yaml")
QUICK = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--max_eval_samples", "8"]
QUICK += ["--report_to", "none"]


def assert_run_contract(out: Path, *, adapter: bool = False, eval_keys: tuple[str, ...] = ()) -> dict:
    """Every file a recipe promises; returns metrics.json."""
    for name in ("config.yaml", "metrics.json", "train_log.jsonl", "loss.png", "README.md",
                 "vlmkit_config.json", "vlmkit_processor.json", "connector.safetensors",
                 "tokenizer_config.json", "language_model/config.json" if not adapter else
                 "language_model/adapter_config.json"):  # fmt: skip
        assert (out / name).is_file(), f"{out} lacks {name}"
    assert (out / "encoder").is_dir() != adapter
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values()), "metrics.json must be flat"
    for key in eval_keys:
        assert key in metrics, f"metrics.json lacks {key}: {metrics}"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] == metrics["global_step"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    return metrics


@pytest.mark.slow
def test_stage1_writes_the_run_contract(stage1_checkpoint):
    metrics = assert_run_contract(
        stage1_checkpoint,
        eval_keys=("eval_loss", "eval_image_gain", "eval_loss_text_only", "eval_media_feature_cosine",
                   "eval_caption_digit_accuracy"),
    )  # fmt: skip
    config = yaml.safe_load((stage1_checkpoint / "config.yaml").read_text())
    assert config["max_steps"] == metrics["global_step"] == 30
    assert config["vision_tower"] == "vlmkit-tiny/clip-vision"
    assert 0 < metrics["eval_loss"] < 10
    assert json.loads((stage1_checkpoint / "vlmkit_config.json").read_text())["num_media_tokens"] == 16


@pytest.mark.slow
def test_stage1_then_stage2_answers_held_out_digits(trained_stage2, digits_data):
    """conftest.trained_stage2: stage 1 (connector stacking 16 patches per token), then stage 2."""

    def images(name: str) -> set[str]:
        return {r["image"] for r in json.loads((digits_data / name).read_text())}

    assert not images("stage2_eval.json") & (images("stage2_train.json") | images("stage1_train.json"))
    stage1, out = trained_stage2
    stage1_config = json.loads((stage1 / "vlmkit_config.json").read_text())
    assert stage1_config["connector_kwargs"] == {"downsample": 16} and stage1_config["num_media_tokens"] == 1
    metrics = assert_run_contract(out, eval_keys=("eval_accuracy", "eval_loss"))
    # Held-out digits (a stratified 20% split no stage trained on); chance is 10%.
    assert metrics["eval_accuracy"] >= 0.90, metrics
    examples = json.loads((out / "eval_examples.json").read_text())
    assert sum(e["correct"] for e in examples) >= 0.8 * len(examples)
    vlmkit_config = json.loads((out / "vlmkit_config.json").read_text())
    assert vlmkit_config["lineage"][-1]["parent"] == str(stage1.resolve())
    assert vlmkit_config["connector_kwargs"] == {"downsample": 16}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no user Accelerate default config
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    )
    return proc


@pytest.mark.slow
def test_accelerate_launch_runs_stage2(stage1_checkpoint, tmp_path):
    out = tmp_path / "launched"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "recipes/llava_stage2.py",
           "--config", STAGE2_CONFIG, "--model_name_or_path", str(stage1_checkpoint), "--output_dir", str(out),
           *QUICK]  # fmt: skip
    proc = _run(cmd, tmp_path)
    assert "[vlmkit] llava_stage2:" in proc.stdout
    metrics = assert_run_contract(out, eval_keys=("eval_accuracy", "eval_loss"))
    assert metrics["global_step"] == 2


@pytest.mark.slow
def test_plain_python_stage2_from_parts_with_lora(stage1_checkpoint, tmp_path):
    """The second launch line of the recipe docstring: separate parts, a stage-1 connector, LoRA."""
    out = tmp_path / "lora"
    cmd = [sys.executable, "recipes/llava_stage2.py", "--config", STAGE2_CONFIG, "--model_name_or_path", "none",
           "--vision_tower", "vlmkit-tiny/clip-vision", "--language_model", "vlmkit-tiny/llama",
           "--pretrain_connector", str(stage1_checkpoint / "connector.safetensors"), "--use_lora",
           "--lora_r", "4", "--output_dir", str(out), *QUICK]  # fmt: skip
    proc = _run(cmd, tmp_path)
    assert "[vlmkit] llava_stage2:" in proc.stdout
    metrics = assert_run_contract(out, adapter=True, eval_keys=("eval_accuracy", "eval_loss"))
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["use_lora"] is True and config["model_name_or_path"] is None


def test_bad_flag_fails_before_any_work(recipe, tmp_path):
    from vlmkit.config.parser import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'learning_rat'. Did you mean: learning_rate"):
        recipe("llava_stage2").main(
            ["--config", STAGE2_CONFIG, "--learning_rat", "1", "--output_dir", str(tmp_path / "never")]
        )
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("name", ["llava_stage1", "llava_stage2"])
def test_recipe_docstring_gives_launch_commands(recipe, name):
    doc = recipe(name).__doc__
    assert f"accelerate launch recipes/{name}.py" in doc and f"python recipes/{name}.py" in doc
