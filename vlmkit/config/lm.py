"""Config of causal language-model pretraining (stage 0 for text)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import ATTN_IMPLEMENTATIONS, EpochArgs, HubArgs, OptimArgs, RunArgs, _f


@dataclass
class LmPretrainConfig(HubArgs, OptimArgs, EpochArgs, RunArgs):
    """Next-token prediction on packed text, from a config (random init) or a checkpoint (continued)."""

    model_name_or_path: str | None = _f(
        None, "A causal-LM checkpoint to continue pretraining (path, hub name or vlmkit-tiny/<name>)."
    )
    config_name: str | None = _f(
        None, "Train from random init with this model's config (path, hub name or vlmkit-tiny/<name>)."
    )
    tokenizer_name: str | None = _f(
        None, "Tokenizer to use (default: that of model_name_or_path/config_name)."
    )
    attn_implementation: str = _f(
        "auto",
        "auto (flash_attention_2 on a GPU if installed, else sdpa), sdpa, eager.",
        choices=ATTN_IMPLEMENTATIONS,
    )
    data_path: str | None = _f(
        None, "Training text: .txt (documents separated by blank lines), .jsonl/.json, or an HF dataset."
    )
    eval_data_path: str | None = _f(None, "Held-out text (same formats) for eval_loss and eval_perplexity.")
    dataset_text_field: str = _f("text", "Field (jsonl) or column (HF dataset) holding the text.")
    dataset_split: str = _f("train", "Split of an HF dataset to read.")
    max_length: int = _f(128, "Tokens per packed block (documents joined with EOS, cut into blocks).", ge=2)
    attention_within_documents: bool = _f(
        True,
        "Restart position ids after each EOS so attention stays inside a document (false: GPT-style "
        "packing, attention crosses document boundaries in a block). sdpa/eager only.",
    )
    max_eval_blocks: int = _f(0, "Evaluate on at most this many held-out blocks (0: all).", ge=0)
    learning_rate: float = _f(1e-3, "Peak learning rate.", ge=0)
