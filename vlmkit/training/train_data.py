"""From the data options to what the training loop takes: training dataset, collator and sampler.

One call for every SFT-style recipe, so `--packing`, `--group_by_length` and `--feature_cache_dir`
behave the same everywhere:

    train_set, collate, sampler = build_train_data(cfg, processor, skips, model=model, accelerator=accelerator)
    result = train(cfg, accelerator, model, train_set, collate, sft_loss, sampler=sampler)

The collator also takes single samples, so the recipes can use it for their held-out loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch.utils.data import Dataset, Sampler

from vlmkit.data.length_grouping import LengthGroupedSampler
from vlmkit.data.loading import sft_dataset
from vlmkit.data.packing import PackedCollator, PackedDataset
from vlmkit.data.records import SkipCounter
from vlmkit.data.sft_dataset import SFTCollator
from vlmkit.training.feature_cache import CachedFeatureDataset, build_feature_cache

logger = logging.getLogger(__name__)


def check_packing(cfg) -> None:
    """Packing's settings agree: every sample fits a packed row; length grouping has nothing left to do."""
    if cfg.max_length > cfg.packing_max_tokens:
        raise ValueError(
            f"max_length={cfg.max_length} is larger than packing_max_tokens={cfg.packing_max_tokens}: "
            "a sample could not fit in a packed row; raise packing_max_tokens or lower max_length"
        )
    if getattr(cfg, "group_by_length", False):
        logger.warning("group_by_length is ignored with packing (packed rows have no padding to save)")


def attention_backend(model) -> str | None:
    """The LLM's attention implementation (`flash_attention_2`, `sdpa`, `eager`), if it can be read."""
    lm = getattr(model, "language_model", model)
    config = getattr(lm, "config", None)
    return getattr(config, "_attn_implementation", None)


def build_train_data(
    cfg, processor, skips: SkipCounter, *, model=None, accelerator=None
) -> tuple[Dataset, Callable, Sampler | None]:
    """Training dataset + collator + sampler (None: the loop's default shuffling) from DataArgs fields.

    - `feature_cache_dir`: encode the media once with the (frozen) encoder of `model`, train from features.
    - `packing`: rows of whole samples up to `packing_max_tokens`; `per_device_train_batch_size` then
      counts packed rows. Flattened to one row per micro-batch when the LLM uses flash_attention_2.
    - `group_by_length` (without packing): batches of similar length, random order.
    """
    train_set = sft_dataset(cfg, cfg.data_path, processor, skips)
    lengths = train_set.lengths()
    dataset: Dataset = train_set
    if getattr(cfg, "feature_cache_dir", None):
        if model is None:
            raise ValueError("feature_cache_dir needs the model (its frozen encoder computes the features)")
        cache, keys = build_feature_cache(
            train_set, model, processor, cfg.feature_cache_dir,
            batch_size=cfg.per_device_eval_batch_size, accelerator=accelerator, skips=skips,
        )  # fmt: skip
        dataset = CachedFeatureDataset(train_set, cache, keys)
    pad_id = processor.tokenizer.pad_token_id
    if getattr(cfg, "packing", False):
        check_packing(cfg)
        flatten = attention_backend(model) == "flash_attention_2"
        return (
            PackedDataset(dataset, cfg.packing_max_tokens, lengths),
            PackedCollator(pad_id, flatten=flatten),
            None,
        )
    sampler = None
    if getattr(cfg, "group_by_length", False):
        world = accelerator.num_processes if accelerator is not None else 1
        sampler = LengthGroupedSampler(lengths, cfg.per_device_train_batch_size, cfg.seed, world_size=world)
    return dataset, SFTCollator(pad_id), sampler
