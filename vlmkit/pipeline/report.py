"""The pipeline report: report.md and a self-contained report.html (plots and thumbnails embedded)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from vlmkit.pipeline.reward_hacking import PLOT_FILE as PROXY_PLOT_FILE
from vlmkit.pipeline.reward_hacking import plot_proxy_vs_gold
from vlmkit.pipeline.spec import PipelineSpec, StageSpec
from vlmkit.training.reporting import METRICS_FILE, PLOT_FILE

EXAMPLE_FILES = ("eval_examples.json",)
MAX_EXAMPLES = 6


def _b64_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _thumbnail(media: str | None) -> str | None:
    """A 96x96 PNG data URI of an image file (None for audio or missing files)."""
    if not media or not Path(media).is_file() or not media.lower().endswith((".png", ".jpg", ".jpeg")):
        return None
    from PIL import Image

    with Image.open(media) as img:
        thumb = img.convert("RGB").resize((96, 96), Image.NEAREST)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _stage_facts(stage: StageSpec, stage_dir: Path) -> dict:
    metrics = (
        json.loads((stage_dir / METRICS_FILE).read_text()) if (stage_dir / METRICS_FILE).is_file() else {}
    )
    marker = stage_dir / "pipeline_stage.json"
    wall = json.loads(marker.read_text()).get("wall_seconds") if marker.is_file() else None
    head = stage.headline or next((k for k in sorted(metrics) if k.startswith("eval_")), None)
    examples = []
    for name in EXAMPLE_FILES:
        if (stage_dir / name).is_file():
            examples = json.loads((stage_dir / name).read_text())[:MAX_EXAMPLES]
    return {
        "metrics": metrics,
        "headline": head,
        "value": metrics.get(head) if head else None,
        "before": metrics.get(f"{head}_before") if head else None,  # PPO/DPO: the starting policy's value
        "wall": wall,
        "peak_mb": metrics.get("peak_memory_mb"),
        "config": (stage_dir / "config.yaml").read_text() if (stage_dir / "config.yaml").is_file() else "",
        "plot": stage_dir / PLOT_FILE if (stage_dir / PLOT_FILE).is_file() else None,
        # RL stages that log gold accuracy beside their proxy reward: both per step (reward hacking shows).
        "proxy_plot": plot_proxy_vs_gold(
            stage_dir / "train_log.jsonl",
            stage_dir / PROXY_PLOT_FILE,
            f"{stage.name}: proxy reward vs gold accuracy",
        ),
        "examples": examples,
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "—" if value is None else str(value)


def _whole(value) -> str:
    return f"{value:.0f}" if isinstance(value, (int, float)) else "—"


def _headline(facts: dict) -> str:
    """The headline value, as `before → after` when the stage started from a measured policy."""
    value = _fmt(facts["value"])
    return f"{_fmt(facts['before'])} → {value}" if facts.get("before") is not None else value


RL_RECIPES = ("ppo", "grpo", "dpo")
RL_COLUMNS = (
    "stage", "method", "eval_accuracy", "SFT baseline (matched)", "RL − SFT (95% CI)", "beats SFT?",
    "eval_kl", "samples used", "wall time (s)",
)  # fmt: skip
Z_95 = 1.96


def _over_baseline(m: dict) -> tuple[str, str]:
    """(RL's accuracy gain over its compute-matched SFT baseline ± the 95% half-width, verdict) or dashes."""
    gain = m.get("baseline_accuracy_rl_minus_sft")
    if gain is None:
        return "—", "—"
    stderr = m.get("baseline_accuracy_rl_minus_sft_stderr", float("nan"))
    verdict = "yes" if m.get("baseline_beaten") else ("no (worse)" if gain < -Z_95 * stderr else "no")
    return f"{gain:+.3f} ± {Z_95 * stderr:.3f}", verdict


def rl_comparison(spec: PipelineSpec, facts: dict[str, dict]) -> list[list[str]]:
    """Rows comparing the RL stages (PPO, GRPO, DPO) side by side: accuracy before -> after, the compute-matched
    SFT baseline's accuracy and RL's paired gain over it (`vlmkit.rlhf.sft_baseline`), KL to the reference,
    completions sampled for training and wall time (which includes the baseline's training)."""
    rows = []
    for stage in spec.stages:
        f = facts.get(stage.name)
        if not f or stage.recipe not in RL_RECIPES:
            continue
        m = f["metrics"]
        accuracy = f"{_fmt(m.get('eval_accuracy_before'))} → {_fmt(m.get('eval_accuracy'))}"
        gain, verdict = _over_baseline(m)
        rows.append([stage.name, stage.recipe.upper(), accuracy, _fmt(m.get("baseline_eval_accuracy")), gain,
                     verdict, _fmt(m.get("eval_kl")), _whole(m.get("train_samples")), _whole(f["wall"])])  # fmt: skip
    return rows


def render_markdown(spec: PipelineSpec, root: Path, facts: dict[str, dict]) -> str:
    lines = ["# vlmkit pipeline report", "", f"Pipeline: `{spec.source}` · output: `{root}`", ""]
    lines += [
        "| stage | recipe | headline metric | value | chance | wall time (s) | peak memory (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in spec.stages:
        f = facts.get(stage.name)
        if f:
            row = [
                stage.name,
                stage.recipe,
                f["headline"] or "—",
                _headline(f),
                _fmt(stage.chance),
                _whole(f["wall"]),
                _whole(f["peak_mb"]),
            ]
            lines.append("| " + " | ".join(row) + " |")
    rl_rows = rl_comparison(spec, facts)
    if rl_rows:
        lines += [
            "",
            "## RL side by side",
            "",
            "| " + " | ".join(RL_COLUMNS) + " |",
            "|---" * len(RL_COLUMNS) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in rl_rows]
    for stage in spec.stages:
        f = facts.get(stage.name)
        if not f:
            continue
        lines += ["", f"## {stage.name} ({stage.recipe})", ""]
        lines += [f"- `{k}`: {_fmt(v)}" for k, v in sorted(f["metrics"].items())]
        if f["plot"]:
            lines += ["", f"![{stage.name} loss]({stage.name}/{PLOT_FILE})"]
        if f["proxy_plot"]:
            lines += ["", f"![{stage.name} proxy reward vs gold accuracy]({stage.name}/{PROXY_PLOT_FILE})"]
        if f["examples"]:
            before = any("answer_before" in ex for ex in f["examples"])
            head = "before | after" if before else "answer"
            lines += [
                "",
                f"| question | {head} | reference | correct |",
                "|---|---|---|---|" + "---|" * before,
            ]
            for ex in f["examples"]:
                q = ex.get("question", "").replace("\n", " ").replace("|", "\\|")
                was = f"{ex.get('answer_before', '')} | " if before else ""
                lines.append(
                    f"| {q} | {was}{ex.get('prediction', '')} | {ex.get('reference', '')} | {ex.get('correct', '')} |"
                )
        lines += [
            "",
            "<details><summary>config</summary>",
            "",
            "```yaml",
            f["config"].rstrip(),
            "```",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}.good{color:#176c2f;font-weight:600}.stage{border-top:2px solid #ddd;margin-top:2em}
img.plot{max-width:600px}img.thumb{width:64px;height:64px;image-rendering:pixelated}pre{background:#f7f7f7;padding:8px;overflow:auto}"""


def render_html(spec: PipelineSpec, root: Path, facts: dict[str, dict]) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>vlmkit pipeline report</title><style>{_CSS}</style></head><body>"
    ]
    parts.append(
        f"<h1>vlmkit pipeline report</h1><p>Pipeline <code>{e(spec.source)}</code>, output <code>{e(str(root))}</code></p>"
    )
    parts.append(
        "<table id='summary'><tr><th>stage</th><th>recipe</th><th>headline metric</th><th>value</th><th>chance</th><th>wall time (s)</th><th>peak memory (MB)</th></tr>"
    )
    for stage in spec.stages:
        f = facts.get(stage.name)
        if not f:
            continue
        good = stage.chance is not None and isinstance(f["value"], float) and f["value"] > stage.chance
        if isinstance(f.get("before"), float):  # an RL/DPO stage is good only when it improved on its start
            good = good and f["value"] > f["before"]
        cls = " class='good'" if good else ""
        parts.append(
            f"<tr><td>{e(stage.name)}</td><td>{e(stage.recipe)}</td><td>{e(f['headline'] or '—')}</td>"
            f"<td{cls}>{e(_headline(f))}</td><td>{_fmt(stage.chance)}</td><td>{_whole(f['wall'])}</td><td>{_whole(f['peak_mb'])}</td></tr>"
        )
    parts.append("</table>")
    rl_rows = rl_comparison(spec, facts)
    if rl_rows:
        head = "".join(f"<th>{e(c)}</th>" for c in RL_COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rl_rows)
        parts.append(f"<h2>RL side by side</h2><table id='rl'><tr>{head}</tr>{body}</table>")
    for stage in spec.stages:
        f = facts.get(stage.name)
        if not f:
            continue
        parts.append(
            f"<section class='stage' id='stage-{e(stage.name)}'><h2>{e(stage.name)} <small>({e(stage.recipe)})</small></h2>"
        )
        rows = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(f["metrics"].items()))
        parts.append(f"<table class='metrics'>{rows}</table>")
        if f["plot"]:
            parts.append(f"<img class='plot' alt='{e(stage.name)} loss curve' src='{_b64_png(f['plot'])}'>")
        if f["proxy_plot"]:
            parts.append(
                f"<img class='plot' alt='{e(stage.name)} proxy reward vs gold accuracy' "
                f"src='{_b64_png(f['proxy_plot'])}'>"
            )
        if f["examples"]:
            before = any("answer_before" in ex for ex in f["examples"])  # RL: the answer it started from
            head = "<th>before</th><th>after</th>" if before else "<th>answer</th>"
            parts.append(
                f"<table class='examples'><tr><th>input</th><th>question</th>{head}<th>reference</th></tr>"
            )
            for ex in f["examples"]:
                thumb = _thumbnail(ex.get("media"))
                img = (
                    f"<img class='thumb' alt='input' src='{thumb}'>"
                    if thumb
                    else e(Path(ex.get("media") or "").name)
                )
                mark = "✓" if ex.get("correct") else "✗"
                was = f"<td>{e(str(ex.get('answer_before', '')))}</td>" if before else ""
                parts.append(
                    f"<tr><td>{img}</td><td>{e(ex.get('question', ''))}</td>{was}<td>{e(str(ex.get('prediction', '')))} {mark}</td>"
                    f"<td>{e(str(ex.get('reference', '')))}</td></tr>"
                )
            parts.append("</table>")
        parts.append(
            f"<details><summary>config used</summary><pre>{e(f['config'])}</pre></details></section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(spec: PipelineSpec, root: Path) -> Path:
    """Write report.md and report.html for every stage that has output; returns the HTML path."""
    facts = {
        s.name: _stage_facts(s, root / s.name)
        for s in spec.stages
        if (root / s.name / METRICS_FILE).is_file()
    }
    (root / "report.md").write_text(render_markdown(spec, root, facts))
    out = root / "report.html"
    out.write_text(render_html(spec, root, facts))
    return out
