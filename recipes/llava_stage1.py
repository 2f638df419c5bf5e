"""Stage 1 (align): train the connector between a frozen encoder and a frozen LLM on captions.

    accelerate launch recipes/llava_stage1.py --config recipes/configs/digits_llava_stage1.yaml
    python recipes/llava_stage1.py --config recipes/configs/digits_llava_stage1.yaml --max_steps 50
    accelerate launch --config_file accelerate_configs/deepspeed_zero3.yaml recipes/llava_stage1.py \
        --vision_tower openai/clip-vit-large-patch14-336 --language_model lmsys/vicuna-7b-v1.5 \
        --data_path blip_laion_cc_sbu_558k.json --image_folder images/ --output_dir out/stage1

Writes the model (encoder/, language_model/, connector.safetensors), config.yaml, metrics.json
(eval_loss on held-out captions, with the media gain, text-only baseline, connector-collapse cosine and
caption digit accuracy of `vlmkit.eval.stage1`), train_log.jsonl, loss.png and README.md into --output_dir.
The embedded default's language model is the text-pretrained tiny LLM of recipes/lm_pretrain.py.
"""

from __future__ import annotations

from vlmkit.config.parser import parse_config
from vlmkit.config.recipes import Stage1Config
from vlmkit.data.loading import read_samples, sft_dataset, subsample
from vlmkit.data.records import SkipCounter
from vlmkit.eval.loss import eval_token_loss
from vlmkit.eval.stage1 import evaluate_alignment
from vlmkit.hub.lifecycle import HUB, vlm_card
from vlmkit.models.build import build_vlm, load_vlm
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.freeze import set_trainable
from vlmkit.training.loop import train
from vlmkit.training.losses import sft_loss
from vlmkit.training.run import Run
from vlmkit.training.train_data import build_train_data


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(Stage1Config, argv, prog="llava_stage1", description=__doc__)
    run = Run(cfg, "llava_stage1", hub=HUB)

    model, processor = build_vlm(cfg)
    set_trainable(model, "align")

    skips = SkipCounter()
    train_set, collate, sampler = build_train_data(
        cfg, processor, skips, model=model, accelerator=run.accelerator
    )
    result = train(cfg, run.accelerator, model, train_set, collate, sft_loss, sampler=sampler)
    run.save(result.model, processor)

    def evaluate(trained) -> dict:
        eval_set = sft_dataset(cfg, cfg.eval_data_path, processor, skips)
        samples = subsample(read_samples(cfg, cfg.eval_data_path), cfg.max_eval_samples, cfg.seed)
        metrics = {"eval_loss": eval_token_loss(trained, eval_set, collate, cfg.per_device_eval_batch_size)}
        return metrics | evaluate_alignment(
            trained, processor, eval_set, collate, samples=samples,
            batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        )  # fmt: skip

    metrics = {"train_loss": result.history[-1]["loss"], "global_step": result.global_step}
    metrics.update(parameter_layout(run.accelerator, result.model))  # world size, parameters per rank
    if cfg.eval_data_path:
        metrics.update(run.evaluate(evaluate, result.model, load=lambda path: load_vlm(path)[0]))
    card = vlm_card(cfg, run.unwrap(result.model), stage="stage 1 (align)")
    return run.finish(metrics, card=card, skips=skips)


if __name__ == "__main__":
    main()
