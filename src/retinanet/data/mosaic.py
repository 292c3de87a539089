"""Mosaic: four training images in one ``size x size`` image (``data.augment: [{name: mosaic}]``).

A transform like the others of :mod:`retinanet.data.augment` (uint8 ``[H, W, 3]`` image and its target
in, a new pair out), but it needs three more images: :func:`bind_mosaic` gives it the dataset
(``build_dataset`` does). With probability ``p``, three indices are drawn uniformly from the dataset;
each of the four images (this one first) passes through the ops listed before the mosaic, is resized
(Pillow, bilinear) so its longer side is ``size`` (boxes scaled by the exact per-axis factors), and is
placed with one corner at the centre ``(cx, cy)`` (each a fraction ``U(center)`` of ``size``, rounded to
a pixel): this image's bottom-right corner, the second's bottom-left, the third's top-right, the
fourth's top-left. What falls outside the canvas is cut; the rest of the canvas is ``fill``. Boxes
follow their image, are clipped to the canvas and kept by the visible-area rule (``min_visible``).
``orig_size``, ``image_id`` and ``index`` stay this image's; ``size`` becomes ``(size, size)``.

Randomness as the other ops (own generator, else torch's global one, reseeded per item by
:class:`~retinanet.data.sampler.SeededDataset`), so the partner images are a function of
``(seed, epoch, index)`` too.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np
import torch

from retinanet.data.augment import DEFAULT_FILL, Fill, Target, _boxes64, _check_image, _Random, _resize, _visible
from retinanet.data.transforms import Compose, _make_generator

__all__ = ["Mosaic", "bind_mosaic"]


def _as_uint8(image: Any) -> np.ndarray:
    """A dataset item's image as uint8 ``[H, W, 3]`` (float 0-1 ``[3, H, W]`` tensors come back exactly)."""
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            image = (image * 255.0).round_().clamp_(0, 255)
        return image.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return np.asarray(image, dtype=np.uint8)


class Mosaic:
    """See the module docstring. ``source[j]`` must return dataset item ``j`` as ``(image, target)``."""

    def __init__(
        self,
        size: int,
        p: float = 0.5,
        center: Sequence[float] = (0.25, 0.75),
        min_visible: float = 0.0,
        fill: Fill = DEFAULT_FILL,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> None:
        if int(size) < 1:
            raise ValueError(f"Mosaic: size must be >= 1, got {size!r}")
        self.size, self.p, self.center = int(size), float(p), (float(center[0]), float(center[1]))
        self.min_visible, self.fill = float(min_visible), tuple(int(c) for c in fill)
        self.generator = _make_generator(generator, seed)
        self.source: Any = None
        self.num_items = 0

    def bind(self, source: Any, num_items: int) -> None:
        """Take the partner images from ``source[0 .. num_items - 1]``."""
        if num_items < 1:
            raise ValueError("Mosaic: the dataset is empty")
        self.source, self.num_items = source, int(num_items)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        _check_image(image, "Mosaic")
        r = _Random(self.generator)
        if not r.happens(self.p):
            return image, target
        if self.source is None:
            raise RuntimeError("Mosaic needs the dataset's images: call bind_mosaic(dataset, transforms) first")
        others = torch.randint(self.num_items, (3,), generator=self.generator).tolist()
        S = self.size
        cx, cy = round(r.uniform(*self.center) * S), round(r.uniform(*self.center) * S)
        canvas = np.empty((S, S, 3), dtype=np.uint8)
        canvas[:] = np.asarray(self.fill, dtype=np.uint8)
        tiles = [(image, target)] + [self.source[j] for j in others]
        boxes, labels = [], []
        for k, (img, tgt) in enumerate(tiles):
            img = _as_uint8(img)
            h, w = img.shape[:2]
            f = S / max(h, w)
            nh, nw = max(1, round(h * f)), max(1, round(w * f))
            tile = _resize(img, nh, nw)
            ox = cx - nw if k in (0, 2) else cx
            oy = cy - nh if k in (0, 1) else cy
            xa, ya, xb, yb = max(ox, 0), max(oy, 0), min(ox + nw, S), min(oy + nh, S)
            if xb > xa and yb > ya:
                canvas[ya:yb, xa:xb] = tile[ya - oy : yb - oy, xa - ox : xb - ox]
            b = _boxes64(tgt)
            if b is None or len(b) == 0:
                continue
            b = b * torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float64)
            b = b + torch.tensor([ox, oy, ox, oy], dtype=torch.float64)
            c, keep = _visible(b, S, S, self.min_visible)
            boxes.append(c[keep])
            labels.append(torch.as_tensor(tgt["labels"], dtype=torch.int64)[keep])
        out = dict(target)
        old = target.get("boxes")
        dtype = old.dtype if isinstance(old, torch.Tensor) else torch.float32
        out["boxes"] = torch.cat(boxes).to(dtype) if boxes else torch.zeros((0, 4), dtype=dtype)
        out["labels"] = torch.cat(labels) if labels else torch.zeros((0,), dtype=torch.int64)
        out["size"] = (S, S)
        return canvas, out

    def __repr__(self) -> str:
        return (
            f"Mosaic(size={self.size}, p={self.p}, center={self.center}, min_visible={self.min_visible}, "
            f"fill={self.fill}, bound={self.source is not None})"
        )


def bind_mosaic(dataset: Any, transforms: Any) -> None:
    """Bind every :class:`Mosaic` among ``transforms.transforms`` (a :class:`~retinanet.data.transforms.Compose`)
    to ``dataset``: its partner images are the dataset's items through the transforms listed before it
    (a shallow copy of the dataset with those transforms; the annotation arrays are shared)."""
    ts = list(getattr(transforms, "transforms", ()))
    for i, t in enumerate(ts):
        if isinstance(t, Mosaic):
            raw = copy.copy(dataset)
            raw.transforms = Compose(ts[:i]) if i else None
            t.bind(raw, len(dataset))
