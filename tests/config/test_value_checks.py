"""Values outside a field's declared choices or range fail at parse time, naming field, value and what is valid."""

from __future__ import annotations

import pytest

from vlmkit.config import args as groups
from vlmkit.config.checks import _f, field_rules
from vlmkit.config.grpo import GRPOConfig
from vlmkit.config.parser import ConfigError, config_from_dict, parse_config
from vlmkit.config.ppo import KL_CONTROLLERS, KL_ESTIMATORS, PPOConfig
from vlmkit.config.recipes import Stage2Config
from vlmkit.config.rlhf import DPOConfig
from vlmkit.config.ssl_audio import Wav2Vec2PretrainConfig
from vlmkit.config.ssl_image import MaeConfig

PPO_REWARD = ["--reward_function", "vlmkit.rlhf.rewards:digit_match"]


@pytest.mark.parametrize(
    "cls, argv, field, expected",
    [
        (Stage2Config, ["--max_steps", "0"], "max_steps", ">= 1 (or -1)"),
        (Stage2Config, ["--max_steps", "-5"], "max_steps", ">= 1 (or -1)"),
        (Stage2Config, ["--max_steps", "-1", "--num_train_epochs", "0"], "num_train_epochs", "> 0"),
        (Stage2Config, ["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps", ">= 1"),
        (Stage2Config, ["--truncation", "foo"], "truncation", "one of: error, drop"),
        (Stage2Config, ["--warmup_ratio", "2"], "warmup_ratio", "<= 1"),
        (Stage2Config, ["--learning_rate", "-0.001"], "learning_rate", ">= 0"),
        (Stage2Config, ["--learning_rate", "inf"], "learning_rate", "finite"),
        (Stage2Config, ["--learning_rate", "nan"], "learning_rate", "finite"),
        (Stage2Config, ["--per_device_train_batch_size", "0"], "per_device_train_batch_size", ">= 1"),
        (Stage2Config, ["--per_device_eval_batch_size", "-2"], "per_device_eval_batch_size", ">= 1"),
        (Stage2Config, ["--lora_dropout", "1.5"], "lora_dropout", "< 1"),
        (Stage2Config, ["--on_bad_sample", "ignore"], "on_bad_sample", "one of: error, skip"),
        (Stage2Config, ["--connector", "resampler"], "connector", "one of: linear, mlp2x_gelu, qformer"),
        (Stage2Config, ["--report_to", "tensorboard", "nonsense"], "report_to", "one of: tensorboard"),
        (Stage2Config, ["--data_format", "csv"], "data_format", "one of: auto, llava"),
        (Stage2Config, ["--mixed_precision", "fp8"], "mixed_precision", "one of: auto, no, bf16, fp16"),
        (Stage2Config, ["--lr_scheduler_type", "step"], "lr_scheduler_type", "one of: cosine, linear"),
        (Stage2Config, ["--max_length", "0"], "max_length", ">= 1"),
        (DPOConfig, ["--label_smoothing", "0.7"], "label_smoothing", "< 0.5"),
        (DPOConfig, ["--beta", "0"], "beta", "> 0"),
        (PPOConfig, [*PPO_REWARD, "--top_p", "1.5"], "top_p", "<= 1"),
        (PPOConfig, [*PPO_REWARD, "--kl_estimator", "k9"], "kl_estimator", "one of: k1, k2, k3"),
        (PPOConfig, [*PPO_REWARD, "--value_model", "critic"], "value_model", "one of: policy_head"),
        (PPOConfig, [*PPO_REWARD, "--learning_rate", "-1"], "learning_rate", ">= 0"),  # an overridden default
        (PPOConfig, [*PPO_REWARD, "--num_mini_batches", "0"], "num_mini_batches", ">= 1"),
        (PPOConfig, [*PPO_REWARD, "--max_steps", "-1"], "max_steps", ">= 1;"),  # PPO has no epochs
        (GRPOConfig, [*PPO_REWARD, "--loss_type", "mean"], "loss_type", "one of: grpo, dr_grpo, dapo"),
        (GRPOConfig, [*PPO_REWARD, "--scale_rewards", "std"], "scale_rewards", "one of: group, batch, none"),
        (
            GRPOConfig,
            [*PPO_REWARD, "--advantage_baseline", "max"],
            "advantage_baseline",
            "one of: mean, rloo",
        ),
        (GRPOConfig, [*PPO_REWARD, "--num_generations", "1"], "num_generations", ">= 2"),
        (GRPOConfig, [*PPO_REWARD, "--beta", "-0.1"], "beta", ">= 0"),
        (GRPOConfig, [*PPO_REWARD, "--on_bad_reward", "ignore"], "on_bad_reward", "one of: error, skip"),
        (MaeConfig, ["--mask_ratio", "1"], "mask_ratio", "< 1"),
        (Wav2Vec2PretrainConfig, ["--mask_prob", "1.2"], "mask_prob", "<= 1"),
        (
            Wav2Vec2PretrainConfig,
            ["--feat_extract_norm", "batch"],
            "feat_extract_norm",
            "one of: group, layer",
        ),
    ],
)
def test_bad_value_is_rejected_naming_field_value_and_valid_values(cls, argv, field, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(cls, argv)
    msg = str(err.value)
    assert msg.startswith("command line:") and f"field '{field}'" in msg and expected in msg
    bad_value = argv[argv.index(f"--{field}") + 1] if f"--{field}" in argv else None
    assert bad_value is None or bad_value.lstrip("-") in msg


def test_bad_value_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("truncation: foo\n")
    with pytest.raises(
        ConfigError, match=rf"{path}: field 'truncation': expects one of: error, drop; got 'foo'"
    ):
        parse_config(Stage2Config, ["--config", str(path)])


@pytest.mark.parametrize(
    "argv",
    [
        ["--max_steps", "-1", "--num_train_epochs", "0.5"],
        ["--max_steps", "1", "--warmup_ratio", "0", "--learning_rate", "0"],
        ["--report_to", "none"],
        ["--report_to", "tensorboard,wandb"],
        ["--connector_learning_rate", "none"],
        ["--truncation", "drop", "--on_bad_sample", "skip"],
    ],
)
def test_valid_edge_values_pass(argv):
    parse_config(Stage2Config, argv)


def test_a_recipe_that_changes_a_default_keeps_the_group_rules():
    assert field_rules(PPOConfig, "learning_rate") == field_rules(groups.OptimArgs, "learning_rate")
    assert field_rules(Stage2Config, "max_steps") == {"ge": 1, "also": (-1,)}
    assert field_rules(PPOConfig, "max_steps") == {"ge": 1}  # declared with rules of its own: they replace


def test_choices_match_the_registries_they_stand_for():
    from vlmkit.data.readers import FORMATS, ON_BAD_SAMPLE
    from vlmkit.models.build import resolve_attn_implementation  # noqa: F401 (the valid names live inside)
    from vlmkit.models.connectors import CONNECTORS
    from vlmkit.rlhf import kl
    from vlmkit.training.optim import SCHEDULES

    assert set(groups.CONNECTORS) == set(CONNECTORS)
    assert set(KL_ESTIMATORS) == set(kl.KL_ESTIMATORS) and set(KL_CONTROLLERS) == set(kl.KL_CONTROLLERS)
    assert set(groups.LR_SCHEDULES) == set(SCHEDULES)
    assert set(groups.DATA_FORMATS) == {"auto", *FORMATS}
    assert set(groups.ON_BAD_SAMPLE) == set(ON_BAD_SAMPLE)
    from vlmkit.config import grpo, rl
    from vlmkit.rlhf import grpo_math, rewards

    assert (grpo.SCALE_REWARDS, grpo.BASELINES, grpo.LOSS_TYPES) == (
        grpo_math.SCALE_REWARDS, grpo_math.BASELINES, grpo_math.LOSS_TYPES
    )  # fmt: skip
    assert set(rl.ON_BAD_REWARD) == set(rewards.ON_BAD_REWARD)


def test_unknown_rule_names_are_a_programming_error():
    with pytest.raises(TypeError, match="minimum"):
        _f(1, "help", minimum=0)


def test_config_from_dict_checks_too():
    with pytest.raises(ConfigError, match="field 'seed'"):
        config_from_dict(Stage2Config, {"seed": -3})
