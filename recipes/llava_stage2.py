"""Stage 2 (instruct): train connector + LLM (full, LoRA or QLoRA) on conversations; encoder frozen.

    accelerate launch recipes/llava_stage2.py --config recipes/configs/digits_llava_stage2.yaml \
        --model_name_or_path outputs/digits/stage1
    python recipes/llava_stage2.py --config recipes/configs/digits_llava_stage2.yaml --use_lora true
    # from separate parts, as LLaVA users do with mm_projector.bin:
    python recipes/llava_stage2.py --vision_tower openai/clip-vit-large-patch14-336 \
        --language_model lmsys/vicuna-7b-v1.5 --pretrain_connector stage1/connector.safetensors \
        --data_path llava_v1_5_mix665k.json --image_folder images/ --output_dir out/stage2

Writes the model (or the LoRA adapter + connector), config.yaml, metrics.json (eval_accuracy, eval_loss),
train_log.jsonl, loss.png and README.md into --output_dir.
"""

from __future__ import annotations

import json

from vlmkit.config.parser import parse_config
from vlmkit.config.recipes import Stage2Config
from vlmkit.data.loading import read_samples, sft_dataset, subsample
from vlmkit.data.records import SkipCounter
from vlmkit.eval.answers import answer_accuracy
from vlmkit.eval.loss import eval_token_loss
from vlmkit.hub.lifecycle import HUB, vlm_card
from vlmkit.models.build import build_vlm, load_vlm
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.freeze import set_trainable
from vlmkit.training.loop import train
from vlmkit.training.losses import sft_loss
from vlmkit.training.run import Run
from vlmkit.training.train_data import build_train_data


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Stage2Config, argv, prog="llava_stage2", description=__doc__)
    run = Run(cfg, "llava_stage2", hub=HUB)

    model, processor = build_vlm(cfg, cfg)
    set_trainable(model, "instruct", tune_encoder=cfg.tune_encoder)
    lr_overrides = {"connector.": cfg.connector_learning_rate} if cfg.connector_learning_rate else None

    skips = SkipCounter()
    train_set, collate, sampler = build_train_data(
        cfg, processor, skips, model=model, accelerator=run.accelerator
    )
    result = train(
        cfg, run.accelerator, model, train_set, collate, sft_loss, lr_overrides=lr_overrides, sampler=sampler
    )
    run.save(result.model, processor)

    def evaluate(trained) -> dict:
        eval_set = sft_dataset(cfg, cfg.eval_data_path, processor, skips)
        scores = {"eval_loss": eval_token_loss(trained, eval_set, collate, cfg.per_device_eval_batch_size)}
        if cfg.eval_generation:
            samples = subsample(read_samples(cfg, cfg.eval_data_path), cfg.max_eval_samples, cfg.seed)
            scores["eval_accuracy"], examples = answer_accuracy(
                trained, processor, samples,
                batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
            )  # fmt: skip
            (run.out / "eval_examples.json").write_text(json.dumps(examples[:50], indent=2))
        return scores

    metrics = {"train_loss": result.history[-1]["loss"], "global_step": result.global_step}
    metrics.update(parameter_layout(run.accelerator, result.model))  # world size, parameters per rank
    if cfg.eval_data_path:
        metrics.update(run.evaluate(evaluate, result.model, load=lambda path: load_vlm(path)[0]))
    card = vlm_card(cfg, run.unwrap(result.model), stage="stage 2 (instruct)")
    return run.finish(metrics, card=card, skips=skips)


if __name__ == "__main__":
    main()
