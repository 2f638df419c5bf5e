"""Masking for masked-prediction SSL: MAE patch masks, wav2vec2 span masks and distractor sampling.

All randomness comes from an optional ``torch.Generator`` (CPU), so a seeded generator makes every
function here deterministic. Masks are computed on the CPU, as data-collator work.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["keep_patches", "random_patch_mask", "sample_negatives", "span_mask"]


def random_patch_mask(
    batch: int,
    num_patches: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """MAE random masking: an independent shuffle of the patches of every sample.

    Exactly ``round(num_patches * mask_ratio)`` patches are masked in every sample; at least one
    patch must stay visible.

    Returns:
        ids_keep: (B, K) long, indices of the visible patches, K = N - round(N * mask_ratio).
        mask: (B, N) float, 1 = masked, 0 = visible, in the original patch order (as in MAE, so it
            can weight a per-patch loss directly).
        ids_restore: (B, N) long, the inverse permutation: gathering ``cat([visible, mask_tokens])``
            with it puts every token back at its original position.
    """
    if batch < 1 or num_patches < 1:
        raise ValueError(f"batch and num_patches must be >= 1, got {batch} and {num_patches}.")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    num_masked = int(round(num_patches * mask_ratio))
    num_keep = num_patches - num_masked
    if num_keep < 1:
        raise ValueError(
            f"mask_ratio={mask_ratio} masks all {num_patches} patches; lower it so one patch stays visible."
        )
    noise = torch.rand(batch, num_patches, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending noise: the first K are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    mask = torch.ones(batch, num_patches)
    mask[:, :num_keep] = 0.0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def keep_patches(x: Tensor, ids_keep: Tensor) -> Tensor:
    """Select the visible patches: x (B, N, D), ids_keep (B, K) -> (B, K, D)."""
    if x.ndim != 3 or ids_keep.ndim != 2 or ids_keep.shape[0] != x.shape[0]:
        raise ValueError(
            f"expected x (B, N, D) and ids_keep (B, K), got {tuple(x.shape)} and {tuple(ids_keep.shape)}."
        )
    index = ids_keep.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, index)


def _valid_mask(shape: tuple[int, int], attention_mask: Tensor | None) -> Tensor:
    if attention_mask is None:
        return torch.ones(shape, dtype=torch.bool)
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(
            f"attention_mask must have the frame-level shape {tuple(shape)}, got {tuple(attention_mask.shape)}; "
            "convert a sample-level mask to frames first (e.g. the model's _get_feature_vector_attention_mask)."
        )
    return attention_mask.detach().cpu().bool()


def span_mask(
    shape: tuple[int, int],
    mask_prob: float,
    mask_length: int,
    attention_mask: Tensor | None = None,
    min_masks: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """wav2vec2 span masking of latent frames.

    In every row, ``int(mask_prob * valid_len / mask_length + u)`` span starts (u ~ U[0, 1) per row,
    as in fairseq; at least ``min_masks``) are drawn without replacement among the positions where a
    whole span of ``mask_length`` valid frames fits; each start masks ``mask_length`` frames.
    Spans may overlap, so the masked fraction is below ``mask_prob`` (about ``1 - exp(-mask_prob)``
    for long rows: 0.65 -> ~0.48). Padding frames are never masked, and every maximal run of masked
    frames is at least ``mask_length`` long. A row too short for one span gets no mask.

    Args:
        shape: (B, T) frames.
        mask_prob: expected fraction of span starts times ``mask_length``, in [0, 1].
        mask_length: frames per span, >= 1.
        attention_mask: (B, T) frame-level mask, 1 = valid frame; any padding pattern is allowed.
        min_masks: minimum number of spans per row (fewer only if the row has no room).
        generator: CPU generator for reproducible masks.

    Returns:
        (B, T) bool, True = masked, on the CPU.
    """
    batch, length = shape
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}.")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}.")
    if min_masks < 0:
        raise ValueError(f"min_masks must be >= 0, got {min_masks}.")
    valid = _valid_mask((batch, length), attention_mask)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    if length < mask_length:
        return mask
    # start s is allowed when frames s .. s+mask_length-1 are all valid
    windows = valid.unfold(1, mask_length, 1).all(dim=-1)  # (B, T - mask_length + 1)
    offsets = torch.arange(mask_length)
    for b in range(batch):
        starts = windows[b].nonzero().flatten()
        u = torch.rand(1, generator=generator).item()
        num_spans = int(mask_prob * int(valid[b].sum()) / mask_length + u)
        num_spans = min(max(num_spans, min_masks), starts.numel())
        if num_spans == 0:
            continue
        chosen = starts[torch.randperm(starts.numel(), generator=generator)[:num_spans]]
        mask[b, (chosen[:, None] + offsets).flatten()] = True
    return mask


def sample_negatives(
    mask_time_indices: Tensor,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw wav2vec2 distractors for every masked frame from the other masked frames of its utterance.

    As in the wav2vec 2.0 paper (and fairseq), the distractors of a masked frame are drawn uniformly,
    with replacement, from the *masked* frames of the same row, never the frame itself; masked frames
    are valid frames, so padding is never drawn.

    Args:
        mask_time_indices: (B, T) bool, True = masked (e.g. from :func:`span_mask`).
        num_negatives: K distractors per frame.
        generator: CPU generator for reproducible draws.

    Returns:
        (B, T, K) long indices into the flattened (B*T, ...) features. Entries that have no
        distractor to draw (unmasked frames, and a row with a single masked frame) hold the frame's
        own index; :func:`vlmkit.ssl.wav2vec2_objective.contrastive_logits` gives those -inf, and the
        loss only reads masked frames.
    """
    if mask_time_indices.ndim != 2:
        raise ValueError(f"mask_time_indices must be (B, T), got shape {tuple(mask_time_indices.shape)}.")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}.")
    masked = mask_time_indices.detach().cpu().bool()
    batch, length = masked.shape
    own = torch.arange(batch * length).view(batch, length, 1)
    out = own.expand(batch, length, num_negatives).clone()
    for b in range(batch):
        positions = masked[b].nonzero().flatten()  # (n,) masked frame indices of this row
        n = positions.numel()
        if n < 2:
            continue
        # draw from n - 1 slots, then shift slots >= self up by one: uniform over the others
        draws = torch.randint(0, n - 1, (n, num_negatives), generator=generator)
        draws += (draws >= torch.arange(n).unsqueeze(1)).long()
        out[b, positions] = positions[draws] + b * length
    return out
