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
from vlmkit.hub.lifecycle import maybe_push, write_vlm_card
from vlmkit.models.build import build_vlm, load_vlm
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.freeze import set_trainable
from vlmkit.training.loop import train
from vlmkit.training.losses import sft_loss
from vlmkit.training.run import end_run, finish_run, model_for_eval, save_model, start_run
from vlmkit.training.train_data import build_train_data


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Stage2Config, argv, prog="llava_stage2", description=__doc__)
    accelerator, out, started = start_run(cfg)

    model, processor = build_vlm(cfg, cfg)
    set_trainable(model, "instruct", tune_encoder=cfg.tune_encoder)
    lr_overrides = {"connector.": cfg.connector_learning_rate} if cfg.connector_learning_rate else None

    skips = SkipCounter()
    train_set, collate, sampler = build_train_data(
        cfg, processor, skips, model=model, accelerator=accelerator
    )
    result = train(
        cfg, accelerator, model, train_set, collate, sft_loss, lr_overrides=lr_overrides, sampler=sampler
    )
    model = result.model

    save_model(accelerator, model, processor, out)
    metrics = {"train_loss": result.history[-1]["loss"], "global_step": result.global_step}
    metrics.update(parameter_layout(accelerator, model))  # world size, parameters per rank (sharded?)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if cfg.eval_data_path:
            # Under ZeRO-3/FSDP: the consolidated model just saved, as no rank holds the whole one.
            trained = model_for_eval(accelerator, model, out, lambda path: load_vlm(path)[0])
            eval_set = sft_dataset(cfg, cfg.eval_data_path, processor, skips)
            metrics["eval_loss"] = eval_token_loss(trained, eval_set, collate, cfg.per_device_eval_batch_size)
            if cfg.eval_generation:
                samples = subsample(read_samples(cfg, cfg.eval_data_path), cfg.max_eval_samples, cfg.seed)
                accuracy, examples = answer_accuracy(
                    trained, processor, samples,
                    batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
                )  # fmt: skip
                metrics["eval_accuracy"] = accuracy
                (out / "eval_examples.json").write_text(json.dumps(examples[:50], indent=2))
        metrics = finish_run(out, metrics, started=started, title="llava_stage2", skips=skips)
        write_vlm_card(out, cfg, unwrapped, metrics, stage="stage 2 (instruct)")
        maybe_push(cfg, out)
    end_run(accelerator)
    return metrics


if __name__ == "__main__":
    main()
