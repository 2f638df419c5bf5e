"""A sub-second harness for `vlmkit.training.loop.train`: linear regression through the real loop.

Not a test module: `from tests.helpers import tiny_loop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vlmkit.config.args import EpochArgs, OptimArgs, RunArgs
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.loop import TrainResult, train


@dataclass
class LoopConfig(OptimArgs, EpochArgs, RunArgs):
    """RunArgs + EpochArgs + OptimArgs, as the recipe configs of the shared loop have them."""


def config(out: Path, **overrides) -> LoopConfig:
    values = dict(
        output_dir=str(out), max_steps=6, save_steps=2, save_total_limit=3, logging_steps=1,
        per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=0.05,
        warmup_ratio=0.0, lr_scheduler_type="cosine", mixed_precision="no", report_to=["none"], seed=3,
    )  # fmt: skip
    values.update(overrides)
    return LoopConfig(**values)


def dataset(n: int = 24, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.5, -2.0, 0.5]) + 0.3
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def collate(items: list[dict]) -> dict:
    return {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items])}


def mse_sum(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Summed squared error; the loop divides by the number of rows in the optimizer step."""
    return ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum(), {}


def count_rows(batch: dict) -> int:
    return len(batch["x"])


def run(cfg: LoopConfig, compute_loss=mse_sum, extra_state: dict | None = None) -> TrainResult:
    """Train a fresh (seeded) linear model with `cfg`; returns the TrainResult."""
    torch.manual_seed(cfg.seed)
    model = torch.nn.Linear(3, 1)
    accelerator = make_accelerator(
        output_dir=cfg.output_dir, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision, report_to=cfg.report_to,
    )  # fmt: skip
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    return train(
        cfg, accelerator, model, dataset(), collate, compute_loss, count_rows, extra_state=extra_state
    )


def weights(result: TrainResult) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}
