"""Preference pairs as model batches: prompt + chosen and prompt + rejected, tokenized through the chat template.

Both answers go through `tokenize_sample` as the final assistant turn, so the labels mark exactly the answer
tokens (what DPO sums log-probs over) and the reward model reads the last real token of each sequence.
A batch stacks the chosen rows first and the rejected rows after them, so one forward pass scores both.
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from vlmkit.data.loading import read_samples, subsample
from vlmkit.data.records import BadSampleError, PreferenceSample, Sample, SkipCounter, Turn
from vlmkit.data.sft_dataset import LazyMedia, pad_sequences
from vlmkit.data.tokenize import IGNORE_INDEX, SampleDropped, TokenizedSample, tokenize_sample

logger = logging.getLogger(__name__)


def answer_sample(pair: PreferenceSample, answer: str) -> Sample:
    """The conversation `pair.prompt` + one assistant turn holding `answer`, with the pair's media."""
    turns = list(pair.prompt) + [Turn("assistant", answer)]
    return Sample(turns, list(pair.images), list(pair.audios), pair.source, pair.index)


class PreferenceDataset(Dataset):
    """Tokenizes both answers of every pair up front; decodes media lazily (once per pair).

    A pair whose text cannot be tokenized raises BadSampleError, or with `on_bad_sample="skip"` is counted
    in `skips` and dropped; so is one whose media fails to decode (the item becomes None for the collator,
    counted once however many epochs meet it).
    """

    def __init__(
        self,
        pairs: list[PreferenceSample],
        processor,
        *,
        max_length: int,
        truncation: str = "error",
        on_bad_sample: str = "error",
        skips: SkipCounter | None = None,
    ):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got '{on_bad_sample}'")
        for i, pair in enumerate(pairs[:1]):
            if not isinstance(pair, PreferenceSample):
                raise TypeError(
                    f"PreferenceDataset needs preference rows (prompt/chosen/rejected); item {i} is a "
                    f"{type(pair).__name__}. Read the file with data_format 'preference'."
                )
        self.processor = processor
        self.on_bad_sample = on_bad_sample
        self.skips = skips if skips is not None else SkipCounter()
        self.media = LazyMedia(processor, on_bad_sample, self.skips)
        self.items: list[tuple[TokenizedSample, TokenizedSample]] = []
        spec = processor.spec
        kwargs = dict(
            modality=spec.modality,
            num_media_tokens=spec.num_media_tokens,
            max_length=max_length,
            truncation=truncation,
        )
        for pair in pairs:
            try:
                chosen = tokenize_sample(answer_sample(pair, pair.chosen), processor.tokenizer, **kwargs)
                rejected = tokenize_sample(answer_sample(pair, pair.rejected), processor.tokenizer, **kwargs)
            except SampleDropped as err:
                self.skips.add(err)
                continue
            except BadSampleError as err:
                if on_bad_sample == "error":
                    raise
                self.skips.add(err)
                continue
            self.items.append((chosen, rejected))
        if not self.items:
            where = pairs[0].source if pairs else "the dataset"
            raise ValueError(
                f"{where}: no usable preference pairs left ({self.skips.total} skipped: {self.skips.as_dict()})"
            )
        if self.skips.total:
            logger.warning("skipped %d preference pairs: %s", self.skips.total, self.skips.as_dict())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict | None:
        chosen, rejected = self.items[i]
        decoded = self.media.decode(i, chosen)  # both answers share the pair's media
        if decoded is None:
            return None
        return {
            "chosen_input_ids": torch.tensor(chosen.input_ids),
            "chosen_labels": torch.tensor(chosen.labels),
            "rejected_input_ids": torch.tensor(rejected.input_ids),
            "rejected_labels": torch.tensor(rejected.labels),
            "media": self.processor.process_media(decoded),
        }


class PreferenceCollator:
    """Right-pads B pairs into one batch of 2B rows: rows [0, B) are the chosen answers, [B, 2B) the rejected.

    Returns {input_ids (2B, T), attention_mask (2B, T), labels (2B, T) (-100 off the answer), media
    (2n, ...) or None (the pairs' media, once for the chosen rows and again for the rejected rows),
    num_pairs: B}; {"empty": True} when every item was skipped.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict | None]) -> dict:
        items = [it for it in items if it is not None]
        if not items:
            return {"empty": True}
        ids = [it["chosen_input_ids"] for it in items] + [it["rejected_input_ids"] for it in items]
        labels = [it["chosen_labels"] for it in items] + [it["rejected_labels"] for it in items]
        media = [it["media"] for it in items if it["media"] is not None]
        media_tensor = torch.cat(media) if media else None
        return {
            "input_ids": pad_sequences(ids, self.pad_token_id),
            "attention_mask": pad_sequences([torch.ones_like(s) for s in ids], 0),
            "labels": pad_sequences(labels, IGNORE_INDEX),
            "media": torch.cat([media_tensor, media_tensor]) if media_tensor is not None else None,
            "num_pairs": len(items),
        }


def count_pairs(batch: dict) -> int:
    """Items of a preference batch for the training loop's normalisation: the number of pairs."""
    return 0 if batch.get("empty") else int(batch["num_pairs"])


def preference_dataset(cfg, path: str, processor, skips: SkipCounter, *, limit: int = 0) -> PreferenceDataset:
    """Read preference rows from `path` with the config's data options (at most `limit` pairs, 0: all)."""
    fmt = "preference" if cfg.data_format == "auto" else cfg.data_format
    return PreferenceDataset(
        subsample(read_samples(cfg, path, skips, format=fmt), limit, cfg.seed),
        processor,
        max_length=cfg.max_length,
        truncation=cfg.truncation,
        on_bad_sample=cfg.on_bad_sample,
        skips=skips,
    )
