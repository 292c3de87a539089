"""Deterministic, resumable data order for training on one or many processes.

Iteration ``i`` of a run always sees the same *global* batch: epoch ``e = i // batches_per_epoch``
uses the permutation ``randperm(n, generator=seed + e)`` and iteration ``i`` takes its slice
``[b * B, (b + 1) * B)`` (``B`` the global batch size, ``b = i % batches_per_epoch``). Each of the
``W`` processes takes a contiguous ``B / W`` share of it. Augmentation randomness is seeded per
sample from ``(seed, epoch, index)`` by :class:`SeededDataset`, not per worker or process.

So a run resumed at iteration ``i`` continues exactly where it stopped, and a run on 2 processes
with ``B/2`` images each sees exactly the images, flips and scales of a 1-process run with ``B``.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["TrainBatchSampler", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (SplitMix64 finalizer)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    return x & (2**63 - 1)


class TrainBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this process's share of each global batch as ``[(index, epoch), ...]``.

    Args:
        num_samples: dataset length ``n``.
        batch_size: global batch ``B`` (must be divisible by ``world_size``).
        seed: base seed of the data order.
        start_iter: first iteration to produce (for resuming).
        max_iter: stop after this iteration (exclusive); ``None`` = forever.
        shuffle: random permutation per epoch (else 0..n-1 in order).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        start_iter: int = 0,
        max_iter: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training dataset is empty")
        if batch_size % world_size != 0:
            raise ValueError(
                f"solver.batch_size={batch_size} must be divisible by the number of processes ({world_size})"
            )
        self.n, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_iter, self.max_iter = start_iter, max_iter
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        # an epoch has at least one batch even for datasets smaller than the batch (indices repeat)
        self.batches_per_epoch = max(1, num_samples // batch_size)
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def epoch_of(self, iteration: int) -> int:
        return iteration // self.batches_per_epoch

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.n, generator=g)
            else:
                perm = torch.arange(self.n)
            reps = -(-self.batch_size // self.n)  # tiny datasets: tile so one batch fits
            self._perm = perm.repeat(reps) if reps > 1 else perm
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def global_batch(self, iteration: int) -> list[tuple[int, int]]:
        epoch = self.epoch_of(iteration)
        b = iteration % self.batches_per_epoch
        perm = self._permutation(epoch)
        idx = perm[b * self.batch_size : (b + 1) * self.batch_size].tolist()
        return [(i, epoch) for i in idx]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_size // self.world_size
        it = self.start_iter
        while self.max_iter is None or it < self.max_iter:
            batch = self.global_batch(it)
            yield batch[self.rank * share : (self.rank + 1) * share]
            it += 1

    def __len__(self) -> int:
        if self.max_iter is None:
            raise TypeError("an endless TrainBatchSampler has no length")
        return max(0, self.max_iter - self.start_iter)


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(index, epoch)`` is produced with RNGs seeded from
    ``(seed, epoch, index)``: random augmentation is then a function of the sample alone."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        s = sample_seed(self.seed, epoch, index)
        random.seed(s)
        np.random.seed(s % (2**32))
        torch.manual_seed(s)
        return self.dataset[index]
