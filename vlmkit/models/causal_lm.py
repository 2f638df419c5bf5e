"""A plain causal LM + tokenizer for text pretraining: random init from a config, or a checkpoint."""

from __future__ import annotations

import logging

from vlmkit.models.build import load_language_model, resolve_attn_implementation
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import ensure_special_tokens

logger = logging.getLogger(__name__)


def build_causal_lm(cfg):
    """(model, tokenizer) from `model_name_or_path` (continued pretraining) or `config_name` (random init).

    The tokenizer gains `<image>`/`<audio>` and a pad token if it lacks them (the embeddings are resized), so
    the result can be stage 1's `--language_model` as it is.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    if bool(cfg.model_name_or_path) == bool(cfg.config_name):
        raise ValueError("give exactly one of --model_name_or_path (continue) or --config_name (random init)")
    source = resolve_model_path(cfg.model_name_or_path or cfg.config_name)
    attn = resolve_attn_implementation(cfg.attn_implementation)
    trust = cfg.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(cfg.tokenizer_name) or source, trust_remote_code=trust
    )
    if cfg.model_name_or_path:
        model = load_language_model(source, attn_implementation=attn, trust_remote_code=trust)
    else:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, trust_remote_code=trust)
        try:
            model.generation_config = GenerationConfig.from_pretrained(source)
        except OSError:
            logger.info("%s has no generation_config.json; using the model config's defaults", source)
    added = ensure_special_tokens(tokenizer)
    if added or len(tokenizer) > model.get_input_embeddings().num_embeddings:
        logger.info("tokenizer has %d tokens (added %s); resizing the embeddings", len(tokenizer), added)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
