"""Config of the stage-1 ablation recipe (`recipes/stage1_ablation.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import RunArgs, _f


@dataclass
class Stage1AblationConfig(RunArgs):
    """Stage 2 from the stage-1 connector against stage 2 from a fresh connector (LLaVA's ablation)."""

    stage1: str | None = _f(None, "The stage-1 output directory (its encoder, language model and connector).")
    stage2_config: str = _f(
        "recipes/configs/digits_llava_stage2_weak.yaml", "The stage-2 config both arms train with."
    )
    seeds: list[int] = _f([1, 2, 3], "One run per arm and seed.")
    max_steps: int = _f(100, "Stage-2 optimizer steps of every run (a short budget).", ge=1)
    max_eval_samples: int = _f(0, "Held-out questions per run (0: all).", ge=0)
