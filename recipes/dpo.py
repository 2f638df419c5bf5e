"""DPO: preference optimisation of a stage-2 policy against its frozen starting point (stage 4 alternative).

    accelerate launch recipes/dpo.py --config recipes/configs/digits_dpo.yaml \
        --model_name_or_path outputs/digits/llava_stage2_weak
    python recipes/dpo.py --config recipes/configs/digits_dpo.yaml --use_lora true --learning_rate 2e-3
    # your own pairs (rows: prompt, chosen, rejected, images):
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/dpo.py \
        --model_name_or_path out/stage2 --use_lora true --data_path prefs.jsonl \
        --eval_data_path prefs_eval.jsonl --image_folder images/ --output_dir out/dpo

The reference is the starting policy: with --use_lora the same weights with the adapters switched off,
otherwise a frozen copy. Writes the policy (model or adapter), config.yaml, metrics.json (eval_accuracy and
eval_accuracy_before on --eval_prompts_path; eval_loss, eval_reward_accuracy, eval_reward_margin on
--eval_data_path), train_log.jsonl, loss.png and README.md into --output_dir.
"""

from __future__ import annotations

import json

from vlmkit.config.parser import parse_config
from vlmkit.config.rlhf import DPOConfig
from vlmkit.data.loading import read_samples, subsample
from vlmkit.data.preference import PreferenceCollator, count_pairs, preference_dataset
from vlmkit.data.records import SkipCounter
from vlmkit.eval.answers import answer_accuracy
from vlmkit.hub.lifecycle import maybe_push, write_vlm_card
from vlmkit.rlhf.dpo import DPOLoss, build_dpo_policy, evaluate_dpo
from vlmkit.training.loop import train
from vlmkit.training.run import end_run, finish_run, save_model, start_run


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(DPOConfig, argv, prog="dpo", description=__doc__)
    accelerator, out, started = start_run(cfg)

    model, processor, reference = build_dpo_policy(cfg)
    skips = SkipCounter()
    prompts = []
    if cfg.eval_generation and cfg.eval_prompts_path:
        prompts = read_samples(cfg, cfg.eval_prompts_path, skips, format="auto")
        prompts = subsample(prompts, cfg.max_eval_samples, cfg.seed)

    def accuracy(policy) -> tuple[float, list[dict]]:
        return answer_accuracy(
            policy, processor, prompts,
            batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        )  # fmt: skip

    metrics = {}
    if prompts and accelerator.is_main_process:
        metrics["eval_accuracy_before"] = accuracy(model.to(accelerator.device))[0]

    train_set = preference_dataset(cfg, cfg.data_path, processor, skips)
    collate = PreferenceCollator(processor.tokenizer.pad_token_id)
    loss_fn = DPOLoss(reference, cfg.beta, cfg.label_smoothing, rpo_alpha=cfg.rpo_alpha)
    result = train(cfg, accelerator, model, train_set, collate, loss_fn, count_items=count_pairs)
    model = result.model

    save_model(accelerator, model, processor, out)
    metrics.update(train_loss=result.history[-1]["loss"], global_step=result.global_step)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if cfg.eval_data_path:
            eval_set = preference_dataset(
                cfg, cfg.eval_data_path, processor, skips, limit=cfg.max_eval_samples
            )
            scores = evaluate_dpo(
                unwrapped, reference, eval_set, collate, beta=cfg.beta,
                label_smoothing=cfg.label_smoothing, batch_size=cfg.per_device_eval_batch_size,
            )  # fmt: skip
            metrics.update({f"eval_{k}": v for k, v in scores.items()})
        if prompts:
            metrics["eval_accuracy"], examples = accuracy(unwrapped)
            (out / "eval_examples.json").write_text(json.dumps(examples[:50], indent=2))
        metrics = finish_run(out, metrics, started=started, title="dpo", skips=skips)
        write_vlm_card(out, cfg, unwrapped, metrics, stage="DPO (preference optimisation)")
        maybe_push(cfg, out)
    end_run(accelerator)
    return metrics


if __name__ == "__main__":
    main()
