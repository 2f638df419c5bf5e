"""Stage-0 CLIP pretraining throughput (image-caption pairs per second) through the recipe's own pieces.

    python bench/clip_throughput.py                      # full run (about a minute on 2 busy CPU cores)
    python bench/clip_throughput.py --steps 3 --batch_size 8   # smoke

Builds what recipes/clip_pretrain.py builds (a new tiny CLIP from ClipConfig, caption tokenizer trained on the
captions, ImageRecordDataset + ClipCollator, the shared training loop with the symmetric InfoNCE loss) on
captions of scikit-learn digits, and times the training steps after the first (image decoding and
preprocessing included).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, digit_images, median, update_summary, write_result  # noqa: E402


def run(args, work: Path) -> dict:
    """One CLIP training run of `args.steps` steps; returns seconds and pairs/s of the loop."""
    from sklearn.datasets import load_digits

    from vlmkit.config.parser import parse_config
    from vlmkit.config.ssl_image import ClipConfig
    from vlmkit.data.records import SkipCounter
    from vlmkit.ssl.clip_model import (
        ClipDualEncoder,
        build_caption_tokenizer,
        build_clip_model,
        clip_compute_loss,
        clip_image_processor,
    )
    from vlmkit.ssl.image_data import ClipCollator, ImageRecordDataset, read_image_records
    from vlmkit.training.accelerator import make_accelerator
    from vlmkit.training.loop import train

    labels = load_digits().target
    paths = digit_images(work / "images", args.samples)
    rows = [{"image": p, "caption": f"a handwritten digit {labels[i]}", "label": int(labels[i])}
            for i, p in enumerate(paths)]  # fmt: skip
    data = work / "clip.json"
    data.write_text(json.dumps(rows))
    cfg = parse_config(ClipConfig, [
        "--data_path", str(data), "--output_dir", str(work / "out"), "--max_steps", str(args.steps),
        "--per_device_train_batch_size", str(args.batch_size), "--report_to", "none",
        "--logging_steps", "1000000", "--mixed_precision", "no",
    ])  # fmt: skip
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(output_dir=cfg.output_dir, gradient_accumulation_steps=1,
                                   mixed_precision="no", report_to=["none"])  # fmt: skip
    skips = SkipCounter()
    records = read_image_records(cfg.data_path, need_caption=True, image_folder=cfg.image_folder, skips=skips)
    tokenizer = build_caption_tokenizer(
        [r.caption for r in records], cfg.text_vocab_size, cfg.max_text_length
    )
    model = ClipDualEncoder(build_clip_model(cfg, tokenizer))
    dataset = ImageRecordDataset(records, clip_image_processor(cfg.image_size), skips=skips)
    collate = ClipCollator(tokenizer, cfg.max_text_length)
    stamps = []

    def timed_loss(m, batch):  # one stamp per step (accumulation 1): the gaps are whole steps, data included
        stamps.append(time.perf_counter())
        return clip_compute_loss(m, batch)

    result = train(cfg, accelerator, model, dataset, collate, timed_loss, count_items=lambda b: 1)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    step = median(gaps[1:] or gaps or [result.train_seconds])  # the first step pays one-off start-up costs
    return {
        "seconds": result.train_seconds,
        "step_seconds": step,
        "pairs_per_s": cfg.per_device_train_batch_size / step,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run(args, Path(tmp)))
    pairs_per_s = median([r["pairs_per_s"] for r in runs])
    result = {**vars(args), "runs": runs, "pairs_per_s": pairs_per_s}
    rows = [{"batch": args.batch_size, "steps": args.steps, "pairs/s (median)": pairs_per_s,
             "step s (median)": median([r["step_seconds"] for r in runs])}]  # fmt: skip
    notes = (
        f"Median of {args.repeats} runs (tiny CLIP of digits_clip.yaml: ViT 32px/8, 3 layers, width 64).\n\n"
    )
    notes += __doc__.split("\n\n", 2)[2]
    write_result("clip_throughput", result, title="Stage-0 CLIP pretraining throughput", rows=rows,
                 notes=notes, out_dir=Path(args.out))  # fmt: skip
    update_summary(Path(args.out), clip_pairs_per_s=round(pairs_per_s, 2))
    return result


if __name__ == "__main__":
    main()
