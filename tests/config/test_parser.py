"""The config system: YAML + command line, strict keys and types, help strings, round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vlmkit.config.parser import ConfigError, load_yaml, parse_config, save_config
from vlmkit.config.recipes import Stage1Config, Stage2Config

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"


def _yaml(tmp_path, **values):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_defaults_then_yaml_then_command_line(tmp_path):
    assert parse_config(Stage2Config, []).learning_rate == 2e-5
    assert Stage1Config().learning_rate == 1e-3  # a recipe overrides a group default
    path = _yaml(tmp_path, learning_rate=0.5, seed=7, max_length=99)
    cfg = parse_config(Stage2Config, ["--config", path])
    assert (cfg.learning_rate, cfg.seed, cfg.max_length) == (0.5, 7, 99)
    cfg = parse_config(Stage2Config, ["--config", path, "--seed", "3", "--learning_rate=1e-4"])
    assert (cfg.learning_rate, cfg.seed, cfg.max_length) == (1e-4, 3, 99)
    # Flag order does not matter: the command line wins over the file either way.
    cfg = parse_config(Stage2Config, ["--seed", "3", "--config", path])
    assert cfg.seed == 3


def test_unknown_key_in_yaml_lists_valid_names_and_close_match(tmp_path):
    path = _yaml(tmp_path, learning_rat=0.1)
    with pytest.raises(ConfigError) as err:
        parse_config(Stage2Config, ["--config", path])
    msg = str(err.value)
    assert path in msg and "learning_rat" in msg
    assert "Did you mean: learning_rate" in msg
    assert "Valid keys:" in msg and "per_device_train_batch_size" in msg and "use_lora" in msg


def test_unknown_key_on_command_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(Stage2Config, ["--per_device_batch_size", "4"])
    msg = str(err.value)
    assert "command line" in msg and "per_device_batch_size" in msg
    assert "per_device_train_batch_size" in msg.split("Valid keys:")[0]  # the hint
    assert "Valid keys:" in msg
    # A stage-2-only field is unknown to stage 1.
    with pytest.raises(ConfigError, match="use_lora"):
        parse_config(Stage1Config, ["--use_lora"])


def test_no_prefix_abbreviations():
    with pytest.raises(ConfigError, match="learning"):
        parse_config(Stage2Config, ["--learning", "0.1"])


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--max_steps", "abc"], "max_steps"),
        (["--max_steps", "1.5"], "max_steps"),
        (["--learning_rate", "fast"], "learning_rate"),
        (["--use_lora", "maybe"], "use_lora"),
    ],
)
def test_wrong_type_names_the_field(argv, field):
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        parse_config(Stage2Config, argv)


def test_wrong_type_in_yaml_names_file_and_field(tmp_path):
    path = _yaml(tmp_path, per_device_train_batch_size="sixteen")
    with pytest.raises(ConfigError) as err:
        parse_config(Stage2Config, ["--config", path])
    assert path in str(err.value) and "per_device_train_batch_size" in str(err.value)
    with pytest.raises(ConfigError, match="output_dir"):
        parse_config(Stage2Config, ["--config", _yaml(tmp_path, output_dir=None)])


def test_bool_flags():
    assert parse_config(Stage2Config, []).use_lora is False
    assert parse_config(Stage2Config, ["--use_lora"]).use_lora is True
    assert parse_config(Stage2Config, ["--use_lora", "false"]).use_lora is False
    assert parse_config(Stage2Config, ["--use_lora", "true"]).use_lora is True
    assert parse_config(Stage2Config, ["--use_lora=no"]).use_lora is False
    # A bare flag followed by another flag still means true.
    cfg = parse_config(Stage2Config, ["--use_lora", "--seed", "5"])
    assert cfg.use_lora is True and cfg.seed == 5


def test_bool_from_yaml(tmp_path):
    cfg = parse_config(Stage2Config, ["--config", _yaml(tmp_path, use_lora=True, tune_encoder="yes")])
    assert cfg.use_lora is True and cfg.tune_encoder is True


def test_list_fields(tmp_path):
    cfg = parse_config(Stage2Config, ["--lora_target_modules", "q_proj", "v_proj"])
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    assert parse_config(Stage2Config, ["--report_to", "none"]).report_to == ["none"]
    cfg = parse_config(Stage2Config, ["--lora_target_modules", "q_proj,k_proj"])
    assert cfg.lora_target_modules == ["q_proj", "k_proj"]
    cfg = parse_config(Stage2Config, ["--config", _yaml(tmp_path, report_to=["wandb", "tensorboard"])])
    assert cfg.report_to == ["wandb", "tensorboard"]
    # Defaults are not shared between instances.
    a, b = Stage2Config(), Stage2Config()
    a.report_to.append("wandb")
    assert b.report_to == ["tensorboard"]


def test_optional_none(tmp_path):
    cfg = parse_config(
        Stage2Config, ["--model_name_or_path", "some/dir", "--connector_learning_rate", "1e-3"]
    )
    assert cfg.model_name_or_path == "some/dir" and cfg.connector_learning_rate == 1e-3
    cfg = parse_config(
        Stage2Config, ["--config", _yaml(tmp_path, model_name_or_path="x"), "--model_name_or_path", "none"]
    )
    assert cfg.model_name_or_path is None
    assert parse_config(Stage2Config, ["--drop_cls_token", "null"]).drop_cls_token is None
    assert (
        parse_config(Stage2Config, ["--config", _yaml(tmp_path, eval_data_path=None)]).eval_data_path is None
    )


def test_llava_aliases():
    cfg = parse_config(Stage2Config, ["--mm_projector_type", "linear"])
    assert cfg.connector == "linear"
    cfg = parse_config(Stage2Config, ["--pretrain_mm_mlp_adapter", "mm_projector.bin"])
    assert cfg.pretrain_connector == "mm_projector.bin"


def test_alias_in_yaml_and_command_line_precedence(tmp_path):
    path = _yaml(tmp_path, mm_projector_type="qformer")
    assert parse_config(Stage2Config, ["--config", path]).connector == "qformer"
    assert parse_config(Stage2Config, ["--config", path, "--connector", "linear"]).connector == "linear"


@pytest.mark.parametrize("cls", [Stage1Config, Stage2Config])
def test_every_field_has_help(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help string"


def test_help_output_lists_fields_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Stage2Config, ["--help"], prog="llava_stage2")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--use_lora" in out and "--mm_projector_type" in out and "LoRA rank" in out
    assert "(default: 16)" in out


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_config(
        Stage2Config,
        ["--use_lora", "--lora_target_modules", "q_proj", "v_proj", "--connector_learning_rate", "0.01",
         "--mm_projector_type", "qformer", "--max_steps", "12", "--output_dir", str(tmp_path / "out")],
    )  # fmt: skip
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_yaml(path)["connector"] == "qformer"
    again = parse_config(Stage2Config, ["--config", str(path)])
    assert again == cfg


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse_config(Stage2Config, ["--config", str(tmp_path / "missing.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_config(Stage2Config, ["--config", str(bad)])
    bad.write_text("key: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_config(Stage2Config, ["--config", str(bad)])


def test_shipped_digits_configs_parse():
    s1 = parse_config(Stage1Config, ["--config", str(CONFIGS / "digits_llava_stage1.yaml")])
    s2 = parse_config(Stage2Config, ["--config", str(CONFIGS / "digits_llava_stage2.yaml")])
    assert s1.vision_tower == "vlmkit-tiny/clip-vision" and s1.connector == "mlp2x_gelu"
    assert s2.model_name_or_path and s2.eval_data_path


def test_shipped_lm_pretrain_config_parses():
    from vlmkit.config.lm import LmPretrainConfig

    cfg = parse_config(LmPretrainConfig, ["--config", str(CONFIGS / "digits_lm_pretrain.yaml")])
    assert cfg.config_name == "vlmkit-tiny/llama" and cfg.eval_data_path.endswith("lm_corpus_eval.txt")
    assert cfg.attention_within_documents
