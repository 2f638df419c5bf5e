"""Pre-flight: every input a run needs is checked before any model loads or step runs."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from vlmkit.config.parser import parse_config
from vlmkit.config.recipes import Stage2Config
from vlmkit.config.rlhf import DPOConfig
from vlmkit.data.records import BadSampleError
from vlmkit.training.preflight import PreflightError, check_data, check_model_paths, check_output_dir

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
STAGE2_YAML = str(CONFIGS / "digits_llava_stage2.yaml")
FROM_PARTS = ["--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision",
              "--language_model", "vlmkit-tiny/llama"]  # fmt: skip


def _user_data(digits: Path, root: Path, n: int = 6, *, name="my.json", folder="my_images", start: int = 0):
    """n records of the embedded digits, copied with their images under root/<folder>: a user's own data."""
    rows = json.loads((digits / "stage2_train.json").read_text())[start : start + n]
    for row in rows:
        target = root / folder / row["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(digits / row["image"], target)
    (root / name).write_text(json.dumps(rows))
    return str(root / name), str(root / folder), rows


def test_output_dir_must_be_a_writable_directory(tmp_path):
    check_output_dir(str(tmp_path / "new" / "run"))  # creatable: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(PreflightError, match="exists and is not a directory"):
        check_output_dir(str(tmp_path / "file"))
    with pytest.raises(PreflightError, match="cannot be created"):
        check_output_dir(str(tmp_path / "file" / "run"))


def test_local_model_paths_must_exist(tmp_path):
    cfg = parse_config(Stage2Config, ["--model_name_or_path", str(tmp_path / "stage1_never_ran")])
    with pytest.raises(PreflightError, match=r"--model_name_or_path .*stage1_never_ran: no such file"):
        check_model_paths(cfg)
    cfg = parse_config(Stage2Config, ["--model_name_or_path", "outputs/digits/not_there"])
    with pytest.raises(PreflightError, match="--model_name_or_path outputs/digits/not_there"):
        check_model_paths(cfg)
    cfg = parse_config(Stage2Config, ["--pretrain_connector", "connector.safetensors"])
    with pytest.raises(PreflightError, match="--pretrain_connector connector.safetensors"):
        check_model_paths(cfg)
    # Hub ids, vlmkit-tiny names and existing directories pass.
    check_model_paths(parse_config(Stage2Config, ["--model_name_or_path", "none", "--vision_tower",
                                                  "openai/clip-vit-large-patch14-336", "--language_model",
                                                  "vlmkit-tiny/llama"]))  # fmt: skip
    check_model_paths(parse_config(Stage2Config, ["--model_name_or_path", str(tmp_path)]))


def test_embedded_eval_data_keep_their_media_with_a_users_image_folder(digits_data, tmp_path):
    """The reproduction: the digits config + the user's --data_path/--image_folder; the embedded eval file
    resolves its images beside itself, not under the user's folder."""
    data, images, _ = _user_data(digits_data, tmp_path)
    cfg = parse_config(Stage2Config, ["--config", STAGE2_YAML, "--data_path", data, "--image_folder", images])
    check_data(cfg)


def test_eval_image_folder_is_the_eval_datas_media_root(digits_data, tmp_path):
    data, images, _ = _user_data(digits_data, tmp_path)
    evals, eval_images, _ = _user_data(
        digits_data, tmp_path, name="held_out.json", folder="held_out_images", start=100
    )
    argv = [*FROM_PARTS, "--data_path", data, "--image_folder", images, "--eval_data_path", evals]
    with pytest.raises(BadSampleError) as err:  # default: the training folder, which lacks these images
        check_data(parse_config(Stage2Config, argv))
    assert (err.value.source, err.value.index) == (evals, 0)
    check_data(parse_config(Stage2Config, [*argv, "--eval_image_folder", eval_images]))


def test_bad_eval_record_fails_in_error_mode_and_is_reported_in_skip_mode(digits_data, tmp_path, caplog):
    data, images, rows = _user_data(digits_data, tmp_path)
    rows[2]["image"] = "images/train/0/missing.png"
    bad_eval = tmp_path / "my_images" / "eval.json"
    bad_eval.write_text(json.dumps(rows))
    argv = [*FROM_PARTS, "--data_path", data, "--image_folder", images, "--eval_data_path", str(bad_eval)]
    with pytest.raises(BadSampleError) as err:
        check_data(parse_config(Stage2Config, argv))
    assert (err.value.source, err.value.index, err.value.field_name) == (str(bad_eval), 2, "images[0]")
    with caplog.at_level(logging.WARNING):
        check_data(parse_config(Stage2Config, [*argv, "--on_bad_sample", "skip"]))
    assert "1 bad records, which the run will skip" in caplog.text


def test_dpo_eval_prompts_are_checked(digits_data, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(
        json.dumps([{"prompt": "<image>\nWhich digit?", "images": ["nowhere.png"], "answer": "3"}])
    )
    argv = ["--model_name_or_path", "none", "--data_path", "vlmkit-data/digits/preference_train.json",
            "--eval_prompts_path", str(prompts)]  # fmt: skip
    with pytest.raises(BadSampleError, match=r"prompts.json, record 0, field 'images\[0\]'"):
        check_data(parse_config(DPOConfig, argv))


def test_the_recipe_fails_in_seconds_before_any_step(recipe, digits_data, tmp_path):
    """A bad held-out record stops stage 2 before its model loads: no step, no checkpoint, no log."""
    data, images, rows = _user_data(digits_data, tmp_path)
    rows[4]["conversations"][0]["value"] = "no placeholder, but the record has an image <image> <image>"
    bad_eval = tmp_path / "bad_eval.json"
    bad_eval.write_text(json.dumps(rows))
    out = tmp_path / "run"
    started = time.perf_counter()
    with pytest.raises(BadSampleError) as err:
        recipe("llava_stage2").main(
            ["--config", STAGE2_YAML, *FROM_PARTS, "--data_path", data, "--image_folder", images,
             "--eval_data_path", str(bad_eval), "--eval_image_folder", images, "--output_dir", str(out),
             "--max_steps", "200", "--report_to", "none"]
        )  # fmt: skip
    assert time.perf_counter() - started < 20
    assert (err.value.source, err.value.index) == (str(bad_eval), 4) and "placeholder" in str(err.value)
    assert not (out / "train_log.jsonl").exists() and not list(out.glob("checkpoint-*"))


def test_stage0_records_have_their_media_checked(digits_data, tmp_path):
    from vlmkit.config.ssl_audio import Wav2Vec2PretrainConfig
    from vlmkit.config.ssl_image import ClipConfig

    rows = json.loads((digits_data / "clip_eval.json").read_text())[:5]
    for row in rows:
        row["image"] = str(digits_data / row["image"])
    rows[3]["image"] = str(digits_data / "images" / "gone.png")
    held_out = tmp_path / "clip_eval.json"
    held_out.write_text(json.dumps(rows))
    argv = ["--data_path", "vlmkit-data/digits/clip_train.json", "--eval_data_path", str(held_out),
            "--allow_outside_media_root", "true"]  # fmt: skip
    with pytest.raises(BadSampleError) as err:
        check_data(parse_config(ClipConfig, argv))
    assert (err.value.source, err.value.index, err.value.field_name) == (str(held_out), 3, "image")
    check_data(parse_config(ClipConfig, [*argv, "--on_bad_sample", "skip"]))  # reported, counted by the run

    (tmp_path / "a.wav").write_bytes(b"RIFF")
    clips = tmp_path / "clips.json"
    clips.write_text(json.dumps([{"audio": "a.wav", "label": 1}, {"audio": "b.wav", "label": 2}]))
    argv = ["--data_path", str(clips), "--eval_data_path", str(clips)]
    with pytest.raises(BadSampleError, match=r"clips.json, record 1, field 'audio'.*not found"):
        check_data(parse_config(Wav2Vec2PretrainConfig, argv))


QUICK_RUN = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none"]


@pytest.mark.slow
def test_shipped_config_with_a_users_data_and_image_folder_trains_and_evaluates(
    recipe, digits_data, tmp_path
):
    """The reported case: --data_path my.json --image_folder my_images with the digits config used to train,
    then die in evaluation on the config's embedded held-out file. Now it finishes with its metrics."""
    data, images, _ = _user_data(digits_data, tmp_path)
    out = tmp_path / "run"
    metrics = recipe("llava_stage2").main(
        ["--config", STAGE2_YAML, *FROM_PARTS, "--data_path", data, "--image_folder", images,
         "--output_dir", str(out), "--max_eval_samples", "8", *QUICK_RUN]
    )  # fmt: skip
    assert "eval_accuracy" in metrics and "eval_loss" in metrics and (out / "metrics.json").is_file()


@pytest.mark.slow
def test_bad_eval_records_are_counted_once_in_skip_mode(recipe, digits_data, tmp_path):
    data, images, rows = _user_data(digits_data, tmp_path)
    rows[1]["image"] = "images/train/0/missing.png"
    held_out = tmp_path / "held_out.json"
    held_out.write_text(json.dumps(rows))
    out = tmp_path / "run"
    metrics = recipe("llava_stage2").main(
        ["--config", STAGE2_YAML, *FROM_PARTS, "--data_path", data, "--image_folder", images,
         "--eval_data_path", str(held_out), "--eval_image_folder", images, "--on_bad_sample", "skip",
         "--output_dir", str(out), *QUICK_RUN]
    )  # fmt: skip
    assert metrics["skipped_samples"] == 1 and "eval_loss" in metrics
    assert json.loads((out / "skipped.json").read_text()) == {"media file not found": 1}


def test_held_out_clips_resolve_against_eval_audio_folder(tmp_path):
    from vlmkit.config.ssl_audio import Wav2Vec2PretrainConfig

    train_dir, eval_dir = tmp_path / "train_audio", tmp_path / "eval_audio"
    for folder in (train_dir, eval_dir):
        folder.mkdir()
    (train_dir / "a.wav").write_bytes(b"RIFF")
    (eval_dir / "b.wav").write_bytes(b"RIFF")
    (tmp_path / "train.json").write_text(json.dumps([{"audio": "a.wav", "label": 1}]))
    (tmp_path / "eval.json").write_text(json.dumps([{"audio": "b.wav", "label": 2}]))
    argv = ["--data_path", str(tmp_path / "train.json"), "--eval_data_path", str(tmp_path / "eval.json"),
            "--audio_folder", str(train_dir)]  # fmt: skip
    with pytest.raises(BadSampleError, match="eval.json"):  # b.wav is not under the training folder
        check_data(parse_config(Wav2Vec2PretrainConfig, argv))
    check_data(parse_config(Wav2Vec2PretrainConfig, [*argv, "--eval_audio_folder", str(eval_dir)]))
