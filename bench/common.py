"""What every benchmark shares: hardware/version header, medians, result files, synthetic LLaVA-like data.

Results go to bench/results/<name>.json and <name>.md; headline numbers are merged into
bench/results/summary.json (`update_summary`).
"""

from __future__ import annotations

import json
import os
import platform
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TINY_VISION, TINY_LLM = "vlmkit-tiny/clip-vision", "vlmkit-tiny/llama"


def hardware() -> dict:
    """CPU/GPU model, core count, threads and the versions of the libraries that matter here."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    for pkg in ("torch", "transformers", "trl", "accelerate", "peft", "deepspeed", "vlmkit"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info[pkg] = None
    return info


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of one call.

    On a shared machine the wall time mostly measures the other users; the process CPU time (all of its
    threads) measures the work done, so the benchmarks report both and compare CPU time.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


class CpuClock:
    """Wraps bound methods of an object so that each call's process CPU time is recorded under a name."""

    def __init__(self):
        self.calls: dict[str, list[float]] = {}

    def wrap(self, obj, name: str, keep: list | None = None) -> None:
        method = getattr(obj, name)

        def timed(*args, **kwargs):
            c0 = time.process_time()
            out = method(*args, **kwargs)
            self.calls.setdefault(name, []).append(time.process_time() - c0)
            if keep is not None:
                keep.append(out)
            return out

        setattr(obj, name, timed)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (CPU) in MiB; the CUDA allocator peak on a GPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_result(name: str, result: dict, *, title: str, rows: list[dict], notes: str, out_dir: Path) -> Path:
    """Write <name>.json (hardware + result) and <name>.md (header, table, notes); returns the .md path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hw = hardware()
    payload = {"benchmark": name, "hardware": hw, "command": " ".join(sys.argv), **result}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    header = ", ".join(f"{k} {v}" for k, v in hw.items() if v is not None)
    md = f"# {title}\n\n{header}\n\n{markdown_table(rows)}\n\n{notes.strip()}\n"
    (out_dir / f"{name}.md").write_text(md)
    print(md, flush=True)
    return out_dir / f"{name}.md"


def update_summary(out_dir: Path, **values) -> dict:
    """Merge headline numbers into summary.json (keys: sft_speedup_vs_trl, padding_waste, ...)."""
    path = Path(out_dir) / "summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


# ---- data ---------------------------------------------------------------------------------------------
_WORD_TEXT = (
    "the digit image shows a handwritten number zero one two three four five six seven eight nine it is "
    "written with thick strokes on a dark background and the shape looks like curve line loop top bottom "
    "left right even odd larger smaller than because answer question picture"
)
_WORDS = _WORD_TEXT.split(" ")


def digit_images(out_dir: Path, n: int = 64, size: int = 32) -> list[str]:
    """`n` PNG files made from scikit-learn's bundled digits (upscaled RGB); returns their paths."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    paths = []
    for i in range(n):
        arr = (digits.images[i % len(digits.images)] * (255 / 16)).astype(np.uint8)
        path = out_dir / f"digit{i:05d}.png"
        if not path.exists():
            Image.fromarray(arr).resize((size, size)).convert("RGB").save(path)
        paths.append(str(path))
    return paths


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def llava_like_records(image_names: list[str], n: int, seed: int = 0) -> list[dict]:
    """LLaVA-format records with a LLaVA-665k-like mix of lengths.

    ~50% short VQA (one question, a few words back), ~20% multi-turn conversations, ~15% detailed
    descriptions, ~15% text-only chats with long answers (ShareGPT-like). Word counts are sized for
    the tiny tokenizer and a 512-token budget.
    """
    rng = random.Random(seed)
    records = []
    for i in range(n):
        kind = rng.choices(["vqa", "conv", "detail", "text"], weights=[50, 20, 15, 15])[0]
        turns = []
        if kind == "vqa":
            turns = [("human", "<image>\n" + _text(rng, 4, 10) + "?"), ("gpt", _text(rng, 1, 3))]
        elif kind == "detail":
            turns = [("human", "<image>\nDescribe the image in detail."), ("gpt", _text(rng, 40, 90))]
        elif kind == "conv":
            for r in range(rng.randint(2, 4)):
                q = _text(rng, 4, 10) + "?"
                turns += [("human", ("<image>\n" if r == 0 else "") + q), ("gpt", _text(rng, 8, 25))]
        else:
            for _ in range(rng.randint(1, 2)):
                turns += [("human", _text(rng, 5, 15) + "?"), ("gpt", _text(rng, 30, 80))]
        record = {"id": f"bench-{i}", "conversations": [{"from": f, "value": v} for f, v in turns]}
        if kind != "text":
            record["image"] = image_names[i % len(image_names)]
        records.append(record)
    return records


class BatchStats:
    """Wraps a collator and counts what the batches hold: samples, real tokens, slots, supervised tokens."""

    def __init__(self, collate: Callable, pad_token_id: int | None = None):
        self.collate = collate
        self.pad_token_id = pad_token_id
        self.reset()

    def reset(self) -> None:
        self.batches = self.samples = self.real_tokens = self.slots = self.supervised = 0

    def __call__(self, items: list) -> dict:
        batch = self.collate(items)
        if batch.get("empty"):
            return batch
        flat = [s for it in items for s in (it if isinstance(it, list) else [it]) if s is not None]
        self.batches += 1
        self.samples += len(flat)
        ids = batch["input_ids"]
        self.slots += ids.numel()
        if (
            "attention_mask" in batch
            and batch["attention_mask"] is not None
            and batch["attention_mask"].dim() == 2
        ):
            self.real_tokens += int(batch["attention_mask"].sum())
        else:
            self.real_tokens += sum(s["input_ids"].shape[-1] for s in flat)  # (T,) or a native (1, T)
        self.supervised += int((batch["labels"][:, 1:] != -100).sum())
        return batch

    @property
    def padding_waste(self) -> float:
        return 1.0 - self.real_tokens / max(1, self.slots)
