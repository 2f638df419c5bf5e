"""Stage 0 for text: causal language-model pretraining (next-token prediction) on packed text.

    python recipes/lm_pretrain.py --config recipes/configs/digits_lm_pretrain.yaml
    accelerate launch --num_processes 2 recipes/lm_pretrain.py --config recipes/configs/digits_lm_pretrain.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/lm_pretrain.py \
        --model_name_or_path HuggingFaceTB/SmolLM2-135M --data_path corpus.jsonl --eval_data_path heldout.jsonl \
        --max_length 2048 --learning_rate 3e-4 --output_dir out/lm

Any `AutoModelForCausalLM`: from a config (`--config_name`, random init) or a checkpoint (`--model_name_or_path`,
continued pretraining). Text: .txt (documents separated by blank lines), .jsonl/.json (`--dataset_text_field`)
or a Hugging Face dataset. Documents are joined with EOS and cut into blocks of `max_length` (GPT-style
packing: attention crosses document boundaries inside a block). Writes the model and tokenizer in
from_pretrained form, config.yaml, metrics.json (eval_loss and eval_perplexity on held-out text, against
eval_unigram_loss / eval_unigram_perplexity of the train text's token frequencies), train_log.jsonl, loss.png
and README.md into --output_dir. Stage 1 takes that directory as its language model:

    python recipes/llava_stage1.py --config recipes/configs/digits_llava_stage1.yaml \
        --language_model outputs/digits/lm_pretrain
"""

from __future__ import annotations

from vlmkit.config.lm import LmPretrainConfig
from vlmkit.config.parser import parse_config
from vlmkit.data.text_corpus import BlockCollator, PackedTextDataset, pack_documents, read_documents
from vlmkit.eval.language import causal_lm_loss, eval_causal_lm_loss, perplexity, unigram_loss
from vlmkit.hub.lifecycle import data_summary, maybe_push
from vlmkit.hub.model_card import write_model_card
from vlmkit.models.causal_lm import build_causal_lm
from vlmkit.training.loop import train
from vlmkit.training.run import end_run, finish_run, model_for_eval, save_model, start_run

USAGE = """from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
# as stage 1's language model: python recipes/llava_stage1.py ... --language_model {path}"""


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(LmPretrainConfig, argv, prog="lm_pretrain", description=__doc__)
    accelerator, out, started = start_run(cfg)

    model, tokenizer = build_causal_lm(cfg)
    read = dict(text_field=cfg.dataset_text_field, split=cfg.dataset_split)
    train_blocks = pack_documents(read_documents(cfg.data_path, **read), tokenizer, cfg.max_length)
    collate = BlockCollator(tokenizer.eos_token_id if cfg.attention_within_documents else None)
    result = train(cfg, accelerator, model, PackedTextDataset(train_blocks), collate, causal_lm_loss)

    save_model(accelerator, result.model, tokenizer, out)
    metrics = {
        "train_loss": result.history[-1]["loss"],
        "train_loss_first": result.history[0]["loss"],
        "global_step": result.global_step,
        "train_tokens": int(train_blocks.numel()),
    }
    if accelerator.is_main_process:
        if cfg.eval_data_path:
            trained = model_for_eval(accelerator, result.model, out, _load_causal_lm)
            eval_blocks = pack_documents(
                read_documents(cfg.eval_data_path, **read), tokenizer, cfg.max_length
            )
            if cfg.max_eval_blocks > 0:
                eval_blocks = eval_blocks[: cfg.max_eval_blocks]
            metrics["eval_loss"] = eval_causal_lm_loss(
                trained, eval_blocks, collate, cfg.per_device_eval_batch_size
            )
            metrics["eval_perplexity"] = perplexity(metrics["eval_loss"])
            metrics["eval_unigram_loss"] = unigram_loss(train_blocks, eval_blocks, len(tokenizer))
            metrics["eval_unigram_perplexity"] = perplexity(metrics["eval_unigram_loss"])
        metrics = finish_run(out, metrics, started=started, title="lm_pretrain")
        write_model_card(
            out, title=f"{cfg.hub_model_id or out.name} (stage 0 causal LM)",
            base_encoder="none", base_language_model=cfg.model_name_or_path or f"new, config of {cfg.config_name}",
            connector="none", stage="stage 0 (causal LM pretraining)", parent_checkpoint=cfg.model_name_or_path,
            data=data_summary(cfg), metrics=metrics,
            lineage=[{"stage": "stage 0 (causal LM)", "output_dir": str(out.resolve())}],
            usage=USAGE.format(path=cfg.hub_model_id or out), tags=("vlmkit", "causal-lm", "text"),
            pipeline_tag="text-generation",
        )  # fmt: skip
        maybe_push(cfg, out)
    end_run(accelerator)
    return metrics


def _load_causal_lm(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


if __name__ == "__main__":
    main()
