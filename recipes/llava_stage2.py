"""Stage 2 (instruct): train connector + LLM (full, LoRA or QLoRA) on conversations; encoder frozen.

    accelerate launch recipes/llava_stage2.py --config recipes/configs/digits_llava_stage2.yaml \
        --model_name_or_path outputs/digits/stage1
    python recipes/llava_stage2.py --config recipes/configs/digits_llava_stage2.yaml --use_lora true
    # a transformers VLM (Qwen2-VL, LLaVA-hf, SmolVLM, Gemma 3...): LoRA on its LLM, connector in full
    python recipes/llava_stage2.py --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --use_lora true \
        --data_path train.json --image_folder images/ --output_dir out/qwen_lora
    # from separate parts, as LLaVA users do with mm_projector.bin:
    python recipes/llava_stage2.py --vision_tower openai/clip-vit-large-patch14-336 \
        --language_model lmsys/vicuna-7b-v1.5 --pretrain_connector stage1/connector.safetensors \
        --data_path llava_v1_5_mix665k.json --image_folder images/ --output_dir out/stage2

Writes the model (or the LoRA adapter + connector, and the processor files), config.yaml, metrics.json (eval_accuracy, eval_loss),
train_log.jsonl, loss.png and README.md into --output_dir.
"""

from __future__ import annotations

import json

from vlmkit.config.parser import parse_config
from vlmkit.config.recipes import Stage2Config
from vlmkit.data.loading import read_samples, subsample
from vlmkit.data.records import SkipCounter
from vlmkit.eval.answers import answer_accuracy
from vlmkit.eval.loss import eval_token_loss
from vlmkit.hub.lifecycle import HUB, vlm_card
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.loop import train
from vlmkit.training.run import Run
from vlmkit.training.vlm_kinds import vlm_kind


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Stage2Config, argv, prog="llava_stage2", description=__doc__)
    run = Run(cfg, "llava_stage2", hub=HUB)

    kind = vlm_kind(cfg)  # a vlmkit composite or a native transformers VLM: the same steps below
    model, processor = kind.build(cfg)
    kind.set_trainable(model, cfg, "instruct")

    skips = SkipCounter()
    train_set, collate, sampler = kind.train_data(
        cfg, processor, skips, model=model, accelerator=run.accelerator
    )
    result = train(
        cfg, run.accelerator, model, train_set, collate, kind.loss,
        lr_overrides=kind.lr_overrides(model, cfg), sampler=sampler,
    )  # fmt: skip
    run.save(result.model, processor)

    def evaluate(trained) -> dict:
        eval_set = kind.eval_data(cfg, cfg.eval_data_path, processor, skips)
        batch_size = cfg.per_device_eval_batch_size
        scores = {"eval_loss": eval_token_loss(trained, eval_set, collate, batch_size, loss_fn=kind.loss)}
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
        metrics.update(run.evaluate(evaluate, result.model, load=kind.load))
    card = vlm_card(cfg, run.unwrap(result.model), stage="stage 2 (instruct)")
    return run.finish(metrics, card=card, skips=skips)


if __name__ == "__main__":
    main()
