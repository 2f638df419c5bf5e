"""What a run leaves behind: train_log.jsonl, loss.png and metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

LOG_FILE = "train_log.jsonl"
METRICS_FILE = "metrics.json"
PLOT_FILE = "loss.png"


class JsonlLog:
    """Append-only step log; on resume, lines after the resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short when the run was killed
            self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(
    log_path: Path, out_path: Path, title: str = "training loss", keys: tuple[str, ...] = ("loss",)
) -> None:
    """Plot the logged curves (loss by default) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("optimizer step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(keys) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)


def write_metrics(output_dir: Path, metrics: dict) -> dict:
    """Write metrics.json: a flat object; held-out metrics are named eval_*."""
    flat = {
        k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
        for k, v in metrics.items()
    }
    (Path(output_dir) / METRICS_FILE).write_text(json.dumps(flat, indent=2, sort_keys=True))
    return flat
