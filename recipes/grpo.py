"""Stage 4 (RL, critic-free): GRPO / Dr. GRPO / DAPO / RLOO with verifiable and learned rewards, for image,
audio and text-only prompts.

    # the verifiable digit reward on the embedded digits, from an under-trained stage-2 policy:
    python recipes/grpo.py --config recipes/configs/digits_grpo.yaml \
        --model_name_or_path outputs/digits/llava_stage2_weak
    # a stage-3 reward model plus a format reward, weighted; Dr. GRPO (no std scaling, no length bias):
    accelerate launch recipes/grpo.py --config recipes/configs/digits_grpo.yaml \
        --reward_model_name_or_path outputs/digits/reward_model --reward_funcs digit_match \
        --reward_weights 1.0,0.5 --scale_rewards none --loss_type dr_grpo
    # RLOO baseline, LoRA policy (the reference is the same weights with the adapters off):
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/grpo.py \
        --config recipes/configs/digits_grpo.yaml --advantage_baseline rloo --scale_rewards none --use_lora true

Writes the policy (or its LoRA adapter + connector) in from_pretrained form, config.yaml, metrics.json
(eval_accuracy, eval_reward, eval_kl and the same on the starting policy: *_before), train_log.jsonl
(reward mean/std and per reward source, zero-std groups, KL, clip fractions, entropy, lengths, seconds per
step), loss.png and README.md into --output_dir. With --sft_baseline true (the digits configs) it then trains
the compute-matched supervised baseline (vlmkit/rlhf/sft_baseline.py) and says in metrics.json whether GRPO beat it.
"""

from __future__ import annotations

from vlmkit.config.grpo import GRPOConfig
from vlmkit.config.parser import parse_config
from vlmkit.data.loading import read_samples, subsample
from vlmkit.data.records import SkipCounter
from vlmkit.eval.answers import write_examples_before_after
from vlmkit.hub.lifecycle import HUB, vlm_card
from vlmkit.rlhf.grpo_trainer import GRPOTrainer
from vlmkit.rlhf.rewards import build_reward
from vlmkit.rlhf.rl_kinds import rl_kind
from vlmkit.rlhf.sft_baseline import check_sft_baseline, compare_with_sft_baseline
from vlmkit.rlhf.value_model import ActorCritic, frozen_reference, prepare_frozen
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.run import Run

EXAMPLES_FILE = "eval_examples.json"
NUM_EXAMPLES = 12  # held-out prompts whose answers before and after GRPO are saved (and shown in reports)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(GRPOConfig, argv, prog="grpo", description=__doc__)
    run = Run(cfg, "grpo", hub=HUB)
    accelerator = run.accelerator
    check_sft_baseline(cfg, accelerator, held_out=bool(cfg.eval_data_path))

    # The policy (full or LoRA; a vlmkit composite or a native transformers VLM) and, when the loss has a KL
    # term, the frozen reference it started from. With LoRA the connector stays as it was: the reference is
    # the policy with its adapters off.
    kind = rl_kind(cfg)
    policy, processor = kind.build(cfg, tune_connector=not cfg.use_lora)
    kind.set_trainable(policy, cfg, "instruct", tune_connector=not kind.is_peft(policy))
    reference = None
    if cfg.beta > 0:
        reference = frozen_reference(policy, lambda: kind.build_reference(cfg), accelerator)
    reward = build_reward(cfg, prepare=lambda frozen: prepare_frozen(frozen, accelerator))

    skips = SkipCounter()
    prompts = read_samples(cfg, cfg.data_path, skips)
    eval_prompts = []
    if cfg.eval_data_path:
        eval_prompts = subsample(read_samples(cfg, cfg.eval_data_path, skips), cfg.max_eval_samples, cfg.seed)
    trainer = GRPOTrainer(
        cfg, accelerator, ActorCritic(policy), processor, reward, prompts, reference=reference
    )

    before = trainer.evaluate(eval_prompts) if eval_prompts else {}  # the starting policy
    shown = eval_prompts[:NUM_EXAMPLES]
    answers_before = trainer.greedy_answers(shown)
    result = trainer.train()
    trainer.save(run.out)  # collective (GRPO evaluates on every process)

    metrics = {
        "global_step": result.global_step,
        "bad_steps": result.bad_steps,
        **parameter_layout(accelerator, trainer.model),
    }
    metrics["train_samples"] = result.global_step * cfg.rollout_batch_size * accelerator.num_processes
    if result.history:
        metrics["train_reward"] = result.history[-1]["reward_mean"]
    if eval_prompts:
        after = trainer.evaluate(eval_prompts)
        metrics.update({f"eval_{k}": v for k, v in after.items()})
        metrics.update({f"eval_{k}_before": before[k] for k in ("accuracy", "reward")})
    answers_after = trainer.greedy_answers(shown)
    if run.is_main_process:
        write_examples_before_after(run.out / EXAMPLES_FILE, shown, answers_before, answers_after)
    if cfg.sft_baseline:  # the same start, prompts and updates, trained on the reference answers
        metrics.update(
            compare_with_sft_baseline(  # from a policy built as the one above
                trainer, eval_prompts, lambda: kind.build(cfg, tune_connector=not cfg.use_lora)[0]
            )
        )
    card = vlm_card(cfg, trainer.bare.policy, stage="stage 4 (GRPO)")
    return run.finish(metrics, card=card, skips=skips, plot_keys=("reward_mean", "kl", "loss"))


if __name__ == "__main__":
    main()
