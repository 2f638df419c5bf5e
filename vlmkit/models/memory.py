"""A back-of-the-envelope GPU memory ESTIMATE for stage-2 fine-tuning (full, LoRA, QLoRA). Not a measurement.

Bytes per parameter, with bf16 weights and AdamW:
  full   bf16 weight 2 + bf16 grad 2 + fp32 master 4 + Adam m, v 8             = 16 per LLM parameter
  lora   frozen bf16 weight 2; each trainable (LoRA, connector) fp32 weight 4 + grad 4 + Adam 8 = 16
  qlora  frozen nf4 weight 0.5 + double-quantized scales (~0.127 bit) ; trainable as lora
Activations per token and layer (flash/sdpa attention, so no seq^2 term): ~34 * hidden bytes without
gradient checkpointing; with it, the layer inputs (2 * hidden bytes) plus one layer recomputed; the logits
take ~8 bytes per token and vocabulary entry (bf16 output, fp32 for the loss and its gradient). A fixed
overhead covers the CUDA context, kernels and allocator fragmentation. Real use varies with the framework
version, kernels, sequence lengths and padding: treat the result as a starting point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 2**30
MODES = ("full", "lora", "qlora")
NF4_BYTES = 0.5 + 0.127 / 8  # 4-bit weights + double-quantized absmax constants


@dataclass
class MemoryEstimate:
    """Estimated peak GPU memory of one training process, in GiB, by component."""

    mode: str
    trainable_params: int
    frozen_weights_gib: float  # weights that do not train (bf16, or nf4 for qlora)
    trainable_state_gib: float  # trainable weights + gradients + AdamW states, 16 bytes each
    activations_gib: float
    overhead_gib: float

    @property
    def total_gib(self) -> float:
        return self.frozen_weights_gib + self.trainable_state_gib + self.activations_gib + self.overhead_gib

    def as_dict(self) -> dict:
        return {**asdict(self), "total_gib": self.total_gib}


def lora_parameter_count(hidden_size: int, intermediate_size: int, num_layers: int, r: int) -> int:
    """LoRA parameters for `all-linear` on a Llama-style block: r * (in + out) per adapted matrix.

    Attention q, k, v, o (hidden -> hidden, full multi-head) and MLP gate, up (hidden -> intermediate), down.
    """
    attention = 4 * r * (hidden_size + hidden_size)
    mlp = 3 * r * (hidden_size + intermediate_size)
    return num_layers * (attention + mlp)


def estimate_finetune_memory(
    params: float,
    mode: str,
    *,
    hidden_size: int = 4096,
    intermediate_size: int = 11008,
    num_layers: int = 32,
    vocab_size: int = 32000,
    lora_r: int = 16,
    encoder_params: float = 0,
    connector_params: float = 0,
    batch_size: int = 1,
    seq_len: int = 2048,
    gradient_checkpointing: bool = True,
    overhead_gib: float = 1.5,
) -> MemoryEstimate:
    """ESTIMATE the peak GPU memory of stage-2 training on one GPU (bf16, AdamW); see the module docstring.

    `params`: LLM parameters (e.g. 6.7e9 for a 7B Llama); the defaults describe a Llama-2-7B-sized block.
    The frozen encoder is held in bf16; the connector always trains in full.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got '{mode}'")
    if params <= 0 or batch_size <= 0 or seq_len <= 0:
        raise ValueError("params, batch_size and seq_len must be positive")
    if mode == "full":
        trainable = params + connector_params
        frozen = 2 * encoder_params
    else:
        trainable = (
            lora_parameter_count(hidden_size, intermediate_size, num_layers, lora_r) + connector_params
        )
        frozen = (2 if mode == "lora" else NF4_BYTES) * params + 2 * encoder_params
    per_token_layer = (2 * num_layers + 34) if gradient_checkpointing else 34 * num_layers
    tokens = batch_size * seq_len
    activations = tokens * hidden_size * per_token_layer + 8 * tokens * vocab_size
    return MemoryEstimate(
        mode=mode,
        trainable_params=int(trainable),
        frozen_weights_gib=frozen / GIB,
        trainable_state_gib=16 * trainable / GIB,
        activations_gib=activations / GIB,
        overhead_gib=overhead_gib,
    )
