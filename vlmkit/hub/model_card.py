"""Model cards (README.md with Hub YAML front matter) for every stage's output directory.

The card records what was trained on what (data fingerprint), where it came from (stage lineage) and how well it
did (held-out metrics). Everything rendered passes through `scrub_secrets`, so a Hub token that slipped into a
config value or a usage snippet never reaches the card.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{20,}")
_TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_REDACTED = "<redacted>"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

DEFAULT_TAGS: tuple[str, ...] = ("vlmkit", "multimodal")

DEFAULT_LIMITATIONS = (
    "- This model inherits the limitations and biases of its base encoder, base language model and training data.\n"
    "- Metrics above are measured on the held-out split described under *Training data*; they say little about\n"
    "  performance on other domains.\n"
    "- The model can produce confident but wrong answers about images or audio; do not use it for decisions that\n"
    "  affect people without human review."
)


def scrub_secrets(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Replace Hub tokens (`hf_...`), the values of HF_TOKEN / HUGGING_FACE_HUB_TOKEN and `secrets` in `text`."""
    values = [os.environ.get(name) for name in _TOKEN_ENV_VARS] + list(secrets)
    # Longest first, so a secret that contains another one is removed whole.
    for value in sorted({v.strip() for v in values if v and v.strip()}, key=len, reverse=True):
        text = text.replace(value, _REDACTED)
    return _HF_TOKEN_RE.sub(_REDACTED, text)


def _hub_ids(*names: str | None) -> list[str]:
    """The names that look like Hub repo ids (not local paths, not free text), in order, without duplicates."""
    ids: list[str] = []
    for name in names:
        if name and _HUB_ID_RE.match(name) and not Path(name).exists() and name not in ids:
            ids.append(name)
    return ids


def _cell(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _front_matter(
    *,
    license: str,
    tags: Sequence[str],
    stage: str,
    base_models: list[str],
    is_adapter: bool,
    pipeline_tag: str | None,
    library_name: str | None = None,
) -> str:
    meta: dict[str, object] = {
        "library_name": library_name or ("peft" if is_adapter else "vlmkit"),
        "license": license,
        "tags": list(dict.fromkeys([*tags, stage] + (["lora"] if is_adapter else []))),
    }
    if base_models:
        meta["base_model"] = base_models[0] if len(base_models) == 1 else base_models
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _data_section(data: Mapping[str, object]) -> str:
    fingerprint = data.get("fingerprint")
    lines = [
        f"- **Data fingerprint:** `{fingerprint}`" if fingerprint else "- **Data fingerprint:** not recorded"
    ]
    lines += [f"- **{key}:** {_cell(value)}" for key, value in data.items() if key != "fingerprint"]
    return "\n".join(lines)


def _lineage_section(lineage: Sequence[Mapping[str, object]]) -> str:
    if not lineage:
        return "This is the first stage of its chain (no parent checkpoint)."
    lines = []
    for i, step in enumerate(lineage, start=1):
        stage = step.get("stage", "?")
        where = step.get("checkpoint") or step.get("output_dir") or step.get("model_name_or_path")
        rest = ", ".join(
            f"{k}={_cell(v)}"
            for k, v in step.items()
            if k not in ("stage", "checkpoint", "output_dir", "model_name_or_path")
        )
        line = f"{i}. **{stage}**" + (f" — `{where}`" if where else "") + (f" ({rest})" if rest else "")
        lines.append(line)
    return "\n".join(lines)


def _metrics_section(metrics: Mapping[str, object]) -> str:
    if not metrics:
        return "No held-out metrics were recorded for this run."
    rows = [f"| {_cell(name)} | {_cell(value)} |" for name, value in metrics.items()]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def render_model_card(
    *,
    title: str,
    base_encoder: str,
    base_language_model: str,
    connector: str,
    stage: str,
    parent_checkpoint: str | None,
    data: Mapping[str, object],
    metrics: Mapping[str, object],
    lineage: Sequence[Mapping[str, object]],
    usage: str,
    license: str = "apache-2.0",
    tags: Sequence[str] = DEFAULT_TAGS,
    is_adapter: bool = False,
    pipeline_tag: str | None = None,
    limitations: str = DEFAULT_LIMITATIONS,
    library_name: str | None = None,
) -> str:
    """Return a README.md model card: YAML front matter, then description, data, lineage, metrics, usage, limits.

    `data` should carry a `fingerprint` key; `lineage` is the stage chain oldest first, each a dict with `stage`
    and `checkpoint` (other keys are listed); `usage` is a Python snippet; `is_adapter` sets `library_name: peft`
    (else `library_name`, default vlmkit).
    """
    # A PEFT adapter applies to the language model only; a full model derives from both bases.
    base_models = _hub_ids(base_language_model) if is_adapter else _hub_ids(base_language_model, base_encoder)
    parts = [
        _front_matter(
            license=license,
            tags=tags,
            stage=stage,
            base_models=base_models,
            is_adapter=is_adapter,
            pipeline_tag=pipeline_tag,
            library_name=library_name,
        ),
        f"# {title}\n",
        "## Model description\n",
        f"A multimodal model trained with vlmkit, stage `{stage}`: "
        "encoder → connector → causal language model.\n",
        "| component | value |\n|---|---|\n"
        f"| encoder | `{_cell(base_encoder)}` |\n"
        f"| connector | `{_cell(connector)}` |\n"
        f"| language model | `{_cell(base_language_model)}` |\n"
        f"| stage | `{_cell(stage)}` |\n"
        f"| parent checkpoint | `{_cell(parent_checkpoint or 'none')}` |\n"
        f"| weights | {'PEFT adapter' if is_adapter else 'full model'} |\n",
        "## Training data\n",
        _data_section(data) + "\n",
        "## Lineage\n",
        _lineage_section(lineage) + "\n",
        "## Metrics\n",
        _metrics_section(metrics) + "\n",
        "## How to load\n",
        f"```python\n{usage.strip()}\n```\n",
        "## Limitations\n",
        limitations.strip() + "\n",
    ]
    return scrub_secrets("\n".join(parts))


def write_model_card(output_dir: str | os.PathLike, **kwargs) -> Path:
    """Render a model card (`render_model_card` keyword arguments) and write it to `output_dir/README.md`."""
    out = Path(output_dir)
    if not out.is_dir():
        raise FileNotFoundError(
            f"Model card output directory {out} does not exist; save the model there first."
        )
    path = out / "README.md"
    tmp = out / ".README.md.tmp"
    tmp.write_text(render_model_card(**kwargs), encoding="utf-8")
    os.replace(tmp, path)
    return path
