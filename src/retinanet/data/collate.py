"""Batching: normalize + pad images into one tensor.

- :func:`normalize`: ``(x - IMAGENET_MEAN) / IMAGENET_STD`` per RGB channel over ``[..., 3, H, W]``
  (inputs RGB 0-1), the torchvision convention so torchvision-format weights load.
- :func:`collate`: a list of ``(image [3, h, w] float 0-1, target)`` -> :class:`Batch` with
  ``images [B, 3, Hp, Wp]`` (normalized, then zero-padded at the bottom/right, so padding is 0 in
  normalized space; ``Hp``, ``Wp`` multiples of ``size_divisibility``), ``targets`` (the list of
  dicts) and ``image_sizes`` (``(h, w)`` before padding). One preallocated output tensor.

The training data order and per-sample augmentation seeds live in :mod:`retinanet.data.sampler`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batch",
    "normalize",
    "collate",
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
