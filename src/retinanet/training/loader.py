"""The training data loader: the seeded batch order of :mod:`retinanet.data.sampler`, from any iteration.

``build_train_loader(dataset, cfg, start_iter, max_iter, rank, world_size, pin_memory)`` yields
:class:`~retinanet.data.collate.Batch` es of this process's share of each global batch (``solver.batch_size``
over all processes), starting at ``start_iter`` so a resumed run sees exactly the batches it would have
seen. Augmentation is seeded per item from ``(seed, epoch, index)``; worker processes ignore Ctrl-C
(the main process stops training cleanly).
"""

from __future__ import annotations

from torch.utils.data import DataLoader

from retinanet.config import Config
from retinanet.data.collate import collate
from retinanet.data.dataset import DetectionDataset
from retinanet.data.sampler import SeededDataset, TrainBatchSampler
from retinanet.training.signals import ignore_sigint

__all__ = ["build_train_loader"]


def build_train_loader(
    dataset: DetectionDataset,
    cfg: Config,
    start_iter: int,
    max_iter: int,
    rank: int,
    world_size: int,
    pin_memory: bool = False,
) -> DataLoader:
    """The loader of iterations ``start_iter + 1 .. max_iter`` (``batch_sampler.batches_per_epoch`` tells
    how many iterations make an epoch)."""
    sampler = TrainBatchSampler(
        len(dataset),
        cfg.solver.batch_size,
        seed=cfg.train.seed,
        start_iter=start_iter,
        max_iter=max_iter,
        rank=rank,
        world_size=world_size,
    )
    workers = cfg.data.num_workers
    return DataLoader(
        SeededDataset(dataset, cfg.train.seed),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
        pin_memory=pin_memory,
        worker_init_fn=ignore_sigint if workers > 0 else None,
        prefetch_factor=2 if workers > 0 else None,
    )
