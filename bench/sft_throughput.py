"""Stage-2 SFT throughput: vlmkit (packing, and padded) vs TRL's SFTTrainer, same model, data and batch.

    python bench/sft_throughput.py                       # full run (~4 min on 2 idle CPU cores)
    python bench/sft_throughput.py --samples 32 --repeats 1 --in_process   # seconds-scale smoke

What is compared (all in one run, same machine, each framework in its own process so peak memory is its own):
- the same tiny VLM (CLIP-architecture vision tower, mlp2x_gelu connector, Llama-architecture LLM), same
  initial weights: TRL trains it as transformers' native `LlavaForConditionalGeneration` (weights copied
  from the vlmkit model; the script checks that both give the same logits), because TRL's VLM path
  needs a transformers VLM + `ProcessorMixin`;
- the same conversations and images (LLaVA-like mix of short VQA, multi-turn, detailed and text-only),
  the same assistant-only labels (TRL: `assistant_only_loss` with the template's generation markers),
  encoder frozen in both, AdamW, same learning rate, one epoch, fp32, no gradient checkpointing;
- batch: TRL and "vlmkit padded" take `--batch_size` samples per step, padded to the longest (TRL has no
  packing or padding-free mode for images); "vlmkit packed" takes rows of `--packing_max_tokens`
  tokens, as many rows per step as carry about `--batch_size` samples on average.
Timed: data preparation + one training epoch (TRL tokenizes in its collator, vlmkit before the loop).

The rows `vlmkit_native_packed` and `trl_sft_native` do the same on a native transformers VLM (the tiny
Qwen2-VL stand-in), which TRL takes as is: see `sft_native.py` (`sft_speedup_vs_trl_native`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sft_native  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    TINY_LLM,
    TINY_VISION,
    BatchStats,
    digit_images,
    llava_like_records,
    median,
    peak_rss_mb,
    timed,
    update_summary,
    write_result,
)

FRAMEWORKS = ("vlmkit_packed", "vlmkit_padded", "trl_sft_padded", "vlmkit_native_packed", "trl_sft_native")
NATIVE_FRAMEWORKS = ("vlmkit_native_packed", "trl_sft_native")
LEARNING_RATE = 2e-4
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for p in parts %}{{ p['text'] }}{% endfor %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{% for p in parts %}{% if p['type'] == 'image' %}{{ '<image>' }}{% else %}{{ p['text'] }}"
    "{% endif %}{% endfor %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def prepare_data(work: Path, n: int, max_length: int, seed: int = 0) -> tuple[Path, Path, dict]:
    """Write images + a LLaVA json of the samples that fit `max_length`; returns (json, image dir, stats)."""
    from vlmkit.config.args import ModelArgs
    from vlmkit.data.readers import read_dataset
    from vlmkit.data.sft_dataset import SFTDataset
    from vlmkit.models.build import build_vlm

    images = work / "images"
    names = [Path(p).name for p in digit_images(images, 64)]
    records = llava_like_records(names, n, seed)
    raw = work / "raw.json"
    raw.write_text(json.dumps(records))
    _, processor = build_vlm(ModelArgs(vision_tower=TINY_VISION, language_model=TINY_LLM))
    dataset = SFTDataset(
        read_dataset(str(raw), str(images)), processor, max_length=max_length, truncation="drop"
    )
    kept = [records[item.index] for item in dataset.items]
    data = work / "data.json"
    data.write_text(json.dumps(kept))
    lengths = dataset.lengths()
    stats = {
        "samples": len(kept),
        "dropped_too_long": len(records) - len(kept),
        "text_only": sum("image" not in r for r in kept),
        "tokens_mean": sum(lengths) / len(lengths),
        "tokens_min": min(lengths),
        "tokens_max": max(lengths),
    }
    return data, images, stats


def _vlmkit_cfg(args, data: Path, images: Path, out: Path, packed: bool, rows: int):
    from vlmkit.config.parser import parse_config
    from vlmkit.config.recipes import Stage2Config

    argv = [
        "--vision_tower", TINY_VISION, "--language_model", TINY_LLM, "--data_path", str(data),
        "--image_folder", str(images), "--output_dir", str(out), "--max_length", str(args.max_length),
        "--per_device_train_batch_size", str(rows if packed else args.batch_size), "--num_train_epochs", "1",
        "--learning_rate", str(LEARNING_RATE), "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
        "--report_to", "none", "--logging_steps", "1000000", "--mixed_precision", "no",
        "--packing", str(packed).lower(), "--packing_max_tokens", str(args.packing_max_tokens),
        "--eval_generation", "false",
    ]  # fmt: skip
    return parse_config(Stage2Config, argv)


def run_vlmkit(args, data: Path, images: Path, packed: bool, rows: int) -> dict:
    """One epoch of vlmkit stage-2 training through the recipe's own data path and loop."""
    from vlmkit.data.records import SkipCounter
    from vlmkit.models.build import build_vlm
    from vlmkit.training.accelerator import make_accelerator
    from vlmkit.training.freeze import set_trainable
    from vlmkit.training.loop import train
    from vlmkit.training.losses import sft_loss
    from vlmkit.training.train_data import build_train_data

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _vlmkit_cfg(args, data, images, Path(tmp), packed, rows)
        accelerator = make_accelerator(output_dir=tmp, gradient_accumulation_steps=1, mixed_precision="no",
                                       report_to=["none"])  # fmt: skip
        torch.manual_seed(0)
        model, processor = build_vlm(cfg, cfg)
        set_trainable(model, "instruct", log=False)

        def epoch():
            train_set, collate, sampler = build_train_data(cfg, processor, SkipCounter(), model=model)
            stats = BatchStats(collate)
            result = train(cfg, accelerator, model, train_set, stats, sft_loss, sampler=sampler)
            return stats, result

        seconds, cpu, (stats, result) = timed(epoch)
    return _row(seconds, cpu, stats, result.train_seconds, result.global_step)


def to_llava(model, processor):
    """transformers' LlavaForConditionalGeneration with the vlmkit model's weights (encoder frozen)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    config = LlavaConfig(
        vision_config=model.encoder.config.to_dict(), text_config=model.language_model.config.to_dict(),
        image_token_index=processor.media_token_id, vision_feature_layer=model.config.feature_layer,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", image_seq_length=model.config.num_media_tokens,
    )  # fmt: skip
    llava = LlavaForConditionalGeneration(config)
    llava.model.vision_tower.load_state_dict(model.encoder.state_dict())
    llava.model.multi_modal_projector.load_state_dict(model.connector.state_dict())
    llava.model.language_model.load_state_dict(model.language_model.model.state_dict())
    llava.lm_head.load_state_dict(model.language_model.lm_head.state_dict())
    llava.model.vision_tower.requires_grad_(False)
    llava_processor = LlavaProcessor(
        image_processor=processor.media_processor, tokenizer=processor.tokenizer,
        patch_size=model.encoder.config.patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
    )  # fmt: skip
    return llava, llava_processor


def _trl_rows(data: Path, images: Path) -> list[dict]:
    from PIL import Image

    rows = []
    for r in json.loads(data.read_text()):
        messages = []
        for turn in r["conversations"]:
            role = "user" if turn["from"] == "human" else "assistant"
            parts = []
            for k, piece in enumerate(turn["value"].split("<image>")):
                if k:
                    parts.append({"type": "image", "text": None})
                if piece:
                    parts.append({"type": "text", "text": piece})
            messages.append({"role": role, "content": parts})
        imgs = [Image.open(images / r["image"]).convert("RGB")] if "image" in r else []
        rows.append({"messages": messages, "images": imgs})
    return rows


def check_same_model(model, llava, processor, llava_processor, data: Path, images: Path) -> float:
    """Max |logit difference| between the vlmkit model and its Llava copy on the first image sample."""
    from vlmkit.data.readers import read_dataset
    from vlmkit.data.sft_dataset import SFTCollator, SFTDataset

    samples = [s for s in read_dataset(str(data), str(images)) if s.images][:1]
    batch = SFTCollator(processor.tokenizer.pad_token_id)(
        [SFTDataset(samples, processor, max_length=4096)[0]]
    )
    with torch.no_grad():
        ours = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], media=batch["media"]
        )
        theirs = llava(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["media"])  # fmt: skip
    return float((ours.logits - theirs.logits).abs().max())


def run_trl(args, data: Path, images: Path) -> dict:
    """One epoch of TRL SFTTrainer on the Llava copy of the same model, same data and batch size."""
    from vlmkit.config.args import ModelArgs
    from vlmkit.models.build import build_vlm

    torch.manual_seed(0)
    model, processor = build_vlm(ModelArgs(vision_tower=TINY_VISION, language_model=TINY_LLM))
    llava, llava_processor = to_llava(model, processor)
    max_diff = check_same_model(model.eval(), llava.eval(), processor, llava_processor, data, images)
    if max_diff > 1e-4:
        raise RuntimeError(f"the Llava copy differs from the vlmkit model (max logit diff {max_diff:.2e})")
    row = trl_epoch(args, llava, llava_processor, _trl_rows(data, images))
    row["llava_copy_max_logit_diff"] = max_diff
    return row


def run_trl_native(args, data: Path, images: Path) -> dict:
    """One epoch of TRL SFTTrainer on the native Qwen2-VL stand-in (`sft_native`), same data and batch size."""
    torch.manual_seed(0)
    model, processor = sft_native.trl_model_and_processor()
    return trl_epoch(args, model, processor, sft_native.trl_rows(data, images))


def trl_epoch(args, model, processor, rows: list[dict]) -> dict:
    """Time one epoch of `SFTTrainer` (assistant-only loss, padded batches of `--batch_size`) on `rows`."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as tmp:
        config = SFTConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch_size, num_train_epochs=1,
            learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1_000_000,
            save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False,
            gradient_checkpointing=False, assistant_only_loss=True, max_length=None, dataloader_drop_last=True,
            seed=0, disable_tqdm=True, dataloader_num_workers=0,
        )  # fmt: skip

        dataset = datasets.Dataset.from_list(rows)  # a user's dataset, loaded before

        def epoch():
            trainer = SFTTrainer(model=model.train(), args=config, train_dataset=dataset,
                                 processing_class=processor)  # fmt: skip
            stats = BatchStats(trainer.data_collator)
            trainer.data_collator = stats
            out = trainer.train()
            return stats, out

        seconds, cpu, (stats, out) = timed(epoch)
    return _row(seconds, cpu, stats, float(out.metrics["train_runtime"]), int(out.global_step))


def _row(seconds: float, cpu: float, stats: BatchStats, train_seconds: float, steps: int) -> dict:
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "train_loop_seconds": train_seconds,
        "steps": steps,
        "samples": stats.samples,
        "samples_per_step": stats.samples / max(1, stats.batches),
        "supervised_tokens": stats.supervised,
        "samples_per_s": stats.samples / seconds,
        "supervised_tokens_per_s": stats.supervised / seconds,
        "samples_per_cpu_s": stats.samples / cpu,
        "supervised_tokens_per_cpu_s": stats.supervised / cpu,
        "padding_waste": stats.padding_waste,
    }


def native_rows_per_step(args, data: Path, images: Path, data_stats: dict, fill: float) -> int:
    """Packed rows per step for the native model (its processor counts its own tokens); also checks, on every
    sample, that vlmkit and TRL encode the same ids and labels (`native_same_labels_as_trl`)."""
    lengths = sft_native.native_lengths(args, data, images)
    data_stats["native_tokens_mean"] = sum(lengths) / len(lengths)
    data_stats["native_same_labels_as_trl"] = sft_native.check_same_labels(data, images)
    return max(
        1, round(args.batch_size * data_stats["native_tokens_mean"] / (args.packing_max_tokens * fill))
    )


def worker(args) -> dict:
    """Run `args.worker` `args.repeats` times in this process; medians + this process's peak memory.

    The main process starts one worker per (repeat, framework), interleaved, each with --repeats 1.
    """
    data, images = Path(args.data), Path(args.images)
    runs = []
    for _ in range(args.repeats):
        if args.worker == "trl_sft_padded":
            runs.append(run_trl(args, data, images))
        elif args.worker == "trl_sft_native":
            runs.append(run_trl_native(args, data, images))
        elif args.worker == "vlmkit_native_packed":
            runs.append(
                _row(*sft_native.run_vlmkit_native(args, data, images, args.native_rows, LEARNING_RATE))
            )
        else:
            runs.append(run_vlmkit(args, data, images, args.worker == "vlmkit_packed", args.rows))
    row = {k: median([r[k] for r in runs]) for k in runs[0]}
    row.update(framework=args.worker, repeats=args.repeats, peak_rss_mb=peak_rss_mb())
    return row


def _add_speedups(result: dict, summary: dict, ours: dict, trl: dict, prefix: str) -> None:
    """vlmkit over TRL per second and per CPU-second (samples, supervised tokens) into `result` as
    `<prefix>speedup_vs_trl_*`; the supervised-token ratios into `summary` as `sft_speedup_vs_trl[_native]`."""
    for unit in ("s", "cpu_s"):
        for what in ("samples", "supervised_tokens"):
            key = f"{what}_per_{unit}"
            result[f"{prefix}speedup_vs_trl_{key}"] = ours[key] / trl[key]
    suffix = f"_{prefix.rstrip('_')}" if prefix else ""
    summary[f"sft_speedup_vs_trl{suffix}"] = round(
        result[f"{prefix}speedup_vs_trl_supervised_tokens_per_cpu_s"], 3
    )
    summary[f"sft_speedup_vs_trl{suffix}_wall_clock"] = round(
        result[f"{prefix}speedup_vs_trl_supervised_tokens_per_s"], 3
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--samples", type=int, default=192, help="conversations generated (before length filter)"
    )
    parser.add_argument("--batch_size", type=int, default=8, help="samples per step (padded runs)")
    parser.add_argument("--packing_max_tokens", type=int, default=512)
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="epochs timed per framework (median)")
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--in_process", action="store_true", help="no subprocesses (smoke tests)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--native_rows", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = worker(args)
        Path(args.result).write_text(json.dumps(row))
        return row

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data, images, data_stats = prepare_data(work, args.samples, args.max_length)
        fill = 0.95  # best-fit-decreasing fills rows almost completely on this mix
        args.rows = max(
            1, round(args.batch_size * data_stats["tokens_mean"] / (args.packing_max_tokens * fill))
        )
        if set(args.frameworks) & set(NATIVE_FRAMEWORKS):
            args.native_rows = native_rows_per_step(args, data, images, data_stats, fill)
        per_fw: dict[str, list[dict]] = {fw: [] for fw in args.frameworks}
        for r in range(args.repeats):  # interleaved, so a change in machine load hits every framework alike
            for fw in args.frameworks:
                worker_argv = [
                    "--worker", fw, "--data", str(data), "--images", str(images), "--rows", str(args.rows),
                    "--native_rows", str(args.native_rows),
                    "--repeats", "1", "--batch_size", str(args.batch_size),
                    "--packing_max_tokens", str(args.packing_max_tokens), "--max_length", str(args.max_length),
                    "--result", str(work / f"{fw}-{r}.json"),
                ]  # fmt: skip
                if args.in_process:
                    per_fw[fw].append(main(worker_argv))
                else:
                    subprocess.run([sys.executable, __file__, *worker_argv], check=True)
                    per_fw[fw].append(json.loads((work / f"{fw}-{r}.json").read_text()))
        rows = []
        for fw, runs in per_fw.items():
            row = {k: median([x[k] for x in runs]) for k in runs[0] if isinstance(runs[0][k], (int, float))}
            row.update(framework=fw, repeats=len(runs), peak_rss_mb=max(x["peak_rss_mb"] for x in runs))
            rows.append(row)
    by = {r["framework"]: r for r in rows}
    result = {"data": data_stats, "batch_size": args.batch_size, "packed_rows_per_step": args.rows,
              "native_packed_rows_per_step": args.native_rows, "packing_max_tokens": args.packing_max_tokens,
              "runs": rows}  # fmt: skip
    summary = {}
    if "vlmkit_packed" in by and "trl_sft_padded" in by:
        _add_speedups(result, summary, by["vlmkit_packed"], by["trl_sft_padded"], "")
    if "vlmkit_native_packed" in by and "trl_sft_native" in by:
        ours, trl = by["vlmkit_native_packed"], by["trl_sft_native"]
        _add_speedups(result, summary, ours, trl, "native_")
        result["native_peak_rss_mb"] = {"vlmkit": ours["peak_rss_mb"], "trl": trl["peak_rss_mb"]}
    if "vlmkit_packed" in by:
        summary["padding_waste"] = round(by["vlmkit_packed"]["padding_waste"], 4)
    if "trl_sft_padded" in by:
        summary["padding_waste_trl"] = round(by["trl_sft_padded"]["padding_waste"], 4)
    table = [
        {
            "framework": r["framework"], "supervised tok/cpu-s": r["supervised_tokens_per_cpu_s"],
            "samples/cpu-s": r["samples_per_cpu_s"], "supervised tok/s (wall)": r["supervised_tokens_per_s"],
            "samples/s (wall)": r["samples_per_s"], "padding waste": r["padding_waste"],
            "samples/step": r["samples_per_step"], "steps": r["steps"], "epoch cpu-s": r["cpu_seconds"],
            "epoch wall s": r["seconds"], "peak RSS MiB": r["peak_rss_mb"],
        }
        for r in rows
    ]  # fmt: skip
    ratio = result.get("speedup_vs_trl_supervised_tokens_per_cpu_s", float("nan"))
    ratio_wall = result.get("speedup_vs_trl_supervised_tokens_per_s", float("nan"))
    notes = (
        f"Data: {data_stats}. Batch: {args.batch_size} samples/step padded; packed: {args.rows} row(s) of "
        f"<= {args.packing_max_tokens} tokens per step. Medians of {args.repeats} epochs per framework, one "
        "process per epoch, frameworks interleaved.\n\n"
        + __doc__.split("What is compared", 1)[1].split("\n", 1)[1]
        + f"\nvlmkit packed vs TRL: {ratio:.2f}x supervised tokens per CPU-second (goal >= 2x); "
        f"{ratio_wall:.2f}x per wall-clock second. On a shared machine wall time mostly measures the other "
        "users, so the headline compares the CPU time of each framework's process (all its threads). "
        "Peak RSS is each framework's own process, libraries included.\n"
    )
    if "native_speedup_vs_trl_supervised_tokens_per_cpu_s" in result:
        notes += (
            f"\nNative Qwen2-VL (`{sft_native.MODEL}`), vlmkit packed ({args.native_rows} row(s) per step, "
            "per-sample M-RoPE positions) vs TRL padded: "
            f"{result['native_speedup_vs_trl_supervised_tokens_per_cpu_s']:.2f}x supervised tokens per CPU-second "
            f"(goal >= 2x); {result['native_speedup_vs_trl_supervised_tokens_per_s']:.2f}x per wall-clock second. "
            + sft_native.__doc__.split("\n", 2)[2]
        )
    write_result("sft_throughput", result, title="Stage-2 SFT throughput (CPU, tiny VLM)", rows=table,
                 notes=notes, out_dir=Path(args.out))  # fmt: skip
    if summary:
        update_summary(Path(args.out), **summary)
    return result


if __name__ == "__main__":
    main()
