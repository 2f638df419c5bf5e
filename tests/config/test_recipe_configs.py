"""Each recipe's config holds exactly the argument groups the recipe reads; every shipped config parses."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from vlmkit.config.ablation import Stage1AblationConfig
from vlmkit.config.eval import BenchmarkEvalConfig
from vlmkit.config.grpo import GRPOConfig
from vlmkit.config.lm import LmPretrainConfig
from vlmkit.config.parser import ConfigError, parse_config
from vlmkit.config.ppo import PPOConfig
from vlmkit.config.recipes import Stage1Config, Stage2Config
from vlmkit.config.rlhf import DPOConfig, RewardModelConfig
from vlmkit.config.ssl_audio import Wav2Vec2PretrainConfig
from vlmkit.config.ssl_image import ClipConfig, MaeConfig
from vlmkit.pipeline.spec import load_pipeline, stage_argv

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "configs"
RECIPE_CONFIGS = {
    "clip_pretrain": ClipConfig, "mae_pretrain": MaeConfig, "wav2vec2_pretrain": Wav2Vec2PretrainConfig,
    "llava_stage1": Stage1Config, "llava_stage2": Stage2Config, "reward_model": RewardModelConfig,
    "dpo": DPOConfig, "ppo": PPOConfig, "grpo": GRPOConfig, "eval": BenchmarkEvalConfig, "lm_pretrain": LmPretrainConfig,
    "stage1_ablation": Stage1AblationConfig,
}  # fmt: skip
SHIPPED = {
    "digits_clip.yaml": "clip_pretrain", "digits_mae.yaml": "mae_pretrain",
    "spoken_digits_wav2vec2.yaml": "wav2vec2_pretrain",
    "digits_llava_stage1.yaml": "llava_stage1", "llava15_stage1.yaml": "llava_stage1",
    "spoken_digits_audio_stage1.yaml": "llava_stage1",
    "digits_llava_stage2.yaml": "llava_stage2", "digits_llava_stage2_lora.yaml": "llava_stage2",
    "digits_llava_stage2_weak.yaml": "llava_stage2", "llava15_stage2.yaml": "llava_stage2",
    "qlora_siglip_qwen2.5_0.5b.yaml": "llava_stage2", "spoken_digits_audio_stage2.yaml": "llava_stage2",
    "spoken_digits_audio_stage2_weak.yaml": "llava_stage2",
    "qwen2.5_vl_3b_lora.yaml": "llava_stage2", "qwen2.5_vl_7b_qlora.yaml": "llava_stage2",
    "smolvlm_256m_full.yaml": "llava_stage2", "llava_1.5_7b_hf_lora.yaml": "llava_stage2",
    "gemma3_4b_lora.yaml": "llava_stage2",
    "digits_reward_model.yaml": "reward_model", "spoken_digits_reward_model.yaml": "reward_model",
    "digits_dpo.yaml": "dpo", "digits_rpo.yaml": "dpo", "digits_ppo.yaml": "ppo", "spoken_digits_ppo.yaml": "ppo",
    "ppo_llava.yaml": "ppo", "digits_ppo_verifiable.yaml": "ppo", "spoken_digits_ppo_verifiable.yaml": "ppo",
    "digits_grpo.yaml": "grpo", "spoken_digits_grpo.yaml": "grpo", "digits_eval.yaml": "eval",
    "digits_lm_pretrain.yaml": "lm_pretrain", "digits_stage1_ablation.yaml": "stage1_ablation",
}  # fmt: skip
PIPELINES = ("pipeline_digits.yaml",)


def test_every_shipped_config_is_known():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == set(SHIPPED) | set(PIPELINES)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_config_parses_with_its_recipe(name):
    cfg = parse_config(RECIPE_CONFIGS[SHIPPED[name]], ["--config", str(CONFIGS / name)])
    assert cfg.output_dir


@pytest.mark.parametrize("name", PIPELINES)
def test_every_pipeline_stage_parses_with_its_recipe(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # stage configs are named relative to the repository root
    spec = load_pipeline(str(CONFIGS / name))
    for stage in spec.stages:
        parse_config(RECIPE_CONFIGS[stage.recipe], stage_argv(spec, stage, tmp_path))


# Flags a recipe would silently ignore (it never reads them) must be unknown to its config.
IGNORED = {
    PPOConfig: ["packing", "group_by_length", "feature_cache_dir", "packing_max_tokens", "max_length",
                "truncation", "tune_encoder", "build_embedded_data", "num_train_epochs", "dataloader_num_workers"],
    GRPOConfig: ["packing", "group_by_length", "feature_cache_dir", "max_length", "num_train_epochs",
                 "dataloader_num_workers", "value_model", "kl_controller", "num_ppo_epochs"],
    DPOConfig: ["packing", "group_by_length", "feature_cache_dir", "packing_max_tokens"],
    RewardModelConfig: ["packing", "group_by_length", "feature_cache_dir", "max_new_tokens", "eval_generation"],
    Stage1Config: ["tune_encoder", "use_lora", "eval_generation"],
    Stage2Config: ["build_embedded_data", "eval_prompts_path"],
    ClipConfig: ["use_liger_kernel", "data_format", "packing"],
    MaeConfig: ["use_liger_kernel", "attn_implementation", "lock_text_tower"],
    Wav2Vec2PretrainConfig: ["use_liger_kernel", "image_folder", "max_eval_samples"],
}  # fmt: skip


@pytest.mark.parametrize("cls, name", [(cls, name) for cls, names in IGNORED.items() for name in names])
def test_a_field_the_recipe_does_not_read_is_rejected_with_the_valid_names(cls, name):
    with pytest.raises(ConfigError) as err:
        parse_config(cls, [f"--{name}", "1"])
    msg = str(err.value)
    assert f"unknown key '{name}'" in msg and "Valid keys:" in msg and "output_dir" in msg


@pytest.mark.parametrize("cls", list(RECIPE_CONFIGS.values()))
def test_every_field_has_help_and_appears_in_help_output(cls, capsys):
    with pytest.raises(SystemExit):
        parse_config(cls, ["--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help", "").strip(), f"{cls.__name__}.{f.name} has no help string"
        assert f"--{f.name}" in out


def _source_reads(field_name: str) -> bool:
    needles = (f".{field_name}", f'"{field_name}"')
    for path in [*ROOT.joinpath("vlmkit").rglob("*.py"), *ROOT.joinpath("recipes").glob("*.py")]:
        if "config" in path.parts[-2]:
            continue
        text = path.read_text()
        if any(n + tail in text for n in needles for tail in (")", ",", " ", "\n", ":", "]", "[", ".", "}")):
            return True
    return False


@pytest.mark.parametrize("cls", list(RECIPE_CONFIGS.values()))
def test_every_field_is_read_somewhere(cls):
    # A coarse guard against new leaks: each field's name is read (`.name` or "name") outside vlmkit/config.
    unread = [
        f.name for f in dataclasses.fields(cls) if not _source_reads(f.name) and f.name != "num_mini_batches"
    ]
    assert not unread, f"{cls.__name__} accepts fields nothing reads: {unread}"


@pytest.mark.parametrize("recipe", sorted(RECIPE_CONFIGS))
def test_every_field_a_recipe_reads_is_in_its_config(recipe):
    cls = RECIPE_CONFIGS[recipe]
    read = set(re.findall(r"\bcfg\.(\w+)", (ROOT / "recipes" / f"{recipe}.py").read_text()))
    missing = sorted(name for name in read if not hasattr(cls, name) and name not in cls.__dataclass_fields__)
    assert not missing, f"recipes/{recipe}.py reads fields its config lacks: {missing}"
