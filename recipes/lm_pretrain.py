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
from vlmkit.hub.lifecycle import HUB, causal_lm_card
from vlmkit.models.causal_lm import build_causal_lm
from vlmkit.training.accelerator import parameter_layout
from vlmkit.training.loop import train
from vlmkit.training.run import Run

USAGE = """from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
# as stage 1's language model: python recipes/llava_stage1.py ... --language_model {path}"""


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(LmPretrainConfig, argv, prog="lm_pretrain", description=__doc__)
    run = Run(cfg, "lm_pretrain", hub=HUB)

    model, tokenizer = build_causal_lm(cfg)
    read = dict(text_field=cfg.dataset_text_field, split=cfg.dataset_split)
    train_blocks = pack_documents(read_documents(cfg.data_path, **read), tokenizer, cfg.max_length)
    collate = BlockCollator(tokenizer.eos_token_id if cfg.attention_within_documents else None)
    result = train(cfg, run.accelerator, model, PackedTextDataset(train_blocks), collate, causal_lm_loss)
    run.save(result.model, tokenizer)

    def evaluate(trained) -> dict:
        eval_blocks = pack_documents(read_documents(cfg.eval_data_path, **read), tokenizer, cfg.max_length)
        if cfg.max_eval_blocks > 0:
            eval_blocks = eval_blocks[: cfg.max_eval_blocks]
        loss = eval_causal_lm_loss(trained, eval_blocks, collate, cfg.per_device_eval_batch_size)
        unigram = unigram_loss(train_blocks, eval_blocks, len(tokenizer))
        return {"eval_loss": loss, "eval_perplexity": perplexity(loss),
                "eval_unigram_loss": unigram, "eval_unigram_perplexity": perplexity(unigram)}  # fmt: skip

    metrics = {
        "train_loss": result.history[-1]["loss"],
        "train_loss_first": result.history[0]["loss"],
        "global_step": result.global_step,
        "train_tokens": int(train_blocks.numel()),
        **parameter_layout(run.accelerator, result.model),  # world size, parameters per rank
    }
    if cfg.eval_data_path:
        metrics.update(run.evaluate(evaluate, result.model, load=_load_causal_lm))
    return run.finish(metrics, card=causal_lm_card(cfg, USAGE))


def _load_causal_lm(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


if __name__ == "__main__":
    main()
