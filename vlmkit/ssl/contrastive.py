"""CLIP maths: the symmetric InfoNCE loss over a global (all-rank) batch, and its evaluations.

The loss follows open_clip's ``local_loss=True, gather_with_grad=True`` setting: every rank scores its
own rows against the columns of the whole global batch, and the all-gather is differentiable, so the
gradient that reaches a rank's features includes the terms from every other rank's loss. With equal
local batches, the mean of the rank losses equals the single-process loss on the global batch, and
DDP's gradient average equals the single-process gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LogitScale",
    "clip_loss",
    "gather_with_grad",
    "retrieval_recall",
    "zero_shot_accuracy",
    "zero_shot_classifier",
]

MAX_LOGIT_SCALE = 100.0


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward all-reduces the gathered gradient and keeps this rank's rows.

    ``torch.distributed.nn.functional.all_gather`` (deprecated) does the backward with gloo's all-to-all,
    which left a thread behind: one 2-process gloo run in four to ten aborted at interpreter exit
    ("terminate called without an active exception") after finishing its work. The all-reduce moves
    world_size times the shard's gradient where a reduce-scatter would move one; for CLIP's (B, D)
    features that is small.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        shards = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(shards, x.contiguous())
        return torch.cat(shards, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * rows : (rank + 1) * rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` (B, ...) along dim 0 from every rank, keeping the autograd graph.

    Returns (world_size * B, ...), rank r's shard at rows ``[r*B, (r+1)*B)``. The backward pass sums
    the gradients every rank computed for a shard and hands the sum to the shard's owner. Identity when
    torch.distributed is not initialised or has one process. Every rank must pass the same shape (use
    ``drop_last=True``).
    """
    if not _is_distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    counts = [int(s.item()) for s in sizes]
    if len(set(counts)) != 1:
        raise ValueError(
            f"gather_with_grad needs the same local batch size on every rank, got {counts}; "
            "drop the last incomplete batch (drop_last=True) so all ranks see equal batches."
        )
    return _AllGatherWithGrad.apply(x)


def clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    gather: bool = True,
) -> Tensor:
    """Symmetric CLIP InfoNCE loss of a rank's local rows against the global batch.

    Args:
        image_features: (B, D) this rank's image embeddings (not necessarily normalised).
        text_features: (B, D) this rank's text embeddings; row i is the caption of image i.
        logit_scale: scalar tensor, the log of the inverse temperature (a learnable parameter).
            The scale used is ``logit_scale.exp().clamp(max=100)``, so it stops growing at 100.
        gather: score against the columns of every rank (needs equal B on all ranks).

    Returns:
        Scalar: mean of the image->text and text->image cross-entropies, each averaged over the
        local rows. The target of local row i is global column ``rank * B + i``.
    """
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "clip_loss expects image_features and text_features of the same shape (B, D), got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}."
        )
    if logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar tensor, got shape {tuple(logit_scale.shape)}.")
    image = F.normalize(image_features, dim=-1)
    text = F.normalize(text_features, dim=-1)
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE).reshape(())

    local_batch = image.shape[0]
    offset = 0
    all_image, all_text = image, text
    if gather and _is_distributed():
        all_image = gather_with_grad(image)
        all_text = gather_with_grad(text)
        offset = dist.get_rank() * local_batch

    logits_per_image = scale * image @ all_text.T  # (B, W*B)
    logits_per_text = scale * text @ all_image.T  # (B, W*B)
    labels = torch.arange(local_batch, device=image.device) + offset
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


class LogitScale(nn.Module):
    """Learnable log inverse-temperature of CLIP, initialised to ``log(1 / init_temperature)``.

    ``forward()`` returns the scalar parameter (log space), ready for :func:`clip_loss`.
    """

    def __init__(self, init_temperature: float = 0.07) -> None:
        super().__init__()
        if init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}.")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self) -> Tensor:
        """Return the log-scale parameter, a scalar tensor."""
        return self.log_scale


def zero_shot_classifier(text_features_per_class: Sequence[Tensor]) -> Tensor:
    """Build zero-shot class weights from prompt-template embeddings.

    Args:
        text_features_per_class: C tensors, each (n_templates, D): the text embeddings of one class
            under every prompt template ("a photo of a {}.", ...).

    Returns:
        (C, D) unit-norm class embeddings: mean of the normalised templates, renormalised.
    """
    if len(text_features_per_class) == 0:
        raise ValueError("zero_shot_classifier needs at least one class, got an empty list.")
    rows = []
    dim = text_features_per_class[0].shape[-1]
    for c, feats in enumerate(text_features_per_class):
        if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] != dim:
            raise ValueError(
                f"class {c}: expected text features of shape (n_templates>=1, {dim}), got {tuple(feats.shape)}."
            )
        rows.append(F.normalize(feats, dim=-1).mean(dim=0))
    return F.normalize(torch.stack(rows), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(image_features: Tensor, classifier: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of cosine-similarity classification.

    Args:
        image_features: (N, D) image embeddings.
        classifier: (C, D) class embeddings from :func:`zero_shot_classifier`.
        labels: (N,) integer class indices in [0, C).
    """
    if image_features.ndim != 2 or classifier.ndim != 2 or image_features.shape[1] != classifier.shape[1]:
        raise ValueError(
            f"expected image_features (N, D) and classifier (C, D), got {tuple(image_features.shape)} "
            f"and {tuple(classifier.shape)}."
        )
    if labels.shape != (image_features.shape[0],):
        raise ValueError(f"labels must have shape ({image_features.shape[0]},), got {tuple(labels.shape)}.")
    logits = F.normalize(image_features, dim=-1) @ F.normalize(classifier, dim=-1).T
    return int((logits.argmax(dim=-1) == labels.to(logits.device)).sum()) / labels.shape[0]


@torch.no_grad()
def retrieval_recall(
    image_features: Tensor, text_features: Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Recall@k for image->text and text->image retrieval with one caption per image.

    Args:
        image_features: (N, D); text_features: (N, D), row i is the caption of image i.
        ks: the cut-offs k.

    Returns:
        ``{"image_to_text_r{k}": ..., "text_to_image_r{k}": ...}`` in [0, 1]. Ties count against
        the query (the match's rank is the number of other items scoring >= it), so a collapsed
        encoder scores low rather than perfectly.
    """
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise ValueError(
            "retrieval_recall expects image and text features of the same shape (N, D), got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}."
        )
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}.")
    sim = F.normalize(image_features.float(), dim=-1) @ F.normalize(text_features.float(), dim=-1).T
    n = sim.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    result: dict[str, float] = {}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        positive = s.diagonal().unsqueeze(1)  # (N, 1)
        rank = ((s >= positive) & ~eye).sum(dim=1)  # (N,) competitors scoring at least the match
        for k in ks:
            result[f"{name}_r{k}"] = int((rank < k).sum()) / rank.shape[0]
    return result
