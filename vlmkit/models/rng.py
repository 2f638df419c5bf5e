"""Loading pretrained weights under DeepSpeed ZeRO-3 leaves the global random state as it was.

`from_pretrained` normally draws no random numbers, but under ZeRO-3 (`zero3_init_flag`) it builds each model
inside `zero.Init`, which initialises every weight randomly before the checkpoint overwrites it. Without this
guard the parts created after loading (a fresh connector, a score head, LoRA matrices) would start from other
values under ZeRO-3 than in a single-process or DDP run with the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def rng_untouched() -> Iterator[None]:
    """Under ZeRO-3, restore the CPU (and current CUDA device's) random state when the block ends; elsewhere
    a no-op, so runs without ZeRO-3 draw exactly the random numbers they always did."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield
