"""Batching for the data loaders: a list of ``(image, target)`` items -> :class:`Batch`.

``collate(items)`` checks each item and keeps the images as a list of ``[3, h, w]`` tensors (float RGB
0-1 or uint8, sizes may differ) and the targets as a list of dicts. Normalizing and padding are the
model's job (:meth:`retinanet.modeling.retinanet.RetinaNet.preprocess`), so every path into the model,
training, evaluation, prediction and export, gets the same input contract.

The training data order and per-sample augmentation seeds live in :mod:`retinanet.data.sampler`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, Union

import torch

__all__ = ["Batch", "collate"]


@dataclass
class Batch:
    """What :func:`collate` returns: ``images, targets = batch`` unpacks it."""

    images: list[torch.Tensor]  # [3, h, w] each, RGB float 0-1 or uint8
    targets: list[dict[str, Any]]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.images, self.targets))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Batch":
        targets = [{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in self.targets]
        return Batch([fn(im) for im in self.images], targets)

    def to(self, device: Union[str, torch.device], non_blocking: bool = False) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._map(lambda t: t.pin_memory())


def collate(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]]) -> Batch:
    """Group ``(image [3, h, w], target)`` pairs into a :class:`Batch`; ``TypeError`` names a bad item."""
    if len(batch) == 0:
        raise ValueError("collate: empty batch")
    for i, item in enumerate(batch):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise TypeError(f"collate: item {i} must be an (image, target) pair, got {type(item).__name__}")
        img = item[0]
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
            raise TypeError(f"collate: item {i} image must be a tensor [3, H, W], got {shape}")
    return Batch([item[0] for item in batch], [item[1] for item in batch])
