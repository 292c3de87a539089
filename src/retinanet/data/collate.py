"""Batching: normalize + pad images into one tensor, and a reproducible, resumable DataLoader.

- :func:`normalize`: ``(x - IMAGENET_MEAN) / IMAGENET_STD`` per RGB channel over ``[..., 3, H, W]``
  (inputs RGB 0-1), the torchvision convention so torchvision-format weights load.
- :func:`collate`: a list of ``(image [3, h, w] float 0-1, target)`` -> :class:`Batch` with
  ``images [B, 3, Hp, Wp]`` (normalized, then zero-padded at the bottom/right, so padding is 0 in
  normalized space; ``Hp``, ``Wp`` multiples of ``size_divisibility``), ``targets`` (the list of
  dicts) and ``image_sizes`` (``(h, w)`` before padding). One preallocated output tensor.
- :class:`ResumableSampler`: per-epoch seeded order (optionally a rank's shard for DDP), starting at
  any position. It yields ``(index, item_seed)``; the loader's dataset wrapper seeds torch's CPU
  generator with ``item_seed`` before loading the item, so random augmentation depends only on
  ``(seed, epoch, index)``: not on the number of workers, the batch size or where the epoch resumed.
- :func:`build_loader` wires them into a ``torch.utils.data.DataLoader``; resume mid-epoch with
  :func:`set_loader_epoch` ``(loader, epoch, start_batch=n)``, which skips the first ``n`` batches.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batch",
    "normalize",
    "collate",
    "ResumableSampler",
    "build_loader",
    "set_loader_epoch",
    "seed_worker",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _channel_stats(ref: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = ref.dtype if ref.is_floating_point() else torch.float32
    m = torch.tensor(mean, dtype=dtype, device=ref.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=ref.device).view(3, 1, 1)
    return m, s


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    inplace: bool = False,
) -> torch.Tensor:
    """``(images - mean) / std`` per channel for ``[3, H, W]`` or ``[B, 3, H, W]`` RGB 0-1 images."""
    if images.dim() < 3 or images.shape[-3] != 3:
        raise ValueError(f"normalize: expected [..., 3, H, W] images, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"normalize: expected float images in 0-1, got dtype {images.dtype}")
    m, s = _channel_stats(images, mean, std)
    if inplace:
        return images.sub_(m).div_(s)
    return (images - m).div_(s)


@dataclass
class Batch:
    """What :func:`collate` returns; ``to()`` and ``pin_memory()`` move images and target tensors.

    Unpacks like a tuple: ``images, targets, image_sizes = batch``.
    """

    images: torch.Tensor  # [B, 3, Hp, Wp] float32, normalized, zero-padded
    targets: list[dict[str, Any]]
    image_sizes: list[tuple[int, int]]  # (h, w) of each image before padding

    def __iter__(self) -> Iterator[Any]:
        """``images, targets, image_sizes = batch`` works too."""
        return iter((self.images, self.targets, self.image_sizes))

    def _map(self, fn: Any) -> "Batch":
        targets = [{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in self.targets]
        return Batch(fn(self.images), targets, list(self.image_sizes))

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
    size_divisibility: int = 128,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Batch:
    """Stack ``(image [3, h, w] float32 0-1 (or uint8 0-255), target)`` pairs into a :class:`Batch`.

    Images are normalized into one preallocated zero tensor ``[B, 3, Hp, Wp]`` at the top-left;
    ``Hp, Wp`` = max height/width rounded up to a multiple of ``size_divisibility`` (0/1: no rounding).
    """
    if len(batch) == 0:
        raise ValueError("collate: empty batch")
    images = []
    for i, item in enumerate(batch):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"collate: item {i} must be an (image, target) pair, got {type(item).__name__}")
        img = item[0]
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
            raise TypeError(f"collate: item {i} image must be a tensor [3, H, W], got {shape}")
        images.append(img)
    d = max(int(size_divisibility), 1)
    max_h = max(int(im.shape[1]) for im in images)
    max_w = max(int(im.shape[2]) for im in images)
    pad_h, pad_w = math.ceil(max_h / d) * d, math.ceil(max_w / d) * d
    out = torch.zeros((len(images), 3, pad_h, pad_w), dtype=torch.float32, device=images[0].device)
    m, s = _channel_stats(out, mean, std)
    sizes: list[tuple[int, int]] = []
    for i, img in enumerate(images):
        h, w = int(img.shape[1]), int(img.shape[2])
        region = out[i, :, :h, :w]
        if img.dtype == torch.uint8:
            region.copy_(img).div_(255.0).sub_(m)
        else:
            torch.sub(img, m, out=region)
        region.div_(s)
        sizes.append((h, w))
    return Batch(out, [item[1] for item in batch], sizes)


# --------------------------------------------------------------------------------------------------
# reproducible, resumable loading


def _derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence)."""
    state = np.random.SeedSequence([int(v) % (2**63) for v in values]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class ResumableSampler(Sampler):
    """Index order for one epoch, seeded by ``(seed, epoch)``, sharded over ``num_replicas``.

    Yields ``(index, item_seed)`` pairs; ``item_seed`` depends on ``(seed, epoch, index)`` only.
    With ``num_replicas > 1`` the order is padded by repeating its start (unless ``drop_last``, which
    trims it) to a multiple of ``num_replicas``, and rank ``r`` takes every ``num_replicas``-th
    index from position ``r``, like ``DistributedSampler``. ``set_epoch(epoch, start_index)``
    selects the epoch and skips that rank's first ``start_index`` samples (for this epoch only);
    ``len()`` counts the samples still to come.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"ResumableSampler: the dataset is empty (num_samples={num_samples})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ResumableSampler: need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        self.num_samples = int(num_samples)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.start_index = 0

    @property
    def samples_per_replica(self) -> int:
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        if start_index < 0:
            raise ValueError(f"set_epoch: start_index must be >= 0, got {start_index}")
        self.epoch = int(epoch)
        self.start_index = int(start_index)

    def indices(self) -> torch.Tensor:
        """This rank's dataset indices for the current epoch (all of them, ignoring ``start_index``)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch, 0))
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        total = self.samples_per_replica * self.num_replicas
        if total > len(order):
            reps = math.ceil(total / len(order))
            order = order.repeat(reps)
        order = order[:total]
        return order[self.rank :: self.num_replicas]

    def item_seeds(self) -> torch.Tensor:
        """``[num_samples]`` int64 seeds of this epoch, by dataset index."""
        g = torch.Generator().manual_seed(_derive_seed(self.seed, self.epoch, 1))
        return torch.randint(0, 2**62, (self.num_samples,), generator=g, dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        idx = self.indices()[self.start_index :]
        seeds = self.item_seeds()[idx]
        return iter(zip(idx.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return max(self.samples_per_replica - self.start_index, 0)


class _SeededItems(Dataset):
    """Wraps a dataset so ``(index, item_seed)`` keys seed torch's CPU generator before loading."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, item_seed = key
        gen = torch.default_generator
        if get_worker_info() is not None:  # a worker process owns its global generator
            gen.manual_seed(item_seed)
            return self.dataset[index]
        state = gen.get_state()  # main process: do not disturb the training RNG stream
        try:
            gen.manual_seed(item_seed)
            return self.dataset[index]
        finally:
            gen.set_state(state)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed Python's and numpy's RNGs from torch's per-worker seed; 1 thread."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def build_loader(
    dataset: Any,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    sampler: Optional[Sampler] = None,
    drop_last: bool = False,
    *,
    size_divisibility: int = 128,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader of :class:`Batch` es whose order and augmentation are reproducible and resumable.

    Without ``sampler``, a :class:`ResumableSampler` (``shuffle``, ``seed``, ``num_replicas``,
    ``rank``, ``drop_last`` also applied to the shard) decides the order; call
    :func:`set_loader_epoch` before each epoch. A given ``sampler`` decides the order instead
    (``shuffle`` is then ignored); if it yields plain ints, augmentation comes from the per-worker
    seeds (reproducible for the same ``seed`` and ``num_workers``, but not exact after resuming).
    ``loader.dataset`` is a thin wrapper that forwards attributes (``coco_gt()``, ...) to ``dataset``.
    """
    if batch_size < 1:
        raise ValueError(f"build_loader: batch_size must be >= 1, got {batch_size}")
    if sampler is None:
        sampler = ResumableSampler(len(dataset), shuffle, seed, num_replicas, rank, drop_last)
    return DataLoader(
        _SeededItems(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility),
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(int(seed)),
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Select ``epoch`` and skip its first ``start_batch`` batches (a loader from :func:`build_loader`)."""
    sampler = loader.sampler
    if not hasattr(sampler, "set_epoch"):
        raise TypeError(f"set_loader_epoch: the loader's sampler {type(sampler).__name__} has no set_epoch")
    if start_batch and not isinstance(sampler, ResumableSampler):
        raise TypeError("set_loader_epoch: start_batch needs the loader's default ResumableSampler")
    if isinstance(sampler, ResumableSampler):
        sampler.set_epoch(epoch, start_index=start_batch * int(loader.batch_size or 1))
    else:
        sampler.set_epoch(epoch)
