"""Length-grouped sampling: batches of similar-length samples, in an order that is still random.

The non-packed way to cut padding. Each epoch: a permutation from (seed, epoch), cut into megabatches of
`megabatch_mult` global batches; each megabatch is sorted by length (longest first), so the batches cut
from it hold neighbours in length. The batch with the longest sample of the epoch goes first, so an
out-of-memory shows up at step 1, not hours in. Same interface as the default `EpochSampler`
(`set_epoch`, `resume_at`, `__len__`), so resuming mid-epoch gives exactly the same remaining order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from vlmkit.data.sampling import EpochSampler


class LengthGroupedSampler(EpochSampler):
    """Indices grouped by length per global batch (`batch_size` x `world_size` samples).

    lengths: token count of every sample. `megabatch_mult` global batches are sorted together; larger
    means less padding but batches that look more alike (50, as in common practice, by default; it is
    capped so an epoch has at least a few megabatches).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        *,
        world_size: int = 1,
        megabatch_mult: int | None = None,
    ):
        super().__init__(len(lengths), seed, shuffle=True)
        if batch_size <= 0 or world_size <= 0:
            raise ValueError(f"batch_size and world_size must be positive, got {batch_size}, {world_size}")
        self.lengths = list(lengths)
        self.global_batch = batch_size * world_size
        if megabatch_mult is None:
            megabatch_mult = max(1, min(50, len(self.lengths) // (self.global_batch * 4)))
        self.megabatch = self.global_batch * megabatch_mult

    def order(self, epoch: int | None = None) -> list[int]:
        """The full index order of `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        chunks = [perm[i : i + self.megabatch] for i in range(0, self.n, self.megabatch)]
        order = [i for chunk in chunks for i in sorted(chunk, key=lambda j: -self.lengths[j])]
        batches = [order[i : i + self.global_batch] for i in range(0, self.n, self.global_batch)]
        full = [b for b in range(len(batches)) if len(batches[b]) == self.global_batch] or [0]
        longest = max(full, key=lambda b: max(self.lengths[j] for j in batches[b]))
        batches[0], batches[longest] = batches[longest], batches[0]
        return [i for b in batches for i in b]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.start :])
