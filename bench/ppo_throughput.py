"""PPO throughput: the PPO update against a stage-2 SFT step over the same tokens, and the generation share.

    python bench/ppo_throughput.py            # full run (a few minutes on 2 busy CPU cores)
    python bench/ppo_throughput.py --quick    # smoke: seconds

One run, one process, the same tiny VLM (CLIP-architecture tower, mlp2x_gelu connector, Llama-architecture
LLM) and the same token sequences:
1. PPO: `vlmkit.rlhf.ppo_trainer.PPOTrainer` exactly as recipes/ppo.py builds it (policy + frozen reference +
   value head on the policy, Python reward `digit_match`) on digit-image prompts. The process CPU time of
   each step's generation (`sample`), whole rollout (`make_experience`: generation, scoring, policy, value
   and reference passes) and update (`update`: `num_ppo_epochs` passes over the batch) is recorded.
2. SFT: vlmkit's stage-2 training loop (`training.loop.train` with `sft_loss`, the loop recipes/llava_stage2.py
   runs) on a freshly built policy, over the very micro-batches PPO updated on: each PPO rollout micro-batch
   (prompt + response, the same padding) becomes an SFT batch with labels on the response tokens, with the
   encoder features cached as stage 2's `--feature_cache_dir` would (the cheapest SFT, so the ratio is not
   flattered), `num_ppo_epochs` epochs, one optimizer step per micro-batch as in PPO.
`ppo_update_vs_sft_tokens` = PPO update tokens per CPU-second / SFT supervised tokens per CPU-second, where
a PPO update's tokens are its response tokens times `num_ppo_epochs` (each pass trains on each once).
`ppo_generation_share` = generation CPU time / (rollout + update) CPU time per PPO step. Both use process
CPU time (`time.process_time`, all threads), not wall time: the machine is shared, and CPU time measures
the work done rather than what other users did. Steps after the first (warm-up) only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    TINY_LLM,
    TINY_VISION,
    CpuClock,
    digit_images,
    peak_rss_mb,
    update_summary,
    write_result,
)

QUICK = [
    "--steps",
    "2",
    "--batch_size",
    "2",
    "--mini_batches",
    "1",
    "--ppo_epochs",
    "1",
    "--max_new_tokens",
    "3",
]


def ppo_config(args, out: Path):
    from vlmkit.config.parser import parse_config
    from vlmkit.config.ppo import PPOConfig

    argv = [
        "--vision_tower", getattr(args, "vision_tower", TINY_VISION),
        "--language_model", getattr(args, "language_model", TINY_LLM), "--output_dir", str(out),
        "--reward_function", "vlmkit.rlhf.rewards:digit_match", "--value_model", "policy_head",
        "--per_device_train_batch_size", str(args.batch_size), "--num_mini_batches", str(args.mini_batches),
        "--num_ppo_epochs", str(args.ppo_epochs), "--max_new_tokens", str(args.max_new_tokens),
        "--max_steps", str(args.steps), "--report_to", "none", "--logging_steps", "1000000",
        "--mixed_precision", getattr(args, "mixed_precision", "no"), "--save_steps", "0",
    ]  # fmt: skip
    return parse_config(PPOConfig, argv)


def sft_config(cfg, out: Path, epochs: int):
    """Stage-2 config with PPO's optimizer settings; one prepared micro-batch per loader item."""
    from vlmkit.config.parser import parse_config
    from vlmkit.config.recipes import Stage2Config

    argv = [
        "--vision_tower", TINY_VISION, "--language_model", TINY_LLM, "--output_dir", str(out),
        "--data_path", "unused.json", "--per_device_train_batch_size", "1", "--num_train_epochs", str(epochs),
        "--learning_rate", str(cfg.learning_rate), "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
        "--max_grad_norm", str(cfg.max_grad_norm), "--report_to", "none", "--logging_steps", "1000000",
        "--mixed_precision", "no", "--save_steps", "0", "--seed", str(cfg.seed),
    ]  # fmt: skip
    return parse_config(Stage2Config, argv)


def prompts(work: Path, n: int) -> list:
    from sklearn.datasets import load_digits

    from vlmkit.data.records import Sample, Turn

    labels = load_digits().target
    return [
        Sample(
            [Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", str(labels[i % len(labels)]))],
            [p],
            source="bench",
            index=i,
        )  # fmt: skip
        for i, p in enumerate(digit_images(work / "images", n))
    ]


def run_ppo(args, work: Path) -> tuple[dict, list]:
    """PPO steps on the tiny VLM as recipes/ppo.py wires them; per-step CPU times and the experiences."""
    from vlmkit.models.build import build_vlm
    from vlmkit.rlhf.ppo_trainer import PPOTrainer
    from vlmkit.rlhf.rewards import build_reward
    from vlmkit.rlhf.value_model import build_actor_critic, frozen_reference
    from vlmkit.training.accelerator import make_accelerator

    cfg = ppo_config(args, work / "ppo")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(output_dir=cfg.output_dir, gradient_accumulation_steps=1,
                                   mixed_precision=cfg.mixed_precision, report_to=["none"])  # fmt: skip
    torch.manual_seed(0)
    policy, processor = build_vlm(cfg, cfg)
    reference = frozen_reference(policy, lambda: build_vlm(cfg, None, is_trainable=False)[0], accelerator)
    model = build_actor_critic(policy, cfg.value_model, lora=cfg)
    data = prompts(work, max(cfg.rollout_batch_size * 2, 16))
    trainer = PPOTrainer(cfg, accelerator, model, processor, build_reward(cfg), data, reference=reference)
    clock, experiences = CpuClock(), []
    for name in ("sample", "update"):
        clock.wrap(trainer, name)
    clock.wrap(trainer, "make_experience", keep=experiences)
    history = trainer.train().history
    skip = 1 if len(history) > 1 else 0  # the first step pays one-off costs
    tokens = [float(e.mask.sum()) * cfg.num_ppo_epochs for e in experiences]
    # `sample` also runs for nothing else during training (no evaluation here): one call per step.
    gen, roll, upd = (clock.calls[k][skip:] for k in ("sample", "make_experience", "update"))
    stats = {
        "ppo_update_tokens": sum(tokens[skip:]),
        "ppo_update_cpu_seconds": sum(upd),
        "ppo_update_tokens_per_cpu_s": sum(tokens[skip:]) / sum(upd),
        "generation_cpu_seconds": sum(gen), "rollout_cpu_seconds": sum(roll),
        "generation_share": sum(gen) / (sum(roll) + sum(upd)),
        "rollout_share": sum(roll) / (sum(roll) + sum(upd)),
        "responses_per_cpu_s": len(experiences[0].mask) * len(upd) / (sum(roll) + sum(upd)),
        "response_tokens_mean": sum(float(e.mask.sum(1).float().mean()) for e in experiences) / len(experiences),
        "sequence_length": experiences[-1].rollout.query_ids.shape[1] + experiences[-1].rollout.response_ids.shape[1],
        "ppo_peak_rss_mb": peak_rss_mb(),
        "history": [{k: h[k] for k in ("step", "rollout_seconds", "update_seconds")} for h in history],
    }  # fmt: skip
    micro = [exp.rollout.select(rows) for exp in experiences for rows in trainer.chunks(len(exp.rollout))]
    return stats, micro


def sft_batch(rollout) -> dict:
    """A stage-2 SFT batch over a rollout's prompt + response: labels on the response tokens only."""
    inputs = rollout.model_inputs()
    prompt = torch.full_like(rollout.query_ids, -100)
    response = rollout.response_ids.masked_fill(~rollout.response_mask.bool(), -100)
    return {**inputs, "media": None, "labels": torch.cat([prompt, response], dim=1)}


def run_sft(args, cfg_ppo, micro: list, work: Path) -> dict:
    """vlmkit's stage-2 loop over the PPO micro-batches; CPU time per step from one collate to the next."""
    from vlmkit.models.build import build_vlm
    from vlmkit.training.accelerator import make_accelerator
    from vlmkit.training.freeze import set_trainable
    from vlmkit.training.loop import count_supervised_tokens, train
    from vlmkit.training.losses import sft_loss

    cfg = sft_config(cfg_ppo, work / "sft", args.ppo_epochs)
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(output_dir=cfg.output_dir, gradient_accumulation_steps=1,
                                   mixed_precision="no", report_to=["none"])  # fmt: skip
    torch.manual_seed(0)
    model, _ = build_vlm(cfg, cfg)
    set_trainable(model, "instruct", log=False)
    batches = [sft_batch(r) for r in micro]
    marks: list[tuple[float, int]] = []  # (CPU time when a batch is fetched, its supervised tokens)

    def collate(items: list[dict]) -> dict:
        batch = items[0]
        marks.append((time.process_time(), count_supervised_tokens(batch)))
        return batch

    train(cfg, accelerator, model, batches, collate, sft_loss)
    marks.append((time.process_time(), 0))
    # Step i runs between fetching batch i and batch i + 1; the first step (warm-up) is left out.
    steps = [(marks[i + 1][0] - marks[i][0], marks[i][1]) for i in range(1, len(marks) - 1)] or [
        (marks[1][0] - marks[0][0], marks[0][1])
    ]
    cpu, tokens = sum(s[0] for s in steps), sum(s[1] for s in steps)
    return {"sft_tokens": tokens, "sft_cpu_seconds": cpu, "sft_tokens_per_cpu_s": tokens / cpu,
            "sft_steps": len(marks) - 1, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="PPO steps (all but the first are measured)")
    parser.add_argument("--batch_size", type=int, default=16, help="per_device_train_batch_size")
    parser.add_argument("--mini_batches", type=int, default=4)
    parser.add_argument("--ppo_epochs", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="smoke mode: " + " ".join(QUICK))
    parser.add_argument("--out", default=str(RESULTS))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args([*QUICK, *argv] if "--quick" in argv else argv)
    responses = args.batch_size * args.mini_batches
    with tempfile.TemporaryDirectory() as tmp:
        ppo, micro = run_ppo(args, Path(tmp))
        sft = run_sft(args, ppo_config(args, Path(tmp) / "ppo"), micro, Path(tmp))
    ratio = ppo["ppo_update_tokens_per_cpu_s"] / sft["sft_tokens_per_cpu_s"]
    result = {"responses_per_step": responses, **vars(args), **ppo, **sft, "ppo_update_vs_sft_tokens": ratio}
    rows = [
        {"what": "PPO update", "tokens": ppo["ppo_update_tokens"], "CPU s": ppo["ppo_update_cpu_seconds"],
         "tokens/CPU-s": ppo["ppo_update_tokens_per_cpu_s"]},
        {"what": "stage-2 SFT, same micro-batches", "tokens": sft["sft_tokens"], "CPU s": sft["sft_cpu_seconds"],
         "tokens/CPU-s": sft["sft_tokens_per_cpu_s"]},
    ]  # fmt: skip
    notes = (
        f"**ppo_update_vs_sft_tokens = {ratio:.3f}**; generation share {ppo['generation_share']:.3f} "
        f"(whole rollout incl. scoring and policy/value/reference passes: {ppo['rollout_share']:.3f}); "
        f"{ppo['responses_per_cpu_s']:.2f} responses per CPU-second; peak RSS of the process "
        f"{sft['peak_rss_mb']:.0f} MiB (after PPO: {ppo['ppo_peak_rss_mb']:.0f} MiB).\n\n"
        f"{args.steps} PPO steps of {responses} responses (measured: steps 2..n), {args.ppo_epochs} PPO epochs x "
        f"{args.mini_batches} mini-batches of {args.batch_size}, up to {args.max_new_tokens} new tokens per "
        f"response (mean {ppo['response_tokens_mean']:.2f}), {ppo['sequence_length']} tokens per row with the "
        "prompt.\n\n" + __doc__.split("\n\n", 2)[2]
    )
    write_result("ppo_throughput", result, title="PPO update vs SFT, and generation share (tiny VLM, CPU time)",
                 rows=rows, notes=notes, out_dir=Path(args.out))  # fmt: skip
    update_summary(Path(args.out), ppo_generation_share=round(ppo["generation_share"], 4),
                   ppo_update_vs_sft_tokens=round(ratio, 4))  # fmt: skip
    return result


if __name__ == "__main__":
    main()
