"""Stage 1 with the frozen-encoder feature cache vs without: time of a later epoch, measured and projected.

    python bench/feature_cache.py                         # full run (a few minutes on 2 busy CPU cores)
    python bench/feature_cache.py --samples 32 --repeats 1   # smoke

Measured on the tiny world (CLIP-architecture tower, Llama-architecture LLM, stage-1 captions): one epoch of
the stage-1 loop reading pixels (decode + preprocess + encoder every epoch) vs one epoch reading cached
features (the cache built once beforehand; its build time is reported separately). The same recipe code
path is used: `build_train_data(cfg, ...)` with and without `--feature_cache_dir`.

Projected from FLOPs for real model pairs (`projected_speedup`): per sample, with P encoder tokens, T LLM
tokens (image tokens + caption), N parameters, L layers, d width:
    encoder forward          F_enc = 2 * N_enc * P + 4 * L_enc * P^2 * d_enc
    frozen LLM, fwd + bwd    F_llm = 2 * (2 * N_llm * T + 4 * L_llm * T^2 * d_llm)   (activation grads only)
    connector, trained       F_con = 6 * N_con * T_img
    speedup = (F_enc + F_llm + F_con) / (F_llm + F_con)
Image decoding and resizing, also skipped with the cache, are not counted: the projection is a lower bound
when data loading is the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    TINY_LLM,
    TINY_VISION,
    digit_images,
    median,
    timed,
    update_summary,
    write_result,
)

# name: (N params, layers, width, tokens per image (P), tokens the LLM sees per image)
ENCODERS = {
    "SigLIP-so400m/14@384": (4.0e8, 27, 1152, 729, 729),
    "CLIP-ViT-L/14@336": (3.04e8, 24, 1024, 577, 576),
}
LLMS = {"SmolLM2-135M": (1.35e8, 30, 576), "Vicuna-7B": (6.74e9, 32, 4096)}
PAIRS = [("SigLIP-so400m/14@384", "SmolLM2-135M"), ("CLIP-ViT-L/14@336", "Vicuna-7B")]
CAPTION_TOKENS = 40  # a LLaVA-558k caption with its chat template, roughly


def stage1_flops(encoder: str, llm: str, caption_tokens: int = CAPTION_TOKENS) -> dict:
    """FLOPs per sample of a stage-1 step with and without cached encoder features (formulas above)."""
    n_enc, l_enc, d_enc, p, t_img = ENCODERS[encoder]
    n_llm, l_llm, d_llm = LLMS[llm]
    t = t_img + caption_tokens
    n_con = d_enc * d_llm + d_llm * d_llm  # mlp2x_gelu
    f_enc = 2 * n_enc * p + 4 * l_enc * p**2 * d_enc
    f_llm = 2 * (2 * n_llm * t + 4 * l_llm * t**2 * d_llm)
    f_con = 6 * n_con * t_img
    return {
        "encoder": encoder, "llm": llm, "flops_encoder": f_enc, "flops_llm": f_llm, "flops_connector": f_con,
        "projected_speedup": (f_enc + f_llm + f_con) / (f_llm + f_con),
    }  # fmt: skip


def _records(work: Path, n: int) -> tuple[Path, Path]:
    images = work / "images"
    paths = digit_images(images, n)
    from sklearn.datasets import load_digits

    labels = load_digits().target
    records = [
        {
            "id": f"cap-{i}", "image": Path(p).name,
            "conversations": [{"from": "human", "value": "<image>\nDescribe the image briefly."},
                              {"from": "gpt", "value": f"A handwritten digit {labels[i % len(labels)]}."}],
        }
        for i, p in enumerate(paths)
    ]  # fmt: skip
    data = work / "stage1.json"
    data.write_text(json.dumps(records))
    return data, images


def _cfg(args, data: Path, images: Path, out: Path, cache_dir: Path | None):
    from vlmkit.config.parser import parse_config
    from vlmkit.config.recipes import Stage1Config

    argv = [
        "--vision_tower", TINY_VISION, "--language_model", TINY_LLM, "--data_path", str(data),
        "--image_folder", str(images), "--output_dir", str(out), "--max_length", "128",
        "--per_device_train_batch_size", str(args.batch_size), "--num_train_epochs", "1",
        "--report_to", "none", "--logging_steps", "1000000", "--mixed_precision", "no",
    ]  # fmt: skip
    if cache_dir is not None:
        argv += ["--feature_cache_dir", str(cache_dir)]
    return parse_config(Stage1Config, argv)


def run_epoch(args, data: Path, images: Path, cache_dir: Path | None) -> dict:
    """(cache build seconds, one epoch of the stage-1 loop in seconds) through the recipe's data path."""
    from vlmkit.data.records import SkipCounter
    from vlmkit.models.build import build_vlm
    from vlmkit.training.accelerator import make_accelerator
    from vlmkit.training.freeze import set_trainable
    from vlmkit.training.loop import train
    from vlmkit.training.losses import sft_loss
    from vlmkit.training.train_data import build_train_data

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(args, data, images, Path(tmp), cache_dir)
        accelerator = make_accelerator(output_dir=tmp, gradient_accumulation_steps=1, mixed_precision="no",
                                       report_to=["none"])  # fmt: skip
        torch.manual_seed(0)
        model, processor = build_vlm(cfg)
        set_trainable(model, "align", log=False)
        prep, _, (train_set, collate, sampler) = timed(
            lambda: build_train_data(cfg, processor, SkipCounter(), model=model, accelerator=accelerator)
        )
        wall, cpu, result = timed(
            lambda: train(cfg, accelerator, model, train_set, collate, sft_loss, sampler=sampler)
        )
    return {
        "data_prep_seconds": prep,
        "epoch_seconds": wall,
        "epoch_cpu_seconds": cpu,
        "steps": result.global_step,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, images = _records(work, args.samples)
        cache_dir = work / "feature_cache"
        first = run_epoch(args, data, images, cache_dir)  # builds the cache (epoch 1)
        pixels, cached = [], []
        for _ in range(args.repeats):
            pixels.append(run_epoch(args, data, images, None))
            cached.append(run_epoch(args, data, images, cache_dir))  # later epochs / later runs: cache hit
    t_pixels = median([r["epoch_seconds"] for r in pixels])
    t_cached = median([r["epoch_seconds"] for r in cached])
    c_pixels = median([r["epoch_cpu_seconds"] for r in pixels])
    c_cached = median([r["epoch_cpu_seconds"] for r in cached])
    measured, measured_wall = c_pixels / c_cached, t_pixels / t_cached
    projections = [stage1_flops(e, m) for e, m in PAIRS]
    result = {
        "samples": args.samples, "batch_size": args.batch_size, "repeats": args.repeats,
        "cache_build_seconds": first["data_prep_seconds"], "epoch_seconds_pixels": t_pixels,
        "epoch_seconds_cached": t_cached, "epoch_cpu_seconds_pixels": c_pixels, "epoch_cpu_seconds_cached": c_cached,
        "measured_speedup": measured, "measured_speedup_wall_clock": measured_wall,
        "data_prep_seconds_cached_hit": median([r["data_prep_seconds"] for r in cached]),
        "projections": projections,
    }  # fmt: skip
    rows = [
        {"setup": "tiny world, measured (CPU time)", "epoch without cache": c_pixels, "epoch with cache": c_cached,
         "speedup": measured},
        {"setup": "tiny world, measured (wall clock)", "epoch without cache": t_pixels, "epoch with cache": t_cached,
         "speedup": measured_wall},
        *[{"setup": f"{p['encoder']} + {p['llm']}, FLOP projection", "epoch without cache": None,
           "epoch with cache": None, "speedup": p["projected_speedup"]} for p in projections],
    ]  # fmt: skip
    notes = (
        f"{args.samples} captions, batch {args.batch_size}, median of {args.repeats} epochs each (seconds; CPU "
        f"time of the process is the headline on a shared machine); cache built once in "
        f"{first['data_prep_seconds']:.1f} s (first epoch). Measured goal >= 2x on the tiny world.\n"
        + __doc__[__doc__.index("Projected from FLOPs") :]
    )
    write_result("feature_cache", result, title="Stage 1: frozen-encoder feature cache", rows=rows,
                 notes=notes, out_dir=Path(args.out))  # fmt: skip
    update_summary(
        Path(args.out), feature_cache_speedup=round(measured, 3),
        feature_cache_speedup_projected={f"{p['encoder']} + {p['llm']}": round(p["projected_speedup"], 3)
                                         for p in projections},
    )  # fmt: skip
    return result


if __name__ == "__main__":
    main()
