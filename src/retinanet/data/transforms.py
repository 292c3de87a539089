"""Detection transforms: ``(image, target) -> (image, target)``, boxes kept exact.

``image`` is either a uint8 numpy array ``[H, W, 3]`` (what :func:`~retinanet.data.image_io.load_image`
returns; resized with Pillow) or a float tensor ``[3, H, W]`` (resized with ``torch.nn.functional.interpolate``).
Both use bilinear interpolation with half-pixel centres, antialiased when downscaling unless
``antialias=False``.

Two resize recipes, chosen by ``data.resize`` / ``data.resize_rounding`` (:func:`build_transforms`):

- ``pillow`` / ``round`` (default, detectron2's sizes): the uint8 image resized with Pillow, each side
  rounded to the nearest pixel;
- ``tensor`` / ``floor`` (torchvision's detection transform): the float 0-1 image resized with
  ``interpolate(bilinear, align_corners=False)``, no antialiasing, by one factor
  ``s = min(short / min(h, w), max_size / max(h, w))`` with sides ``floor(h * s)``, ``floor(w * s)``.

``target`` is a dict; the keys used here:

- ``boxes``: float32 ``[n, 4]`` xyxy pixels of the current image (absent is fine);
- ``orig_size``: ``(h, w)`` of the file (set by the datasets);
- ``size``: ``(h, w)`` of the current image (updated by resizing).

Transforms return a new target dict (the input one is not modified). The model maps its detections
back to ``orig_size`` (``output_sizes=`` of :class:`~retinanet.modeling.retinanet.RetinaNet`).

Randomness: random transforms draw from their own ``torch.Generator`` when given one (``generator=``
or ``seed=``), else from torch's global CPU generator. :class:`retinanet.data.sampler.SeededDataset`
reseeds that global generator for every item from ``(seed, epoch, index)``, so augmentation is the
same whatever the number of workers and after resuming mid-epoch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "Compose",
    "ResizeShortestSide",
    "RandomHorizontalFlip",
    "ToTensor",
    "LabelsToCategoryIds",
    "to_tensor",
    "get_output_size",
    "build_transforms",
]

ImageLike = Union[np.ndarray, torch.Tensor]
Target = dict[str, Any]


def _image_hw(image: ImageLike) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(f"expected a numpy image [H, W, 3], got shape {tuple(image.shape)}")
        return int(image.shape[0]), int(image.shape[1])
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise TypeError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}")
        return int(image.shape[1]), int(image.shape[2])
    raise TypeError(f"expected a numpy array [H, W, 3] or a tensor [3, H, W], got {type(image).__name__}")


def _make_generator(generator: Optional[torch.Generator], seed: Optional[int]) -> Optional[torch.Generator]:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        return torch.Generator().manual_seed(int(seed))
    return generator


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[ImageLike, Target], tuple[ImageLike, Target]]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


def get_output_size(h: int, w: int, short: int, max_size: Optional[int], rounding: str = "round") -> tuple[int, int]:
    """``(new_h, new_w)``: shorter side to ``short``, longer side at most ``max_size``.

    ``rounding="round"``: detectron2's ``ResizeShortestEdge``: scale by ``short / min(h, w)``; if the
    longer side then exceeds ``max_size``, scale down to it; round each side half up (at least 1).
    ``rounding="floor"``: torchvision's: one factor ``s = min(short / min(h, w), max_size / max(h, w))``
    and ``floor(side * s)`` (at least 1).
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got (h, w) = ({h}, {w})")
    if rounding == "floor":
        s = short / min(h, w)
        if max_size:
            s = min(s, max_size / max(h, w))
        return max(1, math.floor(float(h) * s)), max(1, math.floor(float(w) * s))
    if rounding != "round":
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    scale = short / min(h, w)
    new_h, new_w = (float(short), scale * w) if h < w else (scale * h, float(short))
    if max_size and max(new_h, new_w) > max_size:
        s = max_size / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def _resize_image(image: ImageLike, new_h: int, new_w: int, antialias: bool = True) -> ImageLike:
    if isinstance(image, np.ndarray):
        pil = Image.fromarray(np.ascontiguousarray(image))
        return np.array(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
    h, w = image.shape[-2:]
    src = image if image.is_floating_point() else image.float()
    out = F.interpolate(
        src[None],
        size=(new_h, new_w),
        mode="bilinear",
        align_corners=False,
        antialias=antialias and bool(new_h < h or new_w < w),
    )[0]
    if not image.is_floating_point():
        out = out.round_().clamp_(0, 255).to(image.dtype)
    return out


class ResizeShortestSide:
    """Resize so the shorter side is ``min_size`` (one of them, chosen at random) and the longer side
    at most ``max_size``; boxes are scaled by the exact per-axis factors ``new_w / w``, ``new_h / h``.

    ``min_size``: an int, or a sequence for multi-scale training (uniform choice per image).
    ``max_size``: cap on the longer side (``None`` or 0: no cap).
    ``rounding``: ``"round"`` or ``"floor"`` (:func:`get_output_size`); ``antialias``: when downscaling.
    ``generator`` / ``seed``: source of the random choice (default: torch's global generator).
    """

    def __init__(
        self,
        min_size: Union[int, Sequence[int]],
        max_size: Optional[int] = 1333,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        rounding: str = "round",
        antialias: bool = True,
    ) -> None:
        sizes = (min_size,) if isinstance(min_size, (int, np.integer)) else tuple(min_size)
        if not sizes or any(isinstance(s, bool) or int(s) != s or s <= 0 for s in sizes):
            raise ValueError(f"ResizeShortestSide: min_size must be positive ints, got {min_size!r}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"ResizeShortestSide: max_size must be positive or None, got {max_size!r}")
        self.min_sizes = tuple(int(s) for s in sizes)
        self.max_size = int(max_size) if max_size else None
        if rounding not in ("round", "floor"):
            raise ValueError(f"ResizeShortestSide: rounding must be 'round' or 'floor', got {rounding!r}")
        self.rounding, self.antialias = rounding, bool(antialias)
        self.generator = _make_generator(generator, seed)

    def choose_size(self) -> int:
        if len(self.min_sizes) == 1:
            return self.min_sizes[0]
        i = int(torch.randint(len(self.min_sizes), (1,), generator=self.generator))
        return self.min_sizes[i]

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        h, w = _image_hw(image)
        new_h, new_w = get_output_size(h, w, self.choose_size(), self.max_size, self.rounding)
        if (new_h, new_w) != (h, w):
            image = _resize_image(image, new_h, new_w, self.antialias)
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None and len(boxes):
            sx, sy = new_w / w, new_h / h
            factors = torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
            b = (boxes.to(torch.float64) * factors).to(boxes.dtype)
            b[:, 0::2].clamp_(0, new_w)
            b[:, 1::2].clamp_(0, new_h)
            target["boxes"] = b
        target["size"] = (new_h, new_w)
        return image, target

    def __repr__(self) -> str:
        return (
            f"ResizeShortestSide(min_size={self.min_sizes}, max_size={self.max_size}, "
            f"rounding={self.rounding!r}, antialias={self.antialias})"
        )


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``; boxes: ``x1' = W - x2``, ``x2' = W - x1``."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None, seed: Optional[int] = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip: p must be in [0, 1], got {p!r}")
        self.p = float(p)
        self.generator = _make_generator(generator, seed)

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        if self.p <= 0.0:
            return image, target
        if self.p < 1.0 and not bool(torch.rand((), generator=self.generator) < self.p):
            return image, target
        h, w = _image_hw(image)
        image = np.ascontiguousarray(image[:, ::-1]) if isinstance(image, np.ndarray) else image.flip(-1)
        target = dict(target)
        boxes = target.get("boxes")
        if boxes is not None and len(boxes):
            b = boxes.clone()
            b[:, 0] = w - boxes[:, 2]
            b[:, 2] = w - boxes[:, 0]
            target["boxes"] = b
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def to_tensor(image: ImageLike) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` numpy (or uint8 ``[3, H, W]`` tensor) -> contiguous float32 ``[3, H, W]`` in 0-1.

    Float tensors ``[3, H, W]`` are returned as float32 unchanged (assumed already 0-1).
    """
    _image_hw(image)
    if isinstance(image, torch.Tensor):
        if image.dtype == torch.uint8:
            return image.to(torch.float32).div_(255.0)
        return image.to(torch.float32)
    if image.dtype != np.uint8:
        raise TypeError(f"to_tensor: expected a uint8 image, got dtype {image.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return t.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)


class LabelsToCategoryIds:
    """Training targets of a model whose output ``i`` is category id ``i`` (``model.label_space:
    coco_category_ids``): ``labels`` (the dataset's contiguous ``0..K-1``) become category ids."""

    def __init__(self, label_to_category_id: Sequence[int]) -> None:
        self.lut = torch.as_tensor(list(label_to_category_id), dtype=torch.int64)

    def __call__(self, image: ImageLike, target: Target) -> tuple[ImageLike, Target]:
        labels = target.get("labels")
        if labels is None or len(labels) == 0:
            return image, target
        return image, {**target, "labels": self.lut[torch.as_tensor(labels, dtype=torch.int64)]}

    def __repr__(self) -> str:
        return f"LabelsToCategoryIds({self.lut.tolist()})"


class ToTensor:
    """Image to float32 ``[3, H, W]`` 0-1 (see :func:`to_tensor`); the target is passed through."""

    def __call__(self, image: ImageLike, target: Target) -> tuple[torch.Tensor, Target]:
        return to_tensor(image), target

    def __repr__(self) -> str:
        return "ToTensor()"


def build_transforms(
    train: bool,
    min_size: Union[int, Sequence[int]] = 800,
    max_size: Optional[int] = 1333,
    flip_prob: float = 0.5,
    resize: str = "pillow",
    rounding: str = "round",
    augment: Sequence[Mapping[str, Any]] = (),
    fill: tuple[int, int, int] = (124, 116, 104),
) -> Compose:
    """Training: [augment ops] + multi-scale resize + horizontal flip + ToTensor. Evaluation: one resize +
    ToTensor.

    ``resize="pillow"`` resizes the uint8 image (antialiased), ``"tensor"`` the float 0-1 image after
    ToTensor (no antialiasing, torchvision's); ``rounding`` as :func:`get_output_size`.
    ``augment`` (training only): ``data.augment`` entries (:mod:`retinanet.data.augment`), run in order on
    the uint8 image first, with either resize; ``lsj`` / ``mosaic`` default to the largest ``min_size``
    and ``fill`` (RGB 0..255, the model's mean colour) is their canvas colour and ``expand``'s.
    Order: pillow: ``augment..., resize, flip, ToTensor``; tensor: ``augment..., ToTensor, flip, resize``.
    """
    if resize not in ("pillow", "tensor"):
        raise ValueError(f"build_transforms: resize must be 'pillow' or 'tensor', got {resize!r}")
    if not train and not isinstance(min_size, (int, np.integer)):
        sizes = tuple(min_size)
        if len(sizes) != 1:
            raise ValueError(f"build_transforms(train=False): one test size expected, got min_size={sizes}")
        min_size = sizes[0]
    size = ResizeShortestSide(min_size, max_size, rounding=rounding, antialias=resize == "pillow")
    ts: list[Callable[[ImageLike, Target], tuple[ImageLike, Target]]] = (
        [size, ToTensor()] if resize == "pillow" else [ToTensor(), size]
    )
    if train and flip_prob > 0:
        ts.insert(1, RandomHorizontalFlip(flip_prob))
    if train and augment:
        from retinanet.data.augment_build import build_augmentations  # it builds on this module's transforms

        largest = min_size if isinstance(min_size, (int, np.integer)) else max(min_size)
        ts = [*build_augmentations(augment, int(largest), fill), *ts]
    return Compose(ts)
