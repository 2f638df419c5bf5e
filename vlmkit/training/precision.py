"""Master weights in float32: under mixed precision, what trains is stored in fp32, frozen weights keep their dtype.

Released checkpoints are mostly bf16 or fp16, and transformers 5 loads them in that dtype. Left so, full
fine-tuning would apply AdamW's updates to bf16 weights, where an update smaller than half a unit in the last
place (about 4e-3 relative for bf16) is rounded away, and fp16 gradients cannot be unscaled at all. As in
LLaMA-Factory, the trainable parameters (LoRA adapters, the connector, the LLM in full fine-tuning) are cast to
fp32 while autocast runs the compute in bf16/fp16; the frozen ones (vision tower, quantized or LoRA-frozen base
weights) stay in the checkpoint's dtype and memory. DeepSpeed keeps fp32 master weights of its own and
Accelerate upcasts a model it wraps in FSDP, so neither is touched here.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast_trainable_parameters(model: nn.Module, accelerator) -> int:
    """Cast `model`'s trainable fp16/bf16 parameters to fp32 when mixed precision autocasts the compute;
    returns how many elements were cast (0 without mixed precision, under DeepSpeed or FSDP)."""
    from accelerate import DistributedType

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return 0
    low = [p for p in model.parameters() if p.requires_grad and p.dtype in LOW_PRECISION]
    if accelerator.mixed_precision not in ("bf16", "fp16"):
        if low:  # without autocast fp32 weights would meet the frozen low-precision ones: left as loaded
            logger.warning(
                "%s trainable elements are %s and mixed precision is off: their updates are applied in that "
                "dtype (small ones are rounded away); on a GPU train with --mixed_precision bf16",
                f"{sum(p.numel() for p in low):,}", low[0].dtype,
            )  # fmt: skip
        return 0
    cast = 0
    for param in low:
        param.data = param.data.float()
        cast += param.numel()
    if cast:
        logger.info("trainable parameters cast to fp32 master weights: %s elements", f"{cast:,}")
    return cast
