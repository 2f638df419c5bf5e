"""GRPO throughput: vlmkit's GRPOTrainer vs TRL's GRPOTrainer, completions per CPU-second, same run.

    python bench/grpo_throughput.py            # full run (a few minutes on 2 busy CPU cores)
    python bench/grpo_throughput.py --quick    # smoke: seconds of work (plus imports)

What is compared. TRL cannot load vlmkit's composite VLM (encoder + connector + LLM) and vlmkit's
`build_vlm` needs an encoder, so both train the same causal LM on text-only prompts:
- vlmkit: `vlmkit.rlhf.grpo_trainer.GRPOTrainer` wired as recipes/grpo.py wires it, on the tiny composite
  VLM (CLIP-architecture tower, mlp2x_gelu connector, Llama-architecture LLM) with prompts that hold no
  image: only the LLM generates and trains (plus the connector, which sees a zero image in training
  passes so that every rank runs the same graph, work TRL does not do);
- TRL: `trl.GRPOTrainer` on that VLM's language model (same weights and tokenizer, saved with
  save_pretrained), loaded with `AutoModelForCausalLM`.
What differs is how the work is organised: vlmkit computes each prompt once per group (generation prefills
it once and gathers its KV cache for the group's completions; the reference and update passes run each
distinct prompt once and the completions per row: `vlmkit.rlhf.shared_prefix`), TRL once per completion.
Same prompts (chat template, one user turn), reward (a Python function: 1 when the completion holds the
answer digit), group size (`num_generations`), completions per step (`per_device_train_batch_size`, one
micro-batch, one generation per optimizer step), max completion length, sampling (temperature 1, top-p 1,
no top-k), loss (`loss_type`, `beta` with a frozen reference model on both, `epsilon`, `scale_rewards`,
one iteration), AdamW at the same learning rate, constant schedule, clipping at 1.0, fp32, no gradient
checkpointing, no vLLM, dropout off, logging every step with completions not logged.
Each framework runs in its own process (so peak RSS is its own, libraries included), alternating.
Measured: the process CPU time (`time.process_time`, all threads) of each step: vlmkit's `make_experience`
+ `update`, TRL's `on_step_begin` .. `on_step_end` (generation, scoring, reference pass, loss, optimizer
step). CPU time rather than wall time because the machine is shared: it measures the work done, not what
other users did. Steps after the first (warm-up) only; `--rounds` runs of each framework alternate, and the
median step is used (a loaded machine makes even CPU time jump). Completions are counted by the reward
function. `grpo_speedup_vs_trl` = vlmkit completions per CPU-second / TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, TINY_LLM, TINY_VISION, CpuClock, peak_rss_mb, update_summary, write_result  # noqa: E402

QUICK = [
    "--steps",
    "2",
    "--prompts_per_step",
    "2",
    "--num_generations",
    "2",
    "--max_completion_length",
    "4",
    "--rounds",
    "1",
]
LEARNING_RATE = 1e-5
sys.modules.setdefault("grpo_throughput", sys.modules[__name__])  # the reward's import path in workers
SEEN: list[int] = []  # completions the reward function scored in this process (one entry per call)


def questions(n: int) -> list[tuple[str, str]]:
    """(prompt text, answer digit) pairs: which digit comes after / before another."""
    out = []
    for i in range(n):
        d = i % 9
        out.append((f"Which digit comes after {d}? Answer with the digit.", str(d + 1)))
    return out


def digit_reward(completions: list, **kwargs) -> list[float]:
    """1.0 when the completion holds the answer digit. vlmkit passes `references`, TRL the `answer` column;
    TRL's conversational completions are lists of messages."""
    answers = kwargs.get("references") or kwargs.get("answer")
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    SEEN.append(len(texts))
    return [float(a is not None and re.search(rf"\b{a}\b", t) is not None) for t, a in zip(texts, answers)]


def grpo_argv(args) -> list[str]:
    return [
        "--vision_tower", TINY_VISION, "--language_model", TINY_LLM,
        "--reward_funcs", "grpo_throughput:digit_reward", "--num_generations", str(args.num_generations),
        "--per_device_train_batch_size", str(args.prompts_per_step * args.num_generations),
        "--max_completion_length", str(args.max_completion_length), "--max_steps", str(args.steps),
        "--beta", str(args.beta), "--loss_type", args.loss_type, "--scale_rewards", "group",
        "--num_iterations", "1", "--learning_rate", str(LEARNING_RATE), "--lr_scheduler_type", "constant",
        "--max_grad_norm", "1.0", "--temperature", "1.0", "--top_p", "1.0", "--mixed_precision", "no",
        "--report_to", "none", "--logging_steps", "1", "--save_steps", "0", "--seed", "0",
    ]  # fmt: skip


def prepare(args, work: Path) -> None:
    """Build the tiny VLM once and save its language model + tokenizer for TRL."""
    from vlmkit.config.grpo import GRPOConfig
    from vlmkit.config.parser import parse_config
    from vlmkit.models.build import build_vlm

    cfg = parse_config(GRPOConfig, [*grpo_argv(args), "--output_dir", str(work / "prep")])
    torch.manual_seed(0)
    policy, processor = build_vlm(cfg, cfg)
    policy.language_model.save_pretrained(work / "lm")
    processor.tokenizer.save_pretrained(work / "lm")


def measured(step_cpu: list[float], completions: list[int]) -> dict:
    skip = 1 if len(step_cpu) > 1 else 0  # the first step pays one-off costs
    cpu, done = sum(step_cpu[skip:]), sum(completions[skip:])
    return {"steps": len(step_cpu), "measured_steps": len(step_cpu) - skip, "completions": done,
            "cpu_seconds": cpu, "completions_per_cpu_s": done / cpu, "step_cpu_seconds": step_cpu}  # fmt: skip


def combine(rounds: list[dict]) -> dict:
    """One framework's rounds: completions per CPU-second from the median step (robust to load spikes)."""
    steps = [c for r in rounds for c in r["step_cpu_seconds"][r["steps"] - r["measured_steps"] :]]
    completions = sum(r["completions"] for r in rounds)
    median_step = statistics.median(steps)
    return {
        "rounds": rounds, "measured_steps": len(steps), "completions": completions, "cpu_seconds": sum(steps),
        "median_step_cpu_seconds": median_step, "completions_per_cpu_s": completions / len(steps) / median_step,
        "completions_per_cpu_s_total": completions / sum(steps),
        "completion_length_mean": statistics.mean(r["completion_length_mean"] for r in rounds),
        **({"phase_shares": shares(rounds)} if "phase_cpu_seconds" in rounds[0] else {}),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
    }  # fmt: skip


def shares(rounds: list[dict]) -> dict[str, float]:
    """Each phase's share of vlmkit's measured step CPU time, over all rounds."""
    phases = rounds[0]["phase_cpu_seconds"]
    totals = {k: sum(r["phase_cpu_seconds"][k] for r in rounds) for k in phases}
    whole = sum(totals.values())
    return {k: v / whole for k, v in totals.items()}


def run_vlmkit(args, work: Path) -> dict:
    """recipes/grpo.py's wiring (policy, frozen reference, rewards, trainer) on text-only prompts."""
    from vlmkit.config.grpo import GRPOConfig
    from vlmkit.config.parser import parse_config
    from vlmkit.data.records import Sample, Turn
    from vlmkit.models.build import build_vlm
    from vlmkit.rlhf.grpo_trainer import GRPOTrainer
    from vlmkit.rlhf.rewards import build_reward
    from vlmkit.rlhf.value_model import ActorCritic, frozen_reference
    from vlmkit.training.accelerator import make_accelerator
    from vlmkit.training.freeze import set_trainable

    cfg = parse_config(GRPOConfig, [*grpo_argv(args), "--output_dir", str(work / "vlmkit")])
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(output_dir=cfg.output_dir, gradient_accumulation_steps=1,
                                   mixed_precision="no", report_to=["none"])  # fmt: skip
    torch.manual_seed(0)
    policy, processor = build_vlm(cfg, cfg)
    set_trainable(policy, "instruct", tune_connector=not policy.is_peft)
    reference = frozen_reference(policy, lambda: build_vlm(cfg, None, is_trainable=False)[0], accelerator)
    prompts = [Sample([Turn("user", q), Turn("assistant", a)], [], source="bench", index=i)
               for i, (q, a) in enumerate(questions(args.prompts))]  # fmt: skip
    trainer = GRPOTrainer(cfg, accelerator, ActorCritic(policy), processor, build_reward(cfg), prompts,
                          reference=reference)  # fmt: skip
    clock = CpuClock()
    for phase in ("make_experience", "update", "sample", "ref_logprobs"):  # the last two run inside the first
        clock.wrap(trainer, phase)
    history = trainer.train().history
    step_cpu = [r + u for r, u in zip(clock.calls["make_experience"], clock.calls["update"])]
    return {**measured(step_cpu, SEEN), "completion_length_mean": sum(h["response_length"] for h in history)
            / len(history), "reward_mean": sum(h["reward_mean"] for h in history) / len(history),
            "phase_cpu_seconds": phase_seconds(clock.calls)}  # fmt: skip


def phase_seconds(calls: dict[str, list[float]]) -> dict[str, float]:
    """CPU seconds of vlmkit's measured steps (the first is left out) by phase: generation, the reference
    pass, the update, and the rest of the rollout (prompt batching, rewards, advantages)."""
    skip = 1 if len(calls["update"]) > 1 else 0
    total = {name: sum(times[skip:]) for name, times in calls.items()}
    rest = total["make_experience"] - total["sample"] - total.get("ref_logprobs", 0.0)
    return {"generation": total["sample"], "reference": total.get("ref_logprobs", 0.0),
            "update": total["update"], "rollout_rest": rest}  # fmt: skip


def run_trl(args, work: Path) -> dict:
    """TRL's GRPOTrainer on the same LM, prompts, reward and settings; CPU time per optimizer step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self):
            self.cpu: list[float] = []
            self.lengths: list[float] = []

        def on_step_begin(self, *_, **__):
            self.c0 = time.process_time()

        def on_step_end(self, *_, **__):
            self.cpu.append(time.process_time() - self.c0)

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    rows = [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in questions(args.prompts)]
    config = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        gradient_accumulation_steps=1, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, max_steps=args.steps, beta=args.beta,
        loss_type=args.loss_type, scale_rewards="group", num_iterations=1, learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, weight_decay=0.0, temperature=1.0,
        top_p=1.0, top_k=0, bf16=False, fp16=False, gradient_checkpointing=False, use_vllm=False, use_cpu=True,
        disable_dropout=True, logging_steps=1, log_completions=False, report_to="none", save_strategy="no",
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(work / "lm")
    model = AutoModelForCausalLM.from_pretrained(work / "lm", dtype=torch.float32)
    clock = StepClock()
    trainer = GRPOTrainer(model=model, reward_funcs=digit_reward, args=config, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[clock])  # fmt: skip
    out = trainer.train()
    per_step = [SEEN[i] for i in range(len(clock.cpu))] if len(SEEN) == len(clock.cpu) else SEEN
    return {**measured(clock.cpu, per_step), "completion_length_mean": sum(clock.lengths) / max(len(clock.lengths), 1),
            "train_loss": out.training_loss}  # fmt: skip


def worker(args) -> None:
    work = Path(args.work)
    result = run_vlmkit(args, work) if args.worker == "vlmkit" else run_trl(args, work)
    result["reward_calls"] = len(SEEN)
    result["peak_rss_mb"] = peak_rss_mb()
    (work / f"{args.worker}.json").write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="GRPO steps (all but the first are measured)")
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=8, help="group size G")
    parser.add_argument("--max_completion_length", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=36, help="distinct training prompts")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--loss_type", default="dapo")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each framework, alternating")
    parser.add_argument("--quick", action="store_true", help="smoke mode: " + " ".join(QUICK))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--worker", choices=("vlmkit", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args([*QUICK, *argv] if "--quick" in argv else argv)
    if args.worker:
        return worker(args)
    load_before = os.getloadavg()[0]
    rounds: dict[str, list[dict]] = {"vlmkit": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        prepare(args, Path(tmp))
        for _ in range(args.rounds):  # alternating, so both see the machine's load changes alike
            for name in rounds:
                cmd = [sys.executable, __file__, *argv, "--worker", name, "--work", tmp]
                subprocess.run(cmd, check=True)
                rounds[name].append(json.loads((Path(tmp) / f"{name}.json").read_text()))
    runs = {name: combine(r) for name, r in rounds.items()}
    speedup = runs["vlmkit"]["completions_per_cpu_s"] / runs["trl"]["completions_per_cpu_s"]
    settings = {k: getattr(args, k) for k in ("steps", "rounds", "prompts_per_step", "num_generations",
                                              "max_completion_length", "prompts", "beta", "loss_type")}  # fmt: skip
    result = {**settings, "learning_rate": LEARNING_RATE, "runs": runs, "grpo_speedup_vs_trl": speedup}
    rows = [
        {"framework": name, "measured steps": r["measured_steps"], "completions": r["completions"],
         "median step CPU s": r["median_step_cpu_seconds"], "completions/CPU-s": r["completions_per_cpu_s"],
         "completions/CPU-s (totals)": r["completions_per_cpu_s_total"],
         "mean completion tokens": r["completion_length_mean"], "peak RSS MiB": r["peak_rss_mb"]}
        for name, r in runs.items()
    ]  # fmt: skip
    load = (load_before, os.getloadavg()[0])
    result["load_average_1min_before_after"] = [round(x, 2) for x in load]
    phases = runs["vlmkit"]["phase_shares"]
    notes = (
        f"**grpo_speedup_vs_trl = {speedup:.3f}** (completions per CPU-second, vlmkit / TRL).\n\n"
        f"Where vlmkit's step goes (CPU time): "
        + ", ".join(f"{k} {v:.0%}" for k, v in phases.items())
        + " (generation is transformers' `generate` with the KV cache, the same call TRL makes; vlmkit "
        "prefills each prompt once per group and its reference and update passes run each distinct prompt "
        "once, `vlmkit/rlhf/shared_prefix.py`).\n\n"
        f"The machine is shared: 1-minute load average {load[0]:.1f} before and {load[1]:.1f} after, on "
        f"{os.cpu_count()} cores. CPU time still moves with the load (cache and core contention), so only "
        "the ratio within one run counts. On 2026-12-04, runs of one version of the code (before the shared "
        "prompt passes) with 2 rounds gave 1.23, 1.35 and 1.51, hence 4 rounds by default.\n\n"
        f"{args.rounds} alternating runs per framework of {args.steps} steps (measured: steps 2..n) of {args.prompts_per_step} prompts x "
        f"{args.num_generations} completions, up to {args.max_completion_length} completion tokens, "
        f"beta {args.beta}, loss_type {args.loss_type}, learning rate {LEARNING_RATE}.\n\n"
        + __doc__.split("\n\n", 2)[2]
    )
    write_result("grpo_throughput", result, title="GRPO: vlmkit vs TRL GRPOTrainer (tiny LM, CPU time)",
                 rows=rows, notes=notes, out_dir=Path(args.out))  # fmt: skip
    update_summary(Path(args.out), grpo_speedup_vs_trl=round(speedup, 4))
    return result


if __name__ == "__main__":
    main()
