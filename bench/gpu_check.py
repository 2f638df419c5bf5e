"""The checks behind bench/gpu_check.sh: one NVIDIA GPU, no network, each check in its own process.

    python bench/gpu_check.py --prepare --work DIR [--device cpu --tiny]   # models from config + data
    python bench/gpu_check.py --check stage2_sdpa --work DIR               # one check -> DIR/frag_<check>.json
    python bench/gpu_check.py --report --work DIR --out bench/results      # gpu.md + gpu.json

Models are built from configs (random weights, no download) and saved, then loaded through vlmkit's own
`build_vlm` path: a ~0.5B Qwen2 LLM (Qwen2-0.5B shape) with a ViT-L/14-336 CLIP tower. `--tiny` swaps in
tiny configs of the same architectures so the same code runs on a CPU (the smoke test does that).

MFU of a stage-2 step = model FLOPs / step time / peak bf16 FLOPS, with model FLOPs per step =
6 * N_llm * LLM tokens + 2 * N_vision * patches (frozen tower: forward only) + 6 * N_connector * image tokens
(attention score FLOPs not counted, as in the usual 6*N*tokens estimate).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import digit_images, hardware, markdown_table, median  # noqa: E402

# Dense bf16 tensor-core peak (TFLOPS, no sparsity), matched by substring of the device name (first match).
PEAK_BF16_TFLOPS = [
    ("H200", 989.0), ("GH200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0), ("A10G", 125.0), ("A10", 125.0),
    ("L4", 121.0), ("RTX 4090", 165.0), ("A6000", 155.0),
]  # fmt: skip
CHECKS = ("env", "stage2_sdpa", "stage2_flash", "qlora", "zero3", "ppo", "liger")
STEPS, WARMUP = 6, 2
HIDDEN = {"status", "reason", "traceback", "cpu", "cpu_cores", "torch_threads", "python", "load_average_1min", "trl",
          "deepspeed", "vlmkit", "seconds"}  # fmt: skip


def peak_tflops(name: str | None) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if name and key in name:
            return value
    return None


def _sizes(tiny: bool) -> tuple[dict, dict, int, int]:
    """(LLM config kwargs, vision config kwargs, samples, words per sample)."""
    if tiny:
        llm = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)  # fmt: skip
        vision = dict(image_size=32, patch_size=8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4)  # fmt: skip
        return llm, vision, 32, 20
    llm = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
               num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
               rope_theta=1_000_000.0, tie_word_embeddings=True)  # fmt: skip
    vision = dict(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, projection_dim=768)  # fmt: skip
    return llm, vision, 96, 150


def prepare(args) -> dict:
    """Save the LLM (+ tokenizer) and the vision tower from configs, and a LLaVA-format dataset."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        CLIPVisionModel,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from vlmkit.models.tiny import build_tokenizer

    work = Path(args.work)
    llm_kw, vis_kw, n, words = _sizes(args.tiny)
    tokenizer = build_tokenizer()
    device = torch.device(args.device)
    with device:
        llm = Qwen2ForCausalLM(Qwen2Config(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                           bos_token_id=None, **llm_kw))  # fmt: skip
        vision = CLIPVisionModel(CLIPVisionConfig(**vis_kw))
    llm.save_pretrained(work / "llm")
    tokenizer.save_pretrained(work / "llm")
    vision.save_pretrained(work / "vision")
    size = vis_kw["image_size"]
    CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(work / "vision")
    names = [Path(p).name for p in digit_images(work / "images", 16, size=size)]
    text = " ".join(["seven"] * words)
    records = [
        {"id": f"gpu-{i}", "image": names[i % len(names)],
         "conversations": [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                           {"from": "gpt", "value": text}]}
        for i in range(n)
    ]  # fmt: skip
    (work / "data.json").write_text(json.dumps(records))
    return {"llm_params": llm.num_parameters(), "vision_params": vision.num_parameters()}


def _stage2_cfg(args, extra: list[str]):
    from vlmkit.config.parser import parse_config
    from vlmkit.config.recipes import Stage2Config

    work = Path(args.work)
    argv = [
        "--vision_tower", str(work / "vision"), "--language_model", str(work / "llm"),
        "--data_path", str(work / "data.json"), "--image_folder", str(work / "images"),
        "--output_dir", str(work / f"out_{args.check}"), "--max_length", "4096", "--packing_max_tokens", "8192",
        "--per_device_train_batch_size", "4" if args.tiny else "8", "--max_steps", str(STEPS), "--report_to", "none",
        "--logging_steps", "1000000", "--mixed_precision", "bf16", "--learning_rate", "1e-5",
        "--eval_generation", "false", *extra,
    ]  # fmt: skip
    return parse_config(Stage2Config, argv)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stage2_step(args, extra: list[str] | None = None, compare_packing: bool = False) -> dict:
    """A few bf16 stage-2 steps through build_vlm + build_train_data + the training loop; timing, MFU, memory."""
    from vlmkit.data.records import SkipCounter
    from vlmkit.models.build import build_vlm
    from vlmkit.training.accelerator import make_accelerator
    from vlmkit.training.freeze import set_trainable
    from vlmkit.training.loop import train
    from vlmkit.training.losses import sft_loss
    from vlmkit.training.train_data import build_train_data

    cfg = _stage2_cfg(args, extra or [])
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(
        output_dir=cfg.output_dir, mixed_precision=cfg.mixed_precision, report_to=[]
    )
    model, processor = build_vlm(cfg, cfg)
    set_trainable(model, "instruct", log=False)
    n_llm = sum(p.numel() for p in model.language_model.parameters())
    n_vis = sum(p.numel() for p in model.encoder.parameters())
    n_con = sum(p.numel() for p in model.connector.parameters())
    patches = (model.encoder.config.image_size // model.encoder.config.patch_size) ** 2 + 1
    out = {
        "attn": model.language_model.config._attn_implementation,
        "llm_params": n_llm,
        "vision_params": n_vis,
    }
    train_set, collate, sampler = build_train_data(
        cfg, processor, SkipCounter(), model=model, accelerator=accelerator
    )
    if compare_packing:
        out["packed_vs_padded_loss_rel_diff"] = _packing_agreement(
            model, processor, train_set, accelerator.device
        )
    stamps, flops = [], []
    media_id = processor.media_token_id

    def timed_loss(m, batch):
        _sync()
        stamps.append(time.perf_counter())
        ids = batch["input_ids"]
        real = int(batch["attention_mask"].sum()) if batch.get("attention_mask") is not None else ids.numel()
        img_tok = int((ids == media_id).sum())
        images = img_tok // model.config.num_media_tokens
        flops.append(6 * n_llm * real + 2 * n_vis * patches * images + 6 * n_con * img_tok)
        return sft_loss(m, batch)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train(cfg, accelerator, model, train_set, collate, timed_loss, sampler=sampler)
    _sync()
    steps = [b - a for a, b in zip(stamps[WARMUP:], stamps[WARMUP + 1 :])]
    step_s = median(steps)
    step_flops = median(flops[WARMUP:-1] or flops)
    peak = peak_tflops(torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    out.update(step_seconds=step_s, model_tflops_per_step=step_flops / 1e12,
               achieved_tflops=step_flops / step_s / 1e12 if step_s else None,
               peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None)  # fmt: skip
    if peak and step_s:
        out["mfu"] = step_flops / step_s / (peak * 1e12)
    return out


@torch.no_grad()
def _packing_agreement(model, processor, train_set, device) -> float:
    """Token-mean loss of 4 samples packed (flattened, varlen) vs padded, relative difference (bf16 on GPU)."""
    from vlmkit.data.packing import PackedCollator
    from vlmkit.data.sft_dataset import SFTCollator
    from vlmkit.training.loop import count_supervised_tokens
    from vlmkit.training.losses import sft_loss

    base = getattr(train_set, "dataset", train_set)
    items = [base[i] for i in range(4)]
    model.to(device).eval()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    losses = []
    for collate in (PackedCollator(processor.tokenizer.pad_token_id, flatten=True),
                    SFTCollator(processor.tokenizer.pad_token_id)):  # fmt: skip
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(items).items()}
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss, _ = sft_loss(model, batch)
        losses.append(float(loss) / count_supervised_tokens(batch))
    model.train()
    return abs(losses[0] - losses[1]) / abs(losses[1])


def check_env(args) -> dict:
    info = hardware()
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                    bf16=torch.cuda.is_bf16_supported(), peak_bf16_tflops=peak_tflops(props.name))  # fmt: skip
    for pkg in ("flash_attn", "bitsandbytes", "deepspeed", "liger_kernel"):
        info[f"has_{pkg}"] = importlib.util.find_spec(pkg) is not None
    return info


def check_qlora(args) -> dict:
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"status": "skipped", "reason": "bitsandbytes not installed"}
    return stage2_step(args, ["--use_lora", "true", "--load_in_4bit", "true", "--learning_rate", "1e-4"])


def check_flash(args) -> dict:
    if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        return {"status": "skipped", "reason": "flash-attn not installed (or no GPU)"}
    flash = ["--attn_implementation", "flash_attention_2", "--packing", "true", "--packing_max_tokens", "4096",
             "--per_device_train_batch_size", "2"]  # fmt: skip
    return stage2_step(args, flash, compare_packing=True)


def check_liger(args) -> dict:
    if importlib.util.find_spec("liger_kernel") is None and not args.tiny:
        return {"status": "skipped", "reason": "liger-kernel not installed"}
    return stage2_step(args, ["--use_liger_kernel", "true"])


def check_ppo(args) -> dict:
    from ppo_throughput import run, summarize

    work = Path(args.work)
    ppo_args = argparse.Namespace(batch_size=8, mini_batches=2, ppo_epochs=2, max_new_tokens=8, steps=3,
                                  vision_tower=str(work / "vision"), language_model=str(work / "llm"),
                                  mixed_precision="bf16")  # fmt: skip
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    history = run(ppo_args, work / "ppo")
    out = summarize(history, ppo_args.batch_size * ppo_args.mini_batches)
    if torch.cuda.is_available():
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run_check(args) -> dict:
    if args.check == "env":
        return check_env(args)
    if args.check == "stage2_sdpa":
        return stage2_step(args, ["--attn_implementation", "sdpa"], compare_packing=True)
    if args.check == "stage2_flash":
        return check_flash(args)
    if args.check == "qlora":
        return check_qlora(args)
    if args.check == "zero3":  # started by gpu_check.sh under `accelerate launch` with the ZeRO-3 config
        from accelerate.state import AcceleratorState

        out = stage2_step(args, ["--attn_implementation", "sdpa"])
        out["distributed_type"] = str(AcceleratorState().distributed_type)
        if "DEEPSPEED" not in out["distributed_type"]:
            raise RuntimeError(f"expected a DeepSpeed run, got {out['distributed_type']}")
        return out
    if args.check == "ppo":
        return check_ppo(args)
    return check_liger(args)


def report(args) -> Path:
    work, out_dir = Path(args.work), Path(args.out)
    rows, frags = [], {}
    for check in CHECKS:
        path = work / f"frag_{check}.json"
        frag = (
            json.loads(path.read_text())
            if path.exists()
            else {"status": "failed", "reason": "no result (timeout?)"}
        )
        frags[check] = frag
        shown = {k: v for k, v in frag.items() if k not in HIDDEN and not isinstance(v, dict)}
        rows.append({"check": check, "status": frag.get("status", "ok"), "details": frag.get("reason") or
                     ", ".join(f"{k}={_short(v)}" for k, v in shown.items())})  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "gpu" if not args.tiny else "gpu_dryrun"
    (out_dir / f"{name}.json").write_text(json.dumps(frags, indent=2, default=str) + "\n")
    env = frags.get("env", {})
    header = ", ".join(
        f"{k} {env[k]}" for k in ("gpu", "capability", "memory_gib", "torch", "transformers") if k in env
    )
    md = f"# GPU check{' (dry run: CPU, tiny configs)' if args.tiny else ''}\n\n{header}\n\n{markdown_table(rows)}\n"
    md += "\n" + __doc__.split("\n\n", 2)[2]
    (out_dir / f"{name}.md").write_text(md)
    print(md)
    return out_dir / f"{name}.md"


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", action="store_true")
    mode.add_argument("--check", choices=CHECKS)
    mode.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        report(args)
        return 0
    if args.prepare:
        print(json.dumps(prepare(args)))
        return 0
    frag = Path(args.work) / f"frag_{args.check}.json"
    t0 = time.perf_counter()
    try:
        result = {"status": "ok", **run_check(args)}
    except Exception as err:  # a failed check is a result to report, not a reason to stop the others
        result = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:300],
                  "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
    result["seconds"] = time.perf_counter() - t0
    if int(os.environ.get("RANK", "0")) == 0:
        frag.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, default=str))
    return 0 if result["status"] != "failed" else 1


if __name__ == "__main__":
    sys.exit(main())
