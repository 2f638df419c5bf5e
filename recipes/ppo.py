"""Stage 4 (RLHF): PPO with a per-token KL penalty against the frozen starting policy, for image and audio VLMs.

    # RLHF on the embedded digits: the policy optimises the stage-3 reward model's score (standardised), and the
    # critic starts from that reward model; the digit checker only evaluates (gold_accuracy in the log):
    python recipes/ppo.py --config recipes/configs/digits_ppo.yaml \
        --model_name_or_path outputs/digits/llava_stage2_weak --reward_model_name_or_path outputs/digits/reward_model
    # the verifiable reward instead (1 when the answer is right), a value head on the policy:
    python recipes/ppo.py --config recipes/configs/digits_ppo_verifiable.yaml \
        --model_name_or_path outputs/digits/llava_stage2_weak
    # LoRA policy (the reference is the same weights with the adapters off) under DeepSpeed ZeRO-3:
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/ppo.py \
        --config recipes/configs/digits_ppo_verifiable.yaml --model_name_or_path outputs/digits/llava_stage2 \
        --use_lora true
    # audio: a spoken-digits policy and the audio reward model
    python recipes/ppo.py --config recipes/configs/spoken_digits_ppo.yaml \
        --model_name_or_path outputs/spoken_digits/audio_stage2_weak \
        --reward_model_name_or_path outputs/spoken_digits/reward_model

Writes the policy (or its LoRA adapter + connector) in from_pretrained form, value_model/, config.yaml,
metrics.json (eval_reward, eval_kl, eval_accuracy and the same measured on the starting policy: *_before),
train_log.jsonl (score, reward, gold accuracy of the rollouts, KL, KL coefficient, entropy, clip fraction,
approx-KL, value loss, explained variance, response length, rollout/update seconds per step), loss.png and
README.md into --output_dir.
With --sft_baseline true (the digits configs) it then trains the compute-matched supervised baseline (SFT on the
reference answers from the same start, the same prompts and updates: vlmkit/rlhf/sft_baseline.py; its log in
sft_baseline/) and adds baseline_eval_accuracy, baseline_accuracy_rl_minus_sft (+ stderr) and
baseline_beaten to metrics.json.
"""

from __future__ import annotations

from vlmkit.config.parser import parse_config
from vlmkit.config.ppo import PPOConfig
from vlmkit.data.loading import read_samples, subsample
from vlmkit.data.records import SkipCounter
from vlmkit.eval.answers import write_examples_before_after
from vlmkit.hub.lifecycle import HUB, vlm_card
from vlmkit.rlhf.ppo_trainer import PPOTrainer
from vlmkit.rlhf.rewards import build_reward
from vlmkit.rlhf.rl_kinds import rl_kind
from vlmkit.rlhf.sft_baseline import check_sft_baseline, compare_with_sft_baseline
from vlmkit.rlhf.value_model import build_actor_critic, frozen_reference, prepare_frozen
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.run import Run

EXAMPLES_FILE = "eval_examples.json"
NUM_EXAMPLES = 12  # held-out prompts whose answers before and after PPO are saved (and shown in reports)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(PPOConfig, argv, prog="ppo", description=__doc__)
    run = Run(cfg, "ppo", hub=HUB)
    accelerator = run.accelerator
    check_sft_baseline(cfg, accelerator, held_out=bool(cfg.eval_data_path))

    # Policy (full or LoRA; a vlmkit composite or a native transformers VLM), the frozen reference it started
    # from, and the value model. With LoRA the connector stays as it was (the reference is adapters off).
    kind = rl_kind(cfg)
    policy, processor = kind.build(cfg, tune_connector=not cfg.use_lora)
    reference = frozen_reference(policy, lambda: kind.build_reference(cfg), accelerator)
    model = build_actor_critic(
        policy, cfg.value_model, critic_path=cfg.value_model_name_or_path or cfg.reward_model_name_or_path, lora=cfg
    )  # fmt: skip

    # Reward: a stage-3 reward model and/or a Python function of the decoded answers (summed).
    reward = build_reward(cfg, prepare=lambda frozen: prepare_frozen(frozen, accelerator))

    skips = SkipCounter()
    prompts = read_samples(cfg, cfg.data_path, skips)
    eval_prompts = []
    if cfg.eval_data_path:
        eval_prompts = subsample(read_samples(cfg, cfg.eval_data_path, skips), cfg.max_eval_samples, cfg.seed)
    trainer = PPOTrainer(cfg, accelerator, model, processor, reward, prompts, reference=reference)

    before = trainer.evaluate(eval_prompts) if eval_prompts else {}  # the starting policy (= the reference)
    shown = eval_prompts[:NUM_EXAMPLES]
    answers_before = trainer.greedy_answers(shown)
    result = trainer.train()
    trainer.save(run.out)  # collective: the policy and value_model/ (PPO evaluates on every process)

    metrics = {
        "global_step": result.global_step,
        "bad_steps": result.bad_steps,
        **parameter_layout(accelerator, trainer.model),
    }
    metrics["train_samples"] = result.global_step * cfg.rollout_batch_size * accelerator.num_processes
    if result.history:
        metrics.update(train_score=result.history[-1]["score_mean"], train_kl=result.history[-1]["kl"])
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
    card = vlm_card(cfg, trainer.bare.policy, stage="stage 4 (PPO)")
    plots = ("score_mean", "gold_accuracy", "kl", "loss")
    return run.finish(metrics, card=card, skips=skips, plot_keys=plots)


if __name__ == "__main__":
    main()
