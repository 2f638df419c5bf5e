"""DPO: preference optimisation of a stage-2 policy against its frozen starting point (stage 4 alternative).

    # pure DPO (rpo_alpha 0), then its compute-matched SFT baseline on the chosen answers:
    accelerate launch recipes/dpo.py --config recipes/configs/digits_dpo.yaml \
        --model_name_or_path outputs/digits/llava_stage2_weak
    # RPO (DPO + NLL on the chosen answers):
    python recipes/dpo.py --config recipes/configs/digits_rpo.yaml --model_name_or_path outputs/digits/llava_stage2_weak
    python recipes/dpo.py --config recipes/configs/digits_dpo.yaml --use_lora true --learning_rate 2e-3
    # your own pairs (rows: prompt, chosen, rejected, images):
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/dpo.py \
        --model_name_or_path out/stage2 --use_lora true --data_path prefs.jsonl \
        --eval_data_path prefs_eval.jsonl --image_folder images/ --output_dir out/dpo

The reference is the starting policy: with --use_lora the same weights with the adapters switched off
(the way to run under ZeRO-3), otherwise a frozen copy. Writes the policy (model or adapter), config.yaml,
metrics.json (eval_accuracy and eval_accuracy_before on --eval_prompts_path; on --eval_data_path eval_loss,
eval_reward_accuracy and eval_reward_margin of the implicit reward, and the policy's own chosen-vs-rejected
eval_likelihood_accuracy / eval_logp_margin with their *_before on the start), train_log.jsonl, loss.png and
README.md into --output_dir. --sft_baseline true adds the same metrics of the compute-matched SFT baseline
(baseline_*: the same pairs and updates, trained on the chosen answers) and baseline_beaten.
"""

from __future__ import annotations

import json

from vlmkit.config.parser import parse_config
from vlmkit.config.rlhf import DPOConfig
from vlmkit.data.loading import read_samples, subsample
from vlmkit.data.preference import count_pairs
from vlmkit.data.records import SkipCounter
from vlmkit.eval.answers import answer_accuracy
from vlmkit.hub.lifecycle import HUB, vlm_card
from vlmkit.rlhf.dpo import DPOLoss, build_dpo_policy, evaluate_dpo
from vlmkit.rlhf.sft_baseline import check_sft_baseline, paired_comparison, train_sft_on_chosen
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.loop import train
from vlmkit.training.run import Run
from vlmkit.training.vlm_kinds import vlm_kind


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(DPOConfig, argv, prog="dpo", description=__doc__)
    run = Run(cfg, "dpo", hub=HUB)
    check_sft_baseline(cfg, run.accelerator, held_out=bool(cfg.eval_data_path or cfg.eval_prompts_path))

    model, processor, reference = build_dpo_policy(cfg)
    skips = SkipCounter()
    prompts = []
    if cfg.eval_generation and cfg.eval_prompts_path:
        prompts = read_samples(cfg, cfg.eval_prompts_path, skips, format="auto")
        prompts = subsample(prompts, cfg.max_eval_samples, cfg.seed)

    kind = vlm_kind(cfg)  # a vlmkit composite or a native transformers VLM: the same steps below
    train_set, collate = kind.preference_data(cfg, cfg.data_path, processor, skips)
    loss_fn = DPOLoss(reference, cfg.beta, cfg.label_smoothing, rpo_alpha=cfg.rpo_alpha)
    result = train(cfg, run.accelerator, model, train_set, collate, loss_fn, count_items=count_pairs)
    run.save(result.model, processor)

    def accuracy(policy) -> tuple[float, list[dict]]:
        return answer_accuracy(
            policy, processor, prompts,
            batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        )  # fmt: skip

    graded: dict[str, list[bool]] = {}  # per held-out question: right or not, for the paired comparison

    def evaluate(trained, name: str = "dpo") -> dict:
        scores = {}
        if cfg.eval_data_path:
            eval_set, _ = kind.preference_data(
                cfg, cfg.eval_data_path, processor, skips, limit=cfg.max_eval_samples
            )
            pairs = evaluate_dpo(
                trained, reference, eval_set, collate, beta=cfg.beta,
                label_smoothing=cfg.label_smoothing, batch_size=cfg.per_device_eval_batch_size,
            )  # fmt: skip
            scores.update({f"eval_{k}": v for k, v in pairs.items()})
        if prompts:
            if name == "dpo":  # the start: the trained policy with its adapters off, or the frozen copy
                with reference.as_model(trained) as start:
                    scores["eval_accuracy_before"] = accuracy(start)[0]
            scores["eval_accuracy"], examples = accuracy(trained)
            graded[name] = [ex["correct"] for ex in examples]
            if name == "dpo":
                (run.out / "eval_examples.json").write_text(json.dumps(examples[:50], indent=2))
        return scores

    metrics = {"train_loss": result.history[-1]["loss"], "global_step": result.global_step}
    metrics.update(parameter_layout(run.accelerator, result.model))  # world size, parameters per rank
    if cfg.eval_data_path or prompts:
        metrics.update(run.evaluate(evaluate, result.model, load=kind.load))
    if cfg.sft_baseline:  # the same start, pairs and updates, trained on the chosen answers
        baseline = train_sft_on_chosen(cfg, run.accelerator, train_set, collate)
        scores = run.evaluate(lambda trained: evaluate(trained, "sft_baseline"), baseline.model)
        metrics.update({f"baseline_{k}": v for k, v in scores.items() if not k.endswith("_before")})
        if graded.get("sft_baseline"):
            metrics.update(paired_comparison(graded["dpo"], graded["sft_baseline"]))
    card = vlm_card(cfg, run.unwrap(result.model), stage="DPO (preference optimisation)")
    return run.finish(metrics, card=card, skips=skips)


if __name__ == "__main__":
    main()
