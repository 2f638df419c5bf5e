"""The pipeline file: which recipes run, in which order, fed by which earlier stage."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vlmkit.config.parser import ConfigError, load_yaml

_REF = re.compile(r"\{([A-Za-z0-9_]+)\}")
STAGE_KEYS = {"name", "recipe", "config", "args", "enabled", "headline", "chance", "group"}


@dataclass
class StageSpec:
    """One stage: `recipes/<recipe>.py --config <config>` plus `args` overrides.

    Values in `args` may reference an earlier stage's output directory as `{stage_name}`.
    """

    name: str
    recipe: str
    config: str
    args: dict = field(default_factory=dict)
    enabled: bool = True
    headline: str | None = None  # the metric shown in summaries, e.g. eval_accuracy
    chance: float | None = None  # its chance level, shown next to it
    group: str = "image"

    def parents(self) -> list[str]:
        return sorted({m for v in self.args.values() for m in _REF.findall(str(v))})


@dataclass
class PipelineSpec:
    output_dir: str
    stages: list[StageSpec]
    recipes_dir: str = "recipes"
    seed: int | None = None
    source: str = ""

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"no stage named '{name}'; stages: {', '.join(s.name for s in self.stages)}")


def load_pipeline(path: str) -> PipelineSpec:
    """Read and validate a pipeline YAML (unknown keys, duplicate names and forward references are errors)."""
    data = load_yaml(path)
    valid_top = {"output_dir", "stages", "recipes_dir", "seed"}
    for key in data:
        if key not in valid_top:
            raise ConfigError(f"{path}: unknown key '{key}'; valid: {', '.join(sorted(valid_top))}")
    if not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError(f"{path}: 'stages' must be a non-empty list")
    stages, seen = [], set()
    for i, raw in enumerate(data["stages"]):
        unknown = set(raw) - STAGE_KEYS
        if unknown:
            raise ConfigError(
                f"{path}: stage {i}: unknown keys {sorted(unknown)}; valid: {sorted(STAGE_KEYS)}"
            )
        for key in ("name", "recipe", "config"):
            if key not in raw:
                raise ConfigError(f"{path}: stage {i}: missing '{key}'")
        stage = StageSpec(**raw)
        if stage.name in seen:
            raise ConfigError(f"{path}: stage name '{stage.name}' appears twice")
        for parent in stage.parents():
            if parent not in seen:
                raise ConfigError(f"{path}: stage '{stage.name}' uses '{{{parent}}}' before that stage runs")
        seen.add(stage.name)
        stages.append(stage)
    return PipelineSpec(
        output_dir=data.get("output_dir", "outputs/pipeline"),
        stages=stages,
        recipes_dir=data.get("recipes_dir", "recipes"),
        seed=data.get("seed"),
        source=str(path),
    )


def stage_argv(spec: PipelineSpec, stage: StageSpec, root: Path) -> list[str]:
    """Command-line arguments of a stage's recipe, with `{stage}` references resolved to directories."""
    argv = ["--config", stage.config, "--output_dir", str(root / stage.name)]
    if spec.seed is not None:
        argv += ["--seed", str(spec.seed)]
    for key, value in stage.args.items():
        text = _REF.sub(lambda m: str(root / m.group(1)), str(value))
        argv += [f"--{key}", text]
    return argv


def stage_fingerprint(spec: PipelineSpec, stage: StageSpec, root: Path, parent_prints: dict[str, str]) -> str:
    """Hash of what determines a stage's result: recipe source, config file, arguments, parents."""
    recipe = Path(spec.recipes_dir) / f"{stage.recipe}.py"
    parts = {
        "recipe": recipe.read_text() if recipe.is_file() else stage.recipe,
        "config": Path(stage.config).read_text() if Path(stage.config).is_file() else stage.config,
        "argv": stage_argv(spec, stage, root),
        "parents": {p: parent_prints.get(p) for p in stage.parents()},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
