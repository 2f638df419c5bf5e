"""Prompts for generation: token ids, reference answer and decoded media per sample, left-padded in a batch.

Evaluation (`eval.answers`) and RL rollouts (`rlhf.rollout`) generate from the same prompts.
"""

from __future__ import annotations

import torch

from vlmkit.data.records import Sample
from vlmkit.data.sft_dataset import load_media_item, pad_sequences
from vlmkit.data.tokenize import tokenize_prompt


def prepare_prompts(samples: list[Sample], processor) -> list[tuple[list[int], str | None, list]]:
    """(prompt ids, reference answer, decoded media) per sample."""
    spec = processor.spec
    out = []
    for s in samples:
        ids, ref = tokenize_prompt(
            s, processor.tokenizer, modality=spec.modality, num_media_tokens=spec.num_media_tokens
        )
        items = s.images if spec.modality == "image" else s.audios
        media = [
            load_media_item(
                m, modality=spec.modality, source=s.source, index=s.index, sampling_rate=spec.sampling_rate
            )
            for m in items
        ]
        out.append((ids, ref, media))
    return out


def left_padded_batch(
    prompts: list[list[int]], pad_token_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), left-padded for generation."""
    seqs = [torch.tensor(p) for p in prompts]
    ids = pad_sequences(seqs, pad_token_id, left=True)
    mask = pad_sequences([torch.ones_like(s) for s in seqs], 0, left=True)
    return ids.to(device), mask.to(device)
