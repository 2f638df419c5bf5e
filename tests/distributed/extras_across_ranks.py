"""Launched on 2 processes by test_logs_across_ranks.py: the real training loop on a tiny linear model whose loss
function logs extras that differ by rank; the main process's train_log.jsonl must hold their cross-rank values."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from vlmkit.config.args import EpochArgs, OptimArgs, RunArgs
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.loop import train


@dataclass
class LoopConfig(OptimArgs, EpochArgs, RunArgs):
    """RunArgs + EpochArgs + OptimArgs, as the recipe configs of the shared loop have them."""


def main(out: str) -> None:
    cfg = LoopConfig(
        output_dir=out, max_steps=3, logging_steps=1, per_device_train_batch_size=2, learning_rate=0.01,
        mixed_precision="no", report_to=["none"], seed=0,
    )  # fmt: skip
    accelerator = make_accelerator(output_dir=out, mixed_precision="no", report_to=["none"])
    rank = accelerator.process_index
    data = [{"x": torch.full((3,), float(i)), "y": torch.tensor(float(i))} for i in range(16)]

    def collate(items):
        return {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items])}

    def loss_with_rank_extras(model, batch):
        loss = ((model(batch["x"]).squeeze(-1) - batch["y"]) ** 2).sum()
        extras = {"rank_accuracy": float(rank), "pairs_count": 1.0 + rank}  # mean -> 0.5, sum -> 3.0
        if rank == 1:
            extras["rank1_only"] = 7.0  # logged by one process only: its own value, not halved
        return loss, extras

    train(
        cfg, accelerator, torch.nn.Linear(3, 1), data, collate, loss_with_rank_extras, lambda b: len(b["x"])
    )
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
