"""Proxy reward against gold accuracy per RL step, the plot that shows reward hacking.

PPO optimises a proxy (the reward model's score, `score_mean` in train_log.jsonl) and measures, without rewarding
it, the gold accuracy of the same sampled answers (`gold_accuracy`). While the reward model is right, both rise
together; a policy that finds the reward model's blind spots drives the proxy up and the gold accuracy down.
"""

from __future__ import annotations

import math
from pathlib import Path

from vlmkit.training.reporting import read_log

PROXY_KEY = "score_mean"
GOLD_KEY = "gold_accuracy"
PLOT_FILE = "proxy_vs_gold.png"


def proxy_and_gold(log_path: Path) -> list[tuple[int, float, float]]:
    """(step, proxy score, gold accuracy) of every logged step that has both (finite)."""
    points = []
    for record in read_log(log_path):
        proxy, gold = record.get(PROXY_KEY), record.get(GOLD_KEY)
        numbers = isinstance(proxy, (int, float)) and isinstance(gold, (int, float))
        if numbers and math.isfinite(proxy) and math.isfinite(gold):
            points.append((int(record["step"]), float(proxy), float(gold)))
    return points


def plot_proxy_vs_gold(log_path: Path, out_path: Path, title: str) -> Path | None:
    """Both curves against the step, on their own axes (the proxy in the reward's units, gold in [0, 1]);
    None when the log has no step with both."""
    points = proxy_and_gold(log_path)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, proxy, gold = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    (proxy_line,) = ax.plot(steps, proxy, color="tab:blue", label=f"proxy reward ({PROXY_KEY})")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("proxy reward", color="tab:blue")
    gold_ax = ax.twinx()
    (gold_line,) = gold_ax.plot(steps, gold, color="tab:green", label=f"gold accuracy ({GOLD_KEY})")
    gold_ax.set_ylabel("gold accuracy of the rollouts", color="tab:green")
    gold_ax.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    gold_ax.legend(handles=[proxy_line, gold_line], loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
