"""fp32 master weights under mixed precision: trainable parameters of a bf16 checkpoint are cast to fp32 (so small
AdamW updates are not rounded away), frozen ones keep the checkpoint's dtype; nothing changes without autocast,
under DeepSpeed (its own fp32 master weights) or FSDP (Accelerate upcasts the wrapped model)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import DistributedType
from safetensors.torch import load_file
from torch import nn

from tests.helpers.digits_subset import digits_subset
from tests.helpers.launching import ROOT, losses, subprocess_env
from vlmkit.training.precision import upcast_trainable_parameters


def _accelerator(mixed_precision: str, kind=DistributedType.NO):
    return SimpleNamespace(mixed_precision=mixed_precision, distributed_type=kind)


def _bf16_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).to(torch.bfloat16)
    model[0].requires_grad_(False)  # a frozen tower
    return model


def test_trainable_parameters_become_fp32_and_frozen_ones_stay():
    model = _bf16_model()
    assert upcast_trainable_parameters(model, _accelerator("bf16")) == 4 * 2 + 2
    assert {p.dtype for p in model[1].parameters()} == {torch.float32}
    assert {p.dtype for p in model[0].parameters()} == {torch.bfloat16}
    assert upcast_trainable_parameters(model, _accelerator("bf16")) == 0  # already fp32


@pytest.mark.parametrize(
    "accelerator",
    [
        _accelerator("no"),
        _accelerator("bf16", DistributedType.DEEPSPEED),
        _accelerator("fp16", DistributedType.FSDP),
    ],
)
def test_nothing_is_cast_without_autocast_or_where_the_engine_keeps_master_weights(accelerator):
    model = _bf16_model()
    assert upcast_trainable_parameters(model, accelerator) == 0
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_small_update_is_rounded_away_in_bf16_and_kept_in_fp32():
    """Why: the same AdamW step (lr 1e-5) on weights of magnitude ~0.05."""
    start = torch.full((64,), 0.05)
    changed = {}
    for dtype in (torch.bfloat16, torch.float32):
        param = nn.Parameter(start.clone().to(dtype))
        optimizer = torch.optim.AdamW([param], lr=1e-5, weight_decay=0.0)
        param.grad = torch.ones_like(param)
        optimizer.step()
        changed[dtype] = (param.detach().float() != start.to(dtype).float()).float().mean().item()
    assert changed == {torch.bfloat16: 0.0, torch.float32: 1.0}


# The recipe in a fresh process with bf16 autocast on the CPU: vlmkit runs CPU training in fp32 (mixed precision
# falls back to "no" there), so the GPU default (bf16) is imitated by resolving the setting to bf16.
BF16_ON_CPU = """
import runpy, sys
import vlmkit.training.accelerator as accelerator
accelerator.resolve_mixed_precision = lambda requested: "bf16"
sys.argv = ["llava_stage2", *sys.argv[1:]]
runpy.run_path("recipes/llava_stage2.py", run_name="__main__")
"""


@pytest.mark.slow
def test_native_stage2_from_a_bf16_checkpoint_trains_fp32_master_weights(digits_data, tmp_path: Path):
    from transformers import AutoModelForImageTextToText

    from vlmkit.models.native.tiny import build_tiny_native

    tiny = Path(build_tiny_native("qwen2_vl"))
    base = tmp_path / "bf16_qwen2_vl"  # a released checkpoint's usual form: bf16 weights
    AutoModelForImageTextToText.from_pretrained(tiny).to(torch.bfloat16).save_pretrained(base)
    for name in ("chat_template.jinja", "processor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (base / name).write_bytes((tiny / name).read_bytes())
    data = digits_subset(tmp_path, train=16, eval=4)
    out = tmp_path / "out"
    args = [
        "--model_name_or_path", str(base), "--data_path", data["train"], "--eval_data_path", data["eval"],
        "--image_folder", data["images"], "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-5", "--logging_steps", "1",
        "--eval_generation", "false", "--report_to", "none",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", BF16_ON_CPU, *args], env=subprocess_env(), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "cast to fp32 master weights" in proc.stderr
    assert all(map(math.isfinite, losses(out)))
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    # Qwen2-VL's checkpoint layout: the LLM under model.layers, the vision tower under visual
    trained = [k for k in after if k.startswith("model.layers.") and k.endswith("proj.weight")]
    frozen = [k for k in after if k.startswith("visual.blocks.")]
    assert trained and frozen
    for key in trained:  # fp32 master weights: lr 1e-5 moves (nearly) every element; in bf16 none would move
        assert after[key].dtype == torch.float32, key
        moved = (after[key] != before[key].float()).float().mean().item()
        assert moved > 0.9, (key, moved)
    for key in frozen:
        assert after[key].dtype == torch.bfloat16 and torch.equal(after[key], before[key]), key
