"""Tiny stage-2 runs shared by the reliability tests: a small image dataset in tmp_path and argv builders.

Not a test module: `from tests.helpers.tiny_stage2 import ...`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "dark yellow": (160, 150, 20),
    "light gray blue": (170, 180, 210),
    "black": (5, 5, 5),
}


def make_image_data(root: Path, n: int = 12, seed: int = 0) -> Path:
    """`n` 16x16 colour images with LLaVA-style records whose answers differ in length; returns data.json."""
    rng = np.random.default_rng(seed)
    names = list(COLORS)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        name = names[i % len(names)]
        pixels = np.clip(np.array(COLORS[name]) + rng.integers(-20, 20, (16, 16, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(root / "images" / f"{i}.png")
        records.append(
            {
                "id": f"img-{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat colour is this?"},
                    {"from": "gpt", "value": f"It is {name}." if i % 2 else name},
                ],
            }
        )
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def stage2_argv(data: Path, out: Path, **overrides) -> list[str]:
    """Command-line arguments of a few-second llava_stage2 run from tiny parts (no eval)."""
    args = {
        "vision_tower": "vlmkit-tiny/clip-vision",
        "language_model": "vlmkit-tiny/llama",
        "model_name_or_path": "none",
        "data_path": str(data),
        "eval_data_path": "none",
        "output_dir": str(out),
        "report_to": "none",
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_steps": 8,
        "save_steps": 2,
        "save_total_limit": 3,
        "logging_steps": 1,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.25,
        "max_length": 128,
        "mixed_precision": "no",
        "seed": 7,
    }
    args.update(overrides)
    argv = []
    for key, value in args.items():
        argv += [f"--{key}", str(value)]
    return argv


def load_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor a stage-2 output dir saved (connector, LLM or adapter, encoder), keyed by file/name."""
    weights = {}
    for path in sorted(Path(out_dir).rglob("*.safetensors")):
        rel = path.relative_to(out_dir)
        if rel.parts[0].startswith("checkpoint-") or rel.parts[0].startswith("."):
            continue
        for name, tensor in load_file(path).items():
            weights[f"{rel}:{name}"] = tensor
    assert weights, f"no weights in {out_dir}"
    return weights


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def read_log(out_dir: Path) -> list[dict]:
    lines = (Path(out_dir) / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]
