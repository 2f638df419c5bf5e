"""PPO throughput: rollout (generation + scoring + reference/value passes) vs update time, responses/s.

    python bench/ppo_throughput.py                        # full run (a few minutes on 2 busy CPU cores)
    python bench/ppo_throughput.py --steps 2 --batch_size 4   # smoke

Runs `vlmkit.rlhf.ppo_trainer.PPOTrainer` exactly as recipes/ppo.py builds it (policy + frozen reference +
value head on the policy, Python reward `digit_match`) on the tiny VLM with digit-image prompts, and reads
the per-step `rollout_seconds` / `update_seconds` the trainer logs. `ppo_generation_share` = rollout time /
(rollout + update) time, median over the steps after the first (warm-up).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, TINY_LLM, TINY_VISION, digit_images, median, update_summary, write_result  # noqa: E402


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


def run(args, work: Path) -> list[dict]:
    """PPO steps on the tiny VLM as recipes/ppo.py wires them; returns the trainer's per-step history."""
    from vlmkit.models.build import build_vlm
    from vlmkit.rlhf.ppo_trainer import PPOTrainer
    from vlmkit.rlhf.rewards import build_reward
    from vlmkit.rlhf.value_model import build_actor_critic, frozen_reference
    from vlmkit.training.accelerator import make_accelerator

    cfg = ppo_config(args, work / "out")
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(output_dir=cfg.output_dir, gradient_accumulation_steps=1,
                                   mixed_precision=cfg.mixed_precision, report_to=["none"])  # fmt: skip
    torch.manual_seed(0)
    policy, processor = build_vlm(cfg, cfg)
    reference = frozen_reference(policy, lambda: build_vlm(cfg, None, is_trainable=False)[0], accelerator)
    model = build_actor_critic(policy, cfg.value_model, lora=cfg)
    reward = build_reward(cfg)
    data = prompts(work, max(cfg.rollout_batch_size * 2, 16))
    trainer = PPOTrainer(cfg, accelerator, model, processor, reward, data, reference=reference)
    return trainer.train().history


def summarize(history: list[dict], responses_per_step: int) -> dict:
    steps = history[1:] or history  # the first step pays one-off costs
    rollout = median([h["rollout_seconds"] for h in steps])
    update = median([h["update_seconds"] for h in steps])
    return {
        "rollout_seconds": rollout,
        "update_seconds": update,
        "step_seconds": rollout + update,
        "responses_per_s": responses_per_step / (rollout + update),
        "generation_share": rollout / (rollout + update),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=8, help="PPO steps (median over all but the first)")
    parser.add_argument("--batch_size", type=int, default=16, help="per_device_train_batch_size")
    parser.add_argument("--mini_batches", type=int, default=4)
    parser.add_argument("--ppo_epochs", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    responses = args.batch_size * args.mini_batches
    with tempfile.TemporaryDirectory() as tmp:
        history = run(args, Path(tmp))
    stats = summarize(history, responses)
    result = {"responses_per_step": responses, "steps": len(history), **vars(args), **stats,
              "history": [{k: h[k] for k in ("step", "rollout_seconds", "update_seconds")} for h in history]}  # fmt: skip
    rows = [{"responses/step": responses, "rollout s": stats["rollout_seconds"],
             "update s": stats["update_seconds"], "responses/s": stats["responses_per_s"],
             "generation share": stats["generation_share"]}]  # fmt: skip
    notes = (
        f"{len(history)} PPO steps, {args.ppo_epochs} PPO epochs x {args.mini_batches} mini-batches of "
        f"{args.batch_size}, {args.max_new_tokens} new tokens per response; medians over steps 2..n.\n\n"
        + __doc__.split("\n\n", 2)[2]
    )
    write_result("ppo_throughput", result, title="PPO rollout + update throughput (tiny VLM)", rows=rows,
                 notes=notes, out_dir=Path(args.out))  # fmt: skip
    update_summary(Path(args.out), ppo_generation_share=round(stats["generation_share"], 4))
    return result


if __name__ == "__main__":
    main()
