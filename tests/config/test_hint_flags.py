"""Every `--flag` that vlmkit's messages, hints and docstrings tell a user to pass exists on some parser."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path

from vlmkit.config.ablation import Stage1AblationConfig
from vlmkit.config.eval import BenchmarkEvalConfig
from vlmkit.config.grpo import GRPOConfig
from vlmkit.config.lm import LmPretrainConfig
from vlmkit.config.ppo import PPOConfig
from vlmkit.config.recipes import Stage1Config, Stage2Config
from vlmkit.config.rlhf import DPOConfig, RewardModelConfig
from vlmkit.config.ssl_audio import Wav2Vec2PretrainConfig
from vlmkit.config.ssl_image import ClipConfig, MaeConfig

ROOT = Path(__file__).resolve().parents[2]
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)")
# Hints in words: "raise max_length", "set feature_cache_dir", "lower packing_max_tokens".
WORD_HINT = re.compile(r"\b(?:set|raise|lower|increase|decrease|reduce) ([a-z]+_[a-z0-9_]+)")
# Flags of outside programs that vlmkit's messages name (the espeak-ng binary behind the spoken digits).
EXTERNAL = {"voices", "stdout", "version"}


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in a module, f-string pieces included."""
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def _known_flags() -> set[str]:
    from accelerate.commands.launch import launch_command_parser

    from vlmkit.cli import build_parser

    known = {"config", *EXTERNAL}
    recipe_configs = (ClipConfig, MaeConfig, Wav2Vec2PretrainConfig, Stage1Config, Stage2Config,
                      RewardModelConfig, DPOConfig, PPOConfig, GRPOConfig, BenchmarkEvalConfig, LmPretrainConfig,
                      Stage1AblationConfig)  # fmt: skip
    for cls in recipe_configs:
        known |= {f.name for f in dataclasses.fields(cls)} | set(getattr(cls, "ALIASES", {}))
    parsers = [build_parser(), launch_command_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            known |= {o.lstrip("-") for o in action.option_strings if o.startswith("--")}
            if isinstance(action, argparse._SubParsersAction):  # vlmkit generate / eval / pipeline ...
                parsers += list(action.choices.values())
    return known


def test_every_flag_named_in_the_source_exists():
    known = _known_flags()
    assert {
        "allow_outside_media_root",
        "image_folder",
        "only",
        "config_file",
    } <= known  # the parsers were read
    unknown = [
        f"{path.relative_to(ROOT)}:{line}: --{flag}"
        for path in [
            *sorted(ROOT.joinpath("vlmkit").rglob("*.py")),
            *sorted(ROOT.joinpath("recipes").glob("*.py")),
        ]
        for line, text in _strings(path)
        for flag in FLAG.findall(text) + WORD_HINT.findall(text)
        if flag not in known
    ]
    assert not unknown, "messages name flags that no parser has:\n" + "\n".join(unknown)


def test_the_check_finds_a_made_up_flag(tmp_path):
    fake = tmp_path / "m.py"
    fake.write_text('raise ValueError("bad path; set --allow_outside_root true, or raise max_widgets")\n')
    found = [flag for _, text in _strings(fake) for flag in FLAG.findall(text) + WORD_HINT.findall(text)]
    assert found == ["allow_outside_root", "max_widgets"]
    assert not set(found) & _known_flags()
