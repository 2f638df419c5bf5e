"""Proof of learning: tiny native stand-ins fine-tuned on the embedded digits through the shared loop.

Held-out answer accuracy (greedy `generate`, exact match) on the 360 eval images' questions (120 of them),
which training never saw; chance is 0.10. Both modes keep the (random-init) vision tower frozen, the
default: full fine-tuning trains the language model and the connector in full; LoRA trains adapters on the
language model's linear layers plus the connector and lm_head in full (the stand-in's LM is random-init,
as in the composite model's shipped digits LoRA config).
"""

from __future__ import annotations

import pytest

from tests.helpers.native_finetune import finetune

# family, mode -> (steps, learning rate, LoRA rank, accuracy to reach); batch 16, all 1437 training records
BUDGETS = {
    ("qwen2_vl", "full"): (500, 2e-3, 0, 0.90),
    ("llava", "full"): (500, 2e-3, 0, 0.90),
    ("qwen2_vl", "lora"): (800, 2e-3, 32, 0.80),
    ("llava", "lora"): (800, 2e-3, 32, 0.80),
}


@pytest.mark.slow
@pytest.mark.parametrize("family,mode", sorted(BUDGETS))
def test_tiny_native_vlm_learns_the_digits(family, mode, digits_data, tmp_path):
    steps, lr, rank, target = BUDGETS[family, mode]
    result = finetune(family, tmp_path / "run", lora=mode == "lora", steps=steps, lr=lr, lora_r=rank or 16)
    print(family, mode, {k: v for k, v in result.items() if k != "examples"})
    assert result["last_loss"] < result["first_loss"] / 4
    assert result["accuracy"] >= target, (result["accuracy"], result["examples"][:5])
