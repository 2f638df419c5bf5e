"""Session-wide test setup: private caches, no network, and the shared digits data and checkpoints.

Every test session builds the tiny models and the embedded digits into its own temporary directory, so the
tests never read or write ~/.cache and never depend on the caller's VLMKIT_* variables.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: OpenMP threads that spin while waiting starve the other worker's (two 2-thread
    # trainings on 2 cores ran ~10x slower). Set before torch loads; results do not depend on it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
RECIPES = REPO / "recipes"
CONFIGS = RECIPES / "configs"


# Fixtures that cost a training run: under `pytest -n 2 --dist loadgroup` (the README's full-suite command) every
# test file that uses one of them, with the files it shares one with, runs on one worker so each is built once.
# The pipeline's group, by far the longest, is handed out first.
SHARED_RUNS = (
    "pipeline_run", "weak_image_policy", "trained_stage2", "stage1_checkpoint", "stage2_baseline", "deepspeed_ops",
)  # fmt: skip
FIRST_GROUP = "pipeline_run"


def worker_groups(files_to_fixtures: dict[str, set[str]]) -> dict[str, str]:
    """{test file: group name}: files joined when they share an expensive fixture (union-find); a group is named
    by its smallest member, so every worker names it alike."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for path, fixtures in files_to_fixtures.items():
        for name in fixtures & set(SHARED_RUNS):
            parent[find(path)] = find(name)
    members: dict[str, list[str]] = defaultdict(list)
    for x in list(parent) + list(files_to_fixtures):
        members[find(x)].append(x)
    return {path: min(members[find(path)]) for path in files_to_fixtures}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark each test with its worker group (xdist's `xdist_group`), the pipeline's group first."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # serial run, or xdist's controller (it reads the marks)
        return
    fixtures: dict[str, set[str]] = defaultdict(set)
    for item in items:
        fixtures[item.nodeid.split("::")[0]].update(getattr(item, "fixturenames", ()))
    groups = worker_groups(fixtures)
    first = groups.get(next((p for p in fixtures if FIRST_GROUP in fixtures[p]), ""), FIRST_GROUP)
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid.split("::")[0]]))
    items.sort(key=lambda item: groups[item.nodeid.split("::")[0]] != first)  # stable: order kept


@pytest.fixture(scope="session", autouse=True)
def vlmkit_session_env(tmp_path_factory):
    """VLMKIT_TINY_DIR / VLMKIT_DATA_DIR under one session temp dir; Hub offline; quiet tokenizers."""
    root = tmp_path_factory.mktemp("vlmkit_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMKIT_TINY_DIR", str(root / "tiny"))
        mp.setenv("VLMKIT_DATA_DIR", str(root / "data"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TOKENIZERS_PARALLELISM", "false")
        # huggingface_hub reads HF_HUB_OFFLINE when it is imported, which may have happened already.
        from huggingface_hub import constants

        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        yield root


@pytest.fixture(scope="session")
def digits_data(vlmkit_session_env) -> Path:
    """The embedded digits dataset, built once per session; returns its root directory."""
    from vlmkit.data.embedded import build_embedded

    return build_embedded("digits")


def load_recipe(name: str) -> ModuleType:
    """Import `recipes/<name>.py` as a module (recipes are scripts, not a package)."""
    module_name = f"vlmkit_recipe_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def recipe():
    """`recipe("llava_stage2").main(argv)` runs a recipe in this process."""
    return load_recipe


STAGE1_STEPS = 30
# The fixtures below keep the stage 1 they were calibrated on: the random-init tiny LLM and the original
# connector settings, not the shipped config's text-pretrained LLM (which needs an lm_pretrain run first).
PINNED_STAGE1 = [
    "--language_model", "vlmkit-tiny/llama", "--connector_downsample", "1", "--learning_rate", "2e-3",
    "--max_new_tokens", "8",
]  # fmt: skip


@pytest.fixture(scope="session")
def stage1_checkpoint(digits_data, tmp_path_factory) -> Path:
    """A short stage-1 run on the embedded digits (the digits config, fewer steps); its output directory.

    Other tests calibrate against this exact run: keep it stable.
    """
    out = tmp_path_factory.mktemp("stage1")
    config = str(CONFIGS / "digits_llava_stage1.yaml")
    argv = ["--config", config, "--output_dir", str(out), "--max_steps", str(STAGE1_STEPS), *PINNED_STAGE1]
    load_recipe("llava_stage1").main([*argv, "--report_to", "none"])
    return out


# The digits recipes made fast enough for a test: the connector stacks an image's 16 patch features into one
# LLM token (set in stage 1, where the connector is built), which the tiny random-init LLM learns to read ~3x
# faster than 16 tokens; then 300 steps of 32 reach ~95% held-out (the shipped stage 2 runs 1500 steps of 16).
FAST_STAGE1 = ["--connector_downsample", "16", "--max_steps", "30"]
FAST_STAGE2 = ["--per_device_train_batch_size", "32", "--learning_rate", "3e-3", "--max_steps", "300"]


@pytest.fixture(scope="session")
def trained_stage2(digits_data, tmp_path_factory) -> tuple[Path, Path]:
    """(stage 1, stage 2) output directories of the fast digits chain above; stage 2 answers ~95% held out."""
    root = tmp_path_factory.mktemp("trained")
    stage1, stage2 = root / "stage1", root / "stage2"
    load_recipe("llava_stage1").main(
        ["--config", str(CONFIGS / "digits_llava_stage1.yaml"), "--output_dir", str(stage1),
         "--report_to", "none", *PINNED_STAGE1, *FAST_STAGE1]
    )  # fmt: skip
    load_recipe("llava_stage2").main(
        ["--config", str(CONFIGS / "digits_llava_stage2.yaml"), "--model_name_or_path", str(stage1),
         "--output_dir", str(stage2), "--report_to", "none", *FAST_STAGE2]
    )  # fmt: skip
    return stage1, stage2


WEAK_STAGE2_STEPS = 300  # held-out accuracy about 0.4 (the full digits config reaches > 0.9)


@pytest.fixture(scope="session")
def weak_image_policy(digits_data, tmp_path_factory) -> Path:
    """Stage 2 from tiny parts, stopped early on purpose: room for PPO, GRPO and DPO to improve it (one weak
    policy for all three, so their tests compare like with like)."""
    out = tmp_path_factory.mktemp("weak_stage2")
    load_recipe("llava_stage2").main(
        ["--config", str(CONFIGS / "digits_llava_stage2.yaml"), "--model_name_or_path", "none",
         "--vision_tower", "vlmkit-tiny/clip-vision", "--language_model", "vlmkit-tiny/llama",
         "--data_path", "vlmkit-data/digits/stage2_train.json", "--eval_data_path", "none",
         "--output_dir", str(out), "--max_steps", str(WEAK_STAGE2_STEPS), "--report_to", "none"]
    )  # fmt: skip
    return out
