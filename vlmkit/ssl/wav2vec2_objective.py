"""wav2vec 2.0 pretraining objective: contrastive task over quantized targets plus codebook diversity.

Total loss, per the paper: ``contrastive_loss + alpha * diversity_loss`` (alpha = 0.1). Here the
contrastive term is a *mean* over masked frames (fairseq and transformers sum it and scale the
diversity term by the number of masked frames; the ratio of the two terms is the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "codebook_perplexity",
    "contrastive_logits",
    "contrastive_loss",
    "diversity_loss",
    "gumbel_temperature",
]


def contrastive_logits(
    context: Tensor, quantized: Tensor, negatives_idx: Tensor, temperature: float = 0.1
) -> Tensor:
    """Cosine-similarity logits of each context vector against its target and K distractors.

    Args:
        context: (B, T, D) transformer outputs (after the final projection).
        quantized: (B, T, D) quantized targets.
        negatives_idx: (B, T, K) long indices into ``quantized.reshape(B*T, D)``
            (from :func:`vlmkit.ssl.masking.sample_negatives`).
        temperature: kappa in the paper (0.1).

    Returns:
        (B, T, K+1) float32 logits ``cos(c, q) / temperature``; index 0 is the positive. A distractor
        whose vector equals the positive exactly (e.g. the frame itself, or the same codeword) gets
        -inf, as in fairseq, so it never counts as a wrong answer.
    """
    if context.ndim != 3 or context.shape != quantized.shape:
        raise ValueError(
            "context and quantized must both be (B, T, D), got "
            f"{tuple(context.shape)} and {tuple(quantized.shape)}."
        )
    batch, length, dim = quantized.shape
    if negatives_idx.ndim != 3 or negatives_idx.shape[:2] != (batch, length):
        raise ValueError(f"negatives_idx must be ({batch}, {length}, K), got {tuple(negatives_idx.shape)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    num_negatives = negatives_idx.shape[-1]
    flat = quantized.reshape(batch * length, dim)
    negatives = flat[negatives_idx.to(flat.device).reshape(-1)].view(batch, length, num_negatives, dim)
    targets = torch.cat([quantized.unsqueeze(2), negatives], dim=2)  # (B, T, K+1, D)
    logits = F.cosine_similarity(context.unsqueeze(2).float(), targets.float(), dim=-1) / temperature
    same_as_positive = (negatives == quantized.unsqueeze(2)).all(dim=-1)  # (B, T, K)
    blocked = F.pad(same_as_positive, (1, 0), value=False)  # never block the positive
    return logits.masked_fill(blocked, float("-inf"))


def contrastive_loss(logits: Tensor, mask_time_indices: Tensor) -> Tensor:
    """Cross-entropy with target 0 (the positive), averaged over the masked frames.

    Args:
        logits: (B, T, K+1) from :func:`contrastive_logits`.
        mask_time_indices: (B, T) bool, True = masked frame; only those frames count.

    Returns:
        Scalar mean loss. Raises if no frame is masked (a silent zero loss would hide the bug).
    """
    if logits.ndim != 3 or mask_time_indices.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, K+1) and mask (B, T), got {tuple(logits.shape)} and "
            f"{tuple(mask_time_indices.shape)}."
        )
    selected = logits[mask_time_indices.to(logits.device).bool()]  # (M, K+1)
    if selected.shape[0] == 0:
        raise ValueError(
            "contrastive_loss got a batch with no masked frame; raise mask_prob/min_masks or check "
            "that the attention mask leaves room for a span of mask_length frames."
        )
    targets = torch.zeros(selected.shape[0], dtype=torch.long, device=selected.device)
    return F.cross_entropy(selected, targets)


def codebook_perplexity(probs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Perplexity of the batch-averaged codeword distribution, summed over codebook groups.

    Args:
        probs: (..., G, V) softmax probabilities over the V codewords of each of the G groups
            (the soft, non-Gumbel distribution), e.g. (N, G, V) or (B, T, G, V).
        mask: (...) bool over the leading dims; only True entries are averaged (masked frames).

    Returns:
        Scalar ``sum_g exp(-sum_v p_gv log p_gv)`` with ``p = mean over entries of probs``;
        G*V for a uniform average, G when every group always picks the same codeword.
    """
    if probs.ndim < 3:
        raise ValueError(
            f"probs must be (..., G, V) with at least one leading dim, got {tuple(probs.shape)}."
        )
    flat = probs.reshape(-1, *probs.shape[-2:])  # (N, G, V)
    if mask is not None:
        if tuple(mask.shape) != tuple(probs.shape[:-2]):
            raise ValueError(f"mask must have shape {tuple(probs.shape[:-2])}, got {tuple(mask.shape)}.")
        flat = flat[mask.reshape(-1).to(flat.device).bool()]
    if flat.shape[0] == 0:
        raise ValueError("codebook_perplexity got no entries to average (empty input or all-False mask).")
    marginal = flat.mean(dim=0)  # (G, V)
    entropy = -torch.sum(marginal * torch.log(marginal + 1e-7), dim=-1)  # (G,)
    return torch.exp(entropy).sum()


def diversity_loss(perplexity: Tensor, num_groups: int, num_codevectors_per_group: int) -> Tensor:
    """Codebook diversity penalty ``(G*V - perplexity) / (G*V)``: 0 when all codewords are used equally.

    Args:
        perplexity: scalar from :func:`codebook_perplexity` (or a quantizer's perplexity output).
        num_groups: G; num_codevectors_per_group: V.
    """
    if num_groups < 1 or num_codevectors_per_group < 1:
        raise ValueError(
            f"num_groups and num_codevectors_per_group must be >= 1, got {num_groups}, {num_codevectors_per_group}."
        )
    total = num_groups * num_codevectors_per_group
    return (total - perplexity) / total


def gumbel_temperature(
    step: int, max_temp: float = 2.0, min_temp: float = 0.5, decay: float = 0.999995
) -> float:
    """Gumbel-softmax temperature at ``step``: ``max(max_temp * decay**step, min_temp)``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    return max(max_temp * decay**step, min_temp)
