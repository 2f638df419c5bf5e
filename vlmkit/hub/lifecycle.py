"""The Hub steps of a recipe: check access before training, write the model card, push at the end.

`vlmkit.training.run.Run` takes them from the recipe (`hub=HUB`, `card=vlm_card(...)` or `encoder_card(...)`), so
the training layer never imports this one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlmkit.hub.model_card import DEFAULT_TAGS, write_model_card

logger = logging.getLogger(__name__)


def maybe_check_hub(cfg) -> None:
    """With --push_to_hub, fail in seconds (offline, no token, unreachable) before anything trains."""
    if not getattr(cfg, "push_to_hub", False):
        return
    if not cfg.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/vlmkit-digits)")
    from vlmkit.hub.push import check_hub_access

    check_hub_access(cfg.hub_model_id, endpoint=os.environ.get("HF_ENDPOINT"))


def maybe_push(cfg, out_dir: Path) -> str | None:
    """Upload the output directory (model card included) when --push_to_hub is set."""
    if not getattr(cfg, "push_to_hub", False):
        return None
    from vlmkit.hub.push import push_to_hub

    url = push_to_hub(
        out_dir, cfg.hub_model_id, private=cfg.hub_private, endpoint=os.environ.get("HF_ENDPOINT")
    )
    logger.info("pushed %s to %s", out_dir, url)
    return url


class HubPublisher:
    """The Hub steps a `Run` takes: `check` before anything loads, `push` after the model card is written."""

    def check(self, cfg) -> None:
        maybe_check_hub(cfg)

    def push(self, cfg, out_dir: Path) -> str | None:
        return maybe_push(cfg, out_dir)


HUB = HubPublisher()


def file_fingerprint(path: str | None) -> str | None:
    """sha256 (first 16 hex digits) of a data file, for lineage."""
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def data_summary(cfg) -> dict:
    """The data a run used, with fingerprints (paths resolved as the run resolved them)."""
    from vlmkit.data.embedded import resolve_data_path

    summary = {}
    for key in ("data_path", "eval_data_path"):
        value = getattr(cfg, key, None)
        if value:
            resolved = resolve_data_path(value)
            summary[key] = value
            summary[f"{key}_sha256"] = file_fingerprint(resolved)
    return summary


USAGE = """```python
from vlmkit.models.build import load_vlm
from vlmkit.eval.answers import generate_answers

model, processor = load_vlm("{path}")
```
Command line: `vlmkit generate {path} --image example.png --prompt "What digit is this?"`"""


def write_vlm_card(out_dir: Path, cfg, model, metrics: dict, *, stage: str, usage: str | None = None) -> Path:
    """Model card for a VLM checkpoint: bases, connector, data, lineage, metrics and how to load it.

    `usage` replaces the default loading snippet; `{path}` in it becomes the repository or directory.
    """
    config = model.config
    lineage = list(config.lineage) + [{"stage": stage, "output_dir": str(Path(out_dir).resolve())}]
    name = cfg.hub_model_id or Path(out_dir).name
    return write_model_card(
        out_dir,
        title=f"{name} ({stage})",
        base_encoder=config.encoder_name_or_path or "",
        base_language_model=config.language_model_name_or_path or "",
        connector=config.connector,
        stage=stage,
        parent_checkpoint=getattr(cfg, "model_name_or_path", None),
        data=data_summary(cfg),
        metrics=metrics,
        lineage=lineage,
        usage=(usage or USAGE).format(path=cfg.hub_model_id or out_dir),
        is_adapter=model.is_peft,
    )


NATIVE_USAGE = """from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained("{path}")
processor = AutoProcessor.from_pretrained("{path}")"""
NATIVE_ADAPTER_USAGE = """from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

base = AutoModelForImageTextToText.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{path}")  # the LoRA adapter and the connector trained in full
processor = AutoProcessor.from_pretrained("{path}")"""


def write_native_card(out_dir: Path, cfg, model, metrics: dict, *, stage: str) -> Path:
    """Model card for a native transformers VLM (full model or LoRA adapter on `cfg.model_name_or_path`):
    `base_model`, `library_name` (peft for adapters), `pipeline_tag: image-text-to-text`, data, metrics."""
    from vlmkit.training.native_parts import native_parts

    is_adapter = hasattr(model, "peft_config")
    base = model.get_base_model() if is_adapter else model
    name = cfg.hub_model_id or Path(out_dir).name
    path = cfg.hub_model_id or out_dir
    usage = (NATIVE_ADAPTER_USAGE if is_adapter else NATIVE_USAGE).format(
        base=cfg.model_name_or_path, path=path
    )
    return write_model_card(
        out_dir, title=f"{name} ({stage})", base_encoder=f"{base.config.model_type} vision tower",
        base_language_model=cfg.model_name_or_path, connector=native_parts(base).connector, stage=stage,
        parent_checkpoint=cfg.model_name_or_path, data=data_summary(cfg), metrics=metrics,
        lineage=[{"stage": stage, "model_name_or_path": cfg.model_name_or_path,
                  "output_dir": str(Path(out_dir).resolve())}],
        usage=usage, tags=(*DEFAULT_TAGS, base.config.model_type), is_adapter=is_adapter,
        pipeline_tag="image-text-to-text", library_name=None if is_adapter else "transformers",
    )  # fmt: skip


def vlm_card(cfg, model, *, stage: str, usage: str | None = None) -> Callable[[Path, dict], Path]:
    """The `card` of a VLM run for `Run.finish`: `write_vlm_card` (composite) or `write_native_card` with the
    final metrics."""
    from vlmkit.training.vlm_kinds import NATIVE, kind_of_model

    if kind_of_model(model) is NATIVE:
        return lambda out_dir, metrics: write_native_card(out_dir, cfg, model, metrics, stage=stage)
    return lambda out_dir, metrics: write_vlm_card(out_dir, cfg, model, metrics, stage=stage, usage=usage)


@dataclass(frozen=True)
class EncoderCard:
    """What the model cards of the stage-0 encoder runs (CLIP, MAE, wav2vec2) say differently."""

    title: str  # after the run's name, e.g. "stage 0 CLIP"
    stage: str
    new_model: str  # the base encoder when training from scratch
    usage: str  # `{path}` becomes the repository or directory
    pipeline_tag: str
    base_language_model: str = "none"
    connector: str = "none"
    tags: tuple[str, ...] = DEFAULT_TAGS


def encoder_card(cfg, spec: EncoderCard) -> Callable[[Path, dict], Path]:
    """The `card` of a stage-0 encoder run for `Run.finish`."""

    def write(out_dir: Path, metrics: dict) -> Path:
        out_dir = Path(out_dir)
        return write_model_card(
            out_dir, title=f"{cfg.hub_model_id or out_dir.name} ({spec.title})",
            base_encoder=cfg.model_name_or_path or spec.new_model, base_language_model=spec.base_language_model,
            connector=spec.connector, stage=spec.stage, parent_checkpoint=cfg.model_name_or_path,
            data=data_summary(cfg), metrics=metrics,
            lineage=[{"stage": spec.stage, "output_dir": str(out_dir.resolve())}],
            usage=spec.usage.format(path=cfg.hub_model_id or out_dir), tags=spec.tags,
            pipeline_tag=spec.pipeline_tag,
        )  # fmt: skip

    return write


def causal_lm_card(cfg, usage: str) -> Callable[[Path, dict], Path]:
    """The `card` of a text stage-0 run (causal LM pretraining) for `Run.finish`."""

    def write(out_dir: Path, metrics: dict) -> Path:
        out_dir = Path(out_dir)
        return write_model_card(
            out_dir, title=f"{cfg.hub_model_id or out_dir.name} (stage 0 causal LM)", base_encoder="none",
            base_language_model=cfg.model_name_or_path or f"new, config of {cfg.config_name}", connector="none",
            stage="stage 0 (causal LM pretraining)", parent_checkpoint=cfg.model_name_or_path,
            data=data_summary(cfg), metrics=metrics,
            lineage=[{"stage": "stage 0 (causal LM)", "output_dir": str(out_dir.resolve())}],
            usage=usage.format(path=cfg.hub_model_id or out_dir), tags=("vlmkit", "causal-lm", "text"),
            pipeline_tag="text-generation",
        )  # fmt: skip

    return write
