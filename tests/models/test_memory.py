"""The fine-tuning memory estimate: hand-computed components, and the ordering full > LoRA > QLoRA."""

from __future__ import annotations

import pytest

from vlmkit.models.memory import GIB, NF4_BYTES, estimate_finetune_memory, lora_parameter_count


def test_lora_parameter_count_by_hand():
    # One layer, hidden 2, intermediate 3, r 1: q,k,v,o 4 * (2 + 2) + gate,up,down 3 * (2 + 3) = 31.
    assert lora_parameter_count(2, 3, 1, 1) == 31
    assert lora_parameter_count(2, 3, 4, 2) == 4 * 2 * 31


def test_components_by_hand():
    kw = dict(
        hidden_size=8, intermediate_size=16, num_layers=2, vocab_size=10, lora_r=1, batch_size=1, seq_len=4
    )
    full = estimate_finetune_memory(
        1000, "full", encoder_params=100, connector_params=10, overhead_gib=0, **kw
    )
    assert full.trainable_params == 1010
    assert full.frozen_weights_gib == pytest.approx(2 * 100 / GIB)  # only the encoder is frozen
    assert full.trainable_state_gib == pytest.approx(16 * 1010 / GIB)
    # checkpointing: 4 tokens * 8 hidden * (2 * 2 layers + 34) + 8 bytes * 4 tokens * 10 vocab
    assert full.activations_gib == pytest.approx((4 * 8 * 38 + 8 * 4 * 10) / GIB)

    lora = estimate_finetune_memory(1000, "lora", overhead_gib=0, **kw)
    assert lora.trainable_params == lora_parameter_count(8, 16, 2, 1)
    assert lora.frozen_weights_gib == pytest.approx(2000 / GIB)
    qlora = estimate_finetune_memory(1000, "qlora", overhead_gib=0, **kw)
    assert qlora.frozen_weights_gib == pytest.approx(1000 * NF4_BYTES / GIB)
    no_ckpt = estimate_finetune_memory(1000, "lora", overhead_gib=0, gradient_checkpointing=False, **kw)
    assert no_ckpt.activations_gib == pytest.approx((4 * 8 * 34 * 2 + 8 * 4 * 10) / GIB)


def test_seven_billion_ordering_and_ranges():
    est = {m: estimate_finetune_memory(6.74e9, m, encoder_params=3.04e8) for m in ("full", "lora", "qlora")}
    assert est["full"].total_gib > est["lora"].total_gib > est["qlora"].total_gib
    assert est["full"].total_gib > 80  # full fine-tuning of 7B does not fit one 80 GB GPU without ZeRO
    assert 12 < est["lora"].total_gib < 24
    assert 4 < est["qlora"].total_gib < 12
    assert est["lora"].trainable_params < 0.01 * 6.74e9
    assert est["qlora"].as_dict()["total_gib"] == pytest.approx(est["qlora"].total_gib)


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="mode must be one of full, lora, qlora"):
        estimate_finetune_memory(1e9, "dora")
    with pytest.raises(ValueError, match="positive"):
        estimate_finetune_memory(0, "lora")
