"""Shared by the launch tests: run a recipe as a subprocess (one process, or `accelerate launch` with a shipped
config on 2 CPU processes) and check what it left behind.

Each launch costs ~15 s on 2 cores (interpreter start, DeepSpeed import, process group), so the tests keep to a
few optimizer steps and compare against one shared single-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = ROOT / "accelerate_configs"
STEPS = 4
# Stage 2 from tiny parts; the single-process baseline uses batch 8, two processes 4 each: the same global batch.
STAGE2 = [
    "--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision", "--language_model", "vlmkit-tiny/llama",
    "--data_path", "vlmkit-data/digits/stage2_train.json", "--eval_data_path", "none", "--max_steps", str(STEPS),
    "--logging_steps", "1", "--report_to", "none", "--seed", "7", "--learning_rate", "0.002",
]  # fmt: skip
EVAL = ["--eval_data_path", "vlmkit-data/digits/stage2_eval.json", "--max_eval_samples", "8"]
# Losses are normalised by the global token count, so 1 and 2 processes differ only by float summation order
# (observed: < 1e-6; ZeRO-Offload's CPU Adam differs from torch's AdamW in the last bits).
LOSS_TOLERANCE = 1e-4
# Logits of the saved 2-process model vs the saved 1-process model after the same few steps.
LOGITS_TOLERANCE = 1e-3


def subprocess_env() -> dict[str, str]:
    """The session's tiny-model/data caches (tests/conftest.py), offline, one thread per process, and the CPU
    even on a GPU machine: these tests prove the CPU path with exact fp32 curves (GPU checks: the README)."""
    session_root = Path(os.environ["VLMKIT_TINY_DIR"]).parent
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "DS_ACCELERATOR": "cpu",
        "HF_HOME": str(session_root / "hf_home"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


def free_port() -> int:
    """A TCP port nobody listens on now (tests run in parallel: never a fixed port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_recipe(recipe: str, *args: str, config_file: str | None = None, timeout: int = 600) -> str:
    """Run recipes/<recipe>.py in one process, or under `accelerate launch --config_file <config_file>
    --num_processes 2` exactly as a user would; returns stderr (asserting a clean exit)."""
    script = str(ROOT / "recipes" / f"{recipe}.py")
    if config_file is None:
        cmd = [sys.executable, script, *args]
    else:
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config_file),
            "--num_processes", "2", "--main_process_port", str(free_port()), script, *args,
        ]  # fmt: skip
    proc = subprocess.run(
        cmd, env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    return proc.stderr


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def assert_same_curve(two: Path, one: Path, tolerance: float = LOSS_TOLERANCE) -> None:
    a, b = losses(one), losses(two)
    assert len(a) == len(b) == STEPS, (a, b)
    assert max(abs(x - y) for x, y in zip(a, b)) < tolerance, (a, b)


def assert_sharded(m: dict) -> None:
    """Two ranks, each storing about half of the parameters (ZeRO-3 pads its partitions a little)."""
    assert m["world_size"] == 2, m
    assert m["parameters"] > 0 and m["parameters_per_rank_max"] <= 0.55 * m["parameters"], m


def assert_weights_as_saved(model: torch.nn.Module, out: Path, parts: dict[str, str]) -> None:
    """Every tensor of the loaded model equals one in the consolidated files, and every saved tensor is used:
    nothing partitioned (empty), missing or freshly initialised. `parts`: file glob under `out` -> state-dict
    key prefix of that part. Key names may differ by a leading segment: transformers 5 writes a CLIP tower
    loaded under ZeRO-3 in the Hub's legacy layout (`vision_model.*`), otherwise in its module layout; both load.
    """
    state = model.state_dict()
    for pattern, prefix in parts.items():
        files = sorted(out.glob(pattern))
        assert files, f"no {pattern} in {out}"
        saved = {k: v for file in files for k, v in load_file(str(file)).items()}
        mine = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        names = {k: k for k in saved} | {
            k.partition(".")[2]: k for k in saved if k.partition(".")[2] not in saved
        }
        used = set()
        for key, value in mine.items():
            match = names.get(key) or names.get(key.partition(".")[2])
            assert match is not None, f"{prefix}{key} is not in {pattern}"
            assert value.shape == saved[match].shape, (key, value.shape, saved[match].shape)
            assert torch.equal(value, saved[match].to(value.dtype)), key
            used.add(match)
        assert used == set(saved), f"{pattern}: saved but not loaded: {set(saved) - used}"


VLM_FILES = {
    "encoder/*.safetensors": "encoder.",
    "connector.safetensors": "connector.",
    "language_model/*.safetensors": "language_model.",
}


def load_saved_vlm(out: Path) -> torch.nn.Module:
    """The output directory through vlmkit's from_pretrained path, checked against its own files."""
    from vlmkit.models.build import load_vlm

    model, _ = load_vlm(str(out))
    assert_weights_as_saved(model, out, VLM_FILES)
    return model.eval()


@torch.no_grad()
def vlm_logits(model: torch.nn.Module) -> torch.Tensor:
    """Logits (1, T, V) for a fixed prompt with one fixed image (deterministic)."""
    config = model.config
    ids = [5, 17, 23, *([config.media_token_id] * config.num_media_tokens), 42, 7, 11]
    input_ids = torch.tensor([ids])
    size, channels = model.encoder.config.image_size, model.encoder.config.num_channels
    image = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    return model(input_ids, torch.ones_like(input_ids), image).logits


def assert_same_model(two: Path, one: Path, tolerance: float = LOGITS_TOLERANCE) -> torch.Tensor:
    """The 2-process output loads like the 1-process one and gives the same logits; returns them."""
    logits = vlm_logits(load_saved_vlm(two))
    reference = vlm_logits(load_saved_vlm(one))
    assert torch.isfinite(logits).all()
    assert (logits - reference).abs().max().item() < tolerance
    return logits
