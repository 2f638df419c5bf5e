"""Every recipe closes through `vlmkit.training.run.Run`, so the closing block cannot drift again: no recipe
evaluates an unwrapped model itself (a hang under ZeRO-3/FSDP), writes metrics or cards, or pushes by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

# recipes/eval.py and recipes/stage1_ablation.py train no model of their own (nothing to save, no card, no push;
# the ablation's runs are stage-2 recipe runs): they write metrics.json through the same finish_run, without a Run.
WITHOUT_A_MODEL = ("eval", "stage1_ablation")
RECIPES = sorted(
    p for p in (Path(__file__).resolve().parents[2] / "recipes").glob("*.py") if p.stem not in WITHOUT_A_MODEL
)
HAND_MADE = (
    "unwrap_model(",
    "finish_run(",
    "end_run(",
    "write_model_card(",
    "write_vlm_card(",
    "maybe_push(",
)


def test_every_recipe_is_covered():
    names = {p.stem for p in RECIPES}
    assert {"llava_stage1", "llava_stage2", "reward_model", "dpo", "ppo", "clip_pretrain"} <= names
    assert {"mae_pretrain", "wav2vec2_pretrain", "grpo"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_opens_and_closes_through_run(path: Path):
    source = path.read_text()
    assert f'Run(cfg, "{path.stem}", hub=HUB)' in source
    assert "return run.finish(metrics, card=" in source
    assert [name for name in HAND_MADE if name in source] == []
    assert len(source.splitlines()) < 200


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.py")), ids=lambda p: p.stem
)
def test_recipe_imports(path: Path, recipe):
    assert callable(recipe(path.stem).main)
