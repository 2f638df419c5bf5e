"""Stage 3 (reward): a stage-2 VLM + a scalar head trained on preference pairs (Bradley-Terry).

    accelerate launch recipes/reward_model.py --config recipes/configs/digits_reward_model.yaml \
        --model_name_or_path outputs/digits/llava_stage2
    python recipes/reward_model.py --config recipes/configs/digits_reward_model.yaml --use_lora true
    # on a transformers VLM (a native SFT output, or a released one such as Qwen/Qwen2.5-VL-3B-Instruct):
    python recipes/reward_model.py --config recipes/configs/digits_reward_model.yaml --model_name_or_path out/qwen_sft
    # your own pairs (rows: prompt, chosen, rejected, images):
    accelerate launch --config_file accelerate_configs/deepspeed_zero2.yaml recipes/reward_model.py \
        --model_name_or_path out/stage2 --data_path prefs.jsonl --eval_data_path prefs_eval.jsonl \
        --image_folder images/ --output_dir out/reward

Writes the reward model (VLM layout + score_head.safetensors; load it with
`vlmkit.rlhf.reward_model.load_reward_model`), config.yaml, metrics.json (eval_pairwise_accuracy,
eval_mean_margin, eval_loss), train_log.jsonl, loss.png and README.md into --output_dir.
"""

from __future__ import annotations

from vlmkit.config.parser import parse_config
from vlmkit.config.rlhf import RewardModelConfig
from vlmkit.data.preference import count_pairs
from vlmkit.data.records import SkipCounter
from vlmkit.hub.lifecycle import HUB, vlm_card
from vlmkit.rlhf.reward_model import (
    REWARD_USAGE,
    RewardLoss,
    build_reward_model,
    evaluate_pairs,
    reward_model_from_pretrained,
    set_reward_trainable,
)
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.loop import train
from vlmkit.training.run import Run
from vlmkit.training.vlm_kinds import vlm_kind


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(RewardModelConfig, argv, prog="reward_model", description=__doc__)
    run = Run(cfg, "reward_model", hub=HUB)

    kind = vlm_kind(cfg)  # a vlmkit composite or a native transformers VLM: the same steps below
    model, processor = build_reward_model(cfg, cfg)
    # With LoRA only the adapters and the head train; otherwise the connector and LLM too.
    set_reward_trainable(model, cfg)
    lr_overrides = {"score_head.": cfg.head_learning_rate} if cfg.head_learning_rate else None

    skips = SkipCounter()
    train_set, collate = kind.preference_data(cfg, cfg.data_path, processor, skips)
    loss_fn = RewardLoss(margin=cfg.margin, center_coef=cfg.center_rewards_coefficient)
    result = train(
        cfg, run.accelerator, model, train_set, collate, loss_fn, count_items=count_pairs,
        lr_overrides=lr_overrides,
    )  # fmt: skip
    run.save(result.model, processor)

    def evaluate(trained) -> dict:
        eval_set, _ = kind.preference_data(
            cfg, cfg.eval_data_path, processor, skips, limit=cfg.max_eval_samples
        )
        scores = evaluate_pairs(trained, eval_set, collate, cfg.per_device_eval_batch_size)
        return {f"eval_{k}": v for k, v in scores.items()}

    metrics = {"train_loss": result.history[-1]["loss"], "global_step": result.global_step}
    metrics.update(parameter_layout(run.accelerator, result.model))  # world size, parameters per rank
    if cfg.eval_data_path:
        metrics.update(run.evaluate(evaluate, result.model, load=reward_model_from_pretrained))
    card = vlm_card(cfg, run.unwrap(result.model), stage="stage 3 (reward model)", usage=REWARD_USAGE)
    return run.finish(metrics, card=card, skips=skips)


if __name__ == "__main__":
    main()
