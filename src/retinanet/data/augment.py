"""Training augmentations, ``(image, target) -> (image, target)``, exact on boxes; built from ``data.augment``.

They run on the decoded file image, a uint8 numpy array ``[H, W, 3]``, before the resize and
:class:`~retinanet.data.transforms.ToTensor` (with ``data.resize: tensor`` too). ``target`` is the
dataset's dict: ``boxes`` float32 ``[n, 4]`` xyxy pixels, ``labels`` int64 ``[n]``, ``size`` ``(h, w)``
(updated here), ``orig_size`` (the file's, left as is). A new target dict is returned.

Geometric ops move box edges exactly as they move pixels: the pixel ``[x, x + 1)`` of column ``x``
goes where the edge ``x`` goes. Boxes are then clipped to the new image and a box is kept only if
its clipped area is at least ``min_visible`` times its area before clipping (in the pixels after
any scaling) and positive; ``labels`` follow.

- :class:`PhotometricDistortion`: brightness, contrast, saturation, hue, each applied with
  probability 1/2, in a random order; boxes unchanged.
- :class:`RandomVerticalFlip`, :class:`RandomRotate90` (``k`` counter-clockwise quarter turns,
  as ``numpy.rot90``).
- :class:`RandomIoUCrop`: SSD's crop: sides ``[min_scale, max_scale]`` of the image's, at least one box
  kept, optionally one box overlapping the crop by an IoU drawn from ``min_ious``.
- :class:`RandomExpand`: zoom out: the image at a random integer offset on a larger ``fill`` canvas.
- :class:`LargeScaleJitter`: resize (Pillow, bilinear) to fit ``size * s``, ``s`` uniform in
  ``scale``, then a random crop / bottom-right padding to ``size x size``.
- ``mosaic`` (:class:`retinanet.data.mosaic.Mosaic`): four dataset images in one.

:func:`retinanet.data.augment_build.build_augmentations` makes them from ``data.augment``.

Randomness: each op draws from its ``generator`` (or ``seed=``) if given, else from torch's global
generator, which :class:`~retinanet.data.sampler.SeededDataset` reseeds per item from
``(seed, epoch, index)``: augmentation is a function of the sample and resuming stays exact.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from retinanet.data.transforms import _make_generator

__all__ = [
    "PhotometricDistortion",
    "RandomVerticalFlip",
    "RandomRotate90",
    "RandomIoUCrop",
    "RandomExpand",
    "LargeScaleJitter",
    "fit_boxes",
]

Target = dict[str, Any]
Fill = tuple[int, int, int]
PER_BOX_KEYS = ("boxes", "labels")
DEFAULT_FILL: Fill = (124, 116, 104)  # ImageNet mean colour, 0..255


# ------------------------------------------------------------------------------------------ helpers
def _check_image(image: Any, op: str) -> tuple[int, int]:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = f"{type(image).__name__} {getattr(image, 'dtype', '')} {tuple(getattr(image, 'shape', ()))}"
        raise TypeError(f"{op}: expected a uint8 numpy image [H, W, 3] (run before ToTensor), got {what}")
    return int(image.shape[0]), int(image.shape[1])


class _Random:
    """Draws from a generator (None: torch's global one)."""

    def __init__(self, generator: Optional[torch.Generator]) -> None:
        self.g = generator

    def happens(self, p: float) -> bool:
        """True with probability ``p`` (no draw when ``p`` is 0 or 1)."""
        if p <= 0.0:
            return False
        return p >= 1.0 or bool(torch.rand((), generator=self.g) < p)

    def uniform(self, lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), dtype=torch.float64, generator=self.g))

    def integer(self, lo: int, hi: int) -> int:
        """Uniform in ``lo..hi`` inclusive."""
        return lo if hi <= lo else int(torch.randint(lo, hi + 1, (1,), generator=self.g))


def _boxes64(target: Target) -> Optional[torch.Tensor]:
    b = target.get("boxes")
    return None if b is None else torch.as_tensor(b).to(torch.float64).reshape(-1, 4)


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)


def _visible(b: torch.Tensor, h: int, w: int, min_visible: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clipped boxes, keep mask)`` of float64 boxes ``b`` in an image ``h x w``."""
    c = b.clone()
    c[:, 0::2] = c[:, 0::2].clamp(0, w)
    c[:, 1::2] = c[:, 1::2].clamp(0, h)
    ref, area = _area(b), _area(c)
    keep = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1]) & (ref > 0) & (area >= min_visible * ref)
    return c, keep


def fit_boxes(target: Target, boxes: Optional[torch.Tensor], h: int, w: int, min_visible: float = 0.0) -> Target:
    """A new target for an image now ``h x w`` with ``boxes`` (float64 ``[n, 4]``, moved but not clipped):
    clipped to the image, kept when ``clipped area >= min_visible * area`` and positive; per-box keys
    (``boxes``, ``labels``) follow; ``size`` is set."""
    out = dict(target)
    out["size"] = (int(h), int(w))
    if boxes is None:
        return out
    c, keep = _visible(boxes, h, w, min_visible)
    old = target.get("boxes")
    out["boxes"] = c[keep].to(old.dtype if isinstance(old, torch.Tensor) else torch.float32)
    if not bool(keep.all()):
        for k in PER_BOX_KEYS[1:]:
            if k in out and out[k] is not None:
                out[k] = torch.as_tensor(out[k])[keep]
    return out


def _resize(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    if image.shape[:2] == (new_h, new_w):
        return image
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((new_w, new_h), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------------ photometric
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


class PhotometricDistortion:
    """With probability ``p``: brightness (add ``U(-brightness, brightness)``, 0..255 units), contrast
    (blend with the image's mean grey, factor ``U(contrast)``), saturation (blend with each pixel's grey,
    factor ``U(saturation)``), hue (rotate about the grey axis by ``U(-hue, hue)`` degrees); each applied
    with probability 1/2, in a random order, clipped to 0..255 after each. Boxes unchanged."""

    def __init__(
        self,
        p: float = 0.5,
        brightness: float = 32.0,
        contrast: Sequence[float] = (0.5, 1.5),
        saturation: Sequence[float] = (0.5, 1.5),
        hue: float = 18.0,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.p, self.brightness, self.hue = float(p), float(brightness), float(hue)
        self.contrast = (float(contrast[0]), float(contrast[1]))
        self.saturation = (float(saturation[0]), float(saturation[1]))
        self.generator = _make_generator(generator, seed)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        _check_image(image, "PhotometricDistortion")
        r = _Random(self.generator)
        if not r.happens(self.p):
            return image, target
        img: np.ndarray = image.astype(np.float32)
        for step in torch.randperm(4, generator=self.generator).tolist():
            if not r.happens(0.5):
                continue
            if step == 0:
                img += r.uniform(-self.brightness, self.brightness)
            elif step == 1:
                m = float((img @ _GREY).mean())
                img = m + r.uniform(*self.contrast) * (img - m)
            elif step == 2:
                grey = (img @ _GREY)[..., None]
                img = grey + r.uniform(*self.saturation) * (img - grey)
            else:
                t = np.deg2rad(r.uniform(-self.hue, self.hue))
                rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
                img = img @ (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ).T.astype(np.float32)
            np.clip(img, 0.0, 255.0, out=img)
        return np.rint(img).astype(np.uint8), target

    def __repr__(self) -> str:
        return (
            f"PhotometricDistortion(p={self.p}, brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue})"
        )


# ------------------------------------------------------------------------------------------ flips, rotations
class RandomVerticalFlip:
    """Mirror top-bottom with probability ``p``; boxes: ``y1' = H - y2``, ``y2' = H - y1``."""

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None, seed: Optional[int] = None):
        self.p = float(p)
        self.generator = _make_generator(generator, seed)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        h, w = _check_image(image, "RandomVerticalFlip")
        if not _Random(self.generator).happens(self.p):
            return image, target
        b = _boxes64(target)
        if b is not None:
            b = torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], dim=1)
        return np.ascontiguousarray(image[::-1]), fit_boxes(target, b, h, w)

    def __repr__(self) -> str:
        return f"RandomVerticalFlip(p={self.p})"


class RandomRotate90:
    """With probability ``p``, ``k`` counter-clockwise quarter turns (``numpy.rot90``), ``k`` uniform from
    ``ks``. One turn of a ``W``-wide image: ``x' = y``, ``y' = W - x``; the image becomes ``W x H``."""

    def __init__(
        self,
        p: float = 1.0,
        ks: Sequence[int] = (0, 1, 2, 3),
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ):
        if not ks or any(k not in (0, 1, 2, 3) for k in ks):
            raise ValueError(f"RandomRotate90: ks must be quarter turns from 0..3, got {ks!r}")
        self.p, self.ks = float(p), tuple(int(k) for k in ks)
        self.generator = _make_generator(generator, seed)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        h, w = _check_image(image, "RandomRotate90")
        r = _Random(self.generator)
        if not r.happens(self.p):
            return image, target
        k = self.ks[r.integer(0, len(self.ks) - 1)]
        if k == 0:
            return image, target
        b = _boxes64(target)
        for _ in range(k):
            if b is not None:
                b = torch.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], dim=1)
            h, w = w, h
        return np.ascontiguousarray(np.rot90(image, k)), fit_boxes(target, b, h, w)

    def __repr__(self) -> str:
        return f"RandomRotate90(p={self.p}, ks={self.ks})"


# ------------------------------------------------------------------------------------------ crop, expand, LSJ
def _iou_with(b: torch.Tensor, x0: int, y0: int, x1: int, y1: int) -> torch.Tensor:
    iw = (b[:, 2].clamp(max=x1) - b[:, 0].clamp(min=x0)).clamp(min=0)
    ih = (b[:, 3].clamp(max=y1) - b[:, 1].clamp(min=y0)).clamp(min=0)
    inter = iw * ih
    return inter / (_area(b) + (x1 - x0) * (y1 - y0) - inter)


class RandomIoUCrop:
    """SSD's object-keeping crop, with probability ``p``. Up to ``trials`` times: crop sides
    ``U(min_scale, max_scale)`` times the image's (their ratio within ``[1/max_aspect, max_aspect]``),
    at a random integer position; accepted if some box stays (visible-area rule, ``min_visible``) and,
    when ``min_ious`` is given (one value drawn per image), some box overlaps the crop with IoU at least
    that. No trial accepted: the image is returned unchanged. An image without boxes takes the first
    crop of an allowed shape."""

    def __init__(
        self,
        p: float = 0.5,
        min_scale: float = 0.3,
        max_scale: float = 1.0,
        max_aspect: float = 2.0,
        min_ious: Sequence[float] = (),
        min_visible: float = 0.5,
        trials: int = 50,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> None:
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"RandomIoUCrop: need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
        self.p, self.min_scale, self.max_scale, self.max_aspect = float(p), min_scale, max_scale, max_aspect
        self.min_ious, self.min_visible, self.trials = tuple(min_ious), float(min_visible), int(trials)
        self.generator = _make_generator(generator, seed)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        h, w = _check_image(image, "RandomIoUCrop")
        r = _Random(self.generator)
        if not r.happens(self.p):
            return image, target
        b = _boxes64(target)
        min_iou = self.min_ious[r.integer(0, len(self.min_ious) - 1)] if self.min_ious else None
        for _ in range(self.trials):
            sw, sh = r.uniform(self.min_scale, self.max_scale), r.uniform(self.min_scale, self.max_scale)
            if not 1.0 / self.max_aspect <= sh / sw <= self.max_aspect:
                continue
            cw, ch = max(1, round(sw * w)), max(1, round(sh * h))
            x0, y0 = r.integer(0, w - cw), r.integer(0, h - ch)
            if b is None or len(b) == 0:
                return self._crop(image, target, None, x0, y0, cw, ch)
            moved = b - torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
            if not bool(_visible(moved, ch, cw, self.min_visible)[1].any()):
                continue
            if min_iou is not None and float(_iou_with(b, x0, y0, x0 + cw, y0 + ch).max()) < min_iou:
                continue
            return self._crop(image, target, moved, x0, y0, cw, ch)
        return image, target

    def _crop(
        self, image: np.ndarray, target: Target, moved: Optional[torch.Tensor], x0: int, y0: int, cw: int, ch: int
    ) -> tuple[np.ndarray, Target]:
        out = np.ascontiguousarray(image[y0 : y0 + ch, x0 : x0 + cw])
        return out, fit_boxes(target, moved, ch, cw, self.min_visible)

    def __repr__(self) -> str:
        return (
            f"RandomIoUCrop(p={self.p}, scale=({self.min_scale}, {self.max_scale}), max_aspect={self.max_aspect}, "
            f"min_ious={self.min_ious}, min_visible={self.min_visible}, trials={self.trials})"
        )


class RandomExpand:
    """Zoom out with probability ``p``: a canvas ``round(r * H) x round(r * W)``, ``r`` uniform in ``ratio``,
    filled with ``fill`` (RGB 0..255), the image pasted at a random integer offset; boxes shifted by it."""

    def __init__(
        self,
        p: float = 0.5,
        ratio: Sequence[float] = (1.0, 4.0),
        fill: Fill = DEFAULT_FILL,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> None:
        self.p, self.ratio, self.fill = float(p), (float(ratio[0]), float(ratio[1])), tuple(int(c) for c in fill)
        self.generator = _make_generator(generator, seed)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        h, w = _check_image(image, "RandomExpand")
        r = _Random(self.generator)
        if not r.happens(self.p):
            return image, target
        s = r.uniform(*self.ratio)
        nh, nw = max(h, round(s * h)), max(w, round(s * w))
        x0, y0 = r.integer(0, nw - w), r.integer(0, nh - h)
        canvas = np.empty((nh, nw, 3), dtype=np.uint8)
        canvas[:] = np.asarray(self.fill, dtype=np.uint8)
        canvas[y0 : y0 + h, x0 : x0 + w] = image
        b = _boxes64(target)
        if b is not None:
            b = b + torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
        return canvas, fit_boxes(target, b, nh, nw)

    def __repr__(self) -> str:
        return f"RandomExpand(p={self.p}, ratio={self.ratio}, fill={self.fill})"


class LargeScaleJitter:
    """Large scale jitter, with probability ``p``: resize (Pillow bilinear) by ``f = size * s / max(H, W)``,
    ``s`` uniform in ``scale``, sides rounded (boxes scaled by the exact per-axis factors), then crop a
    random ``size x size`` window where the image is larger and pad bottom / right with ``fill`` where it
    is smaller. The output is ``size x size``. Boxes: visible-area rule ``min_visible``."""

    def __init__(
        self,
        size: int,
        p: float = 1.0,
        scale: Sequence[float] = (0.1, 2.0),
        min_visible: float = 0.0,
        fill: Fill = DEFAULT_FILL,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
    ) -> None:
        if int(size) < 1:
            raise ValueError(f"LargeScaleJitter: size must be >= 1, got {size!r}")
        self.size, self.p, self.scale = int(size), float(p), (float(scale[0]), float(scale[1]))
        self.min_visible, self.fill = float(min_visible), tuple(int(c) for c in fill)
        self.generator = _make_generator(generator, seed)

    def __call__(self, image: np.ndarray, target: Target) -> tuple[np.ndarray, Target]:
        h, w = _check_image(image, "LargeScaleJitter")
        r = _Random(self.generator)
        if not r.happens(self.p):
            return image, target
        f = self.size * r.uniform(*self.scale) / max(h, w)
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        x0, y0 = r.integer(0, nw - self.size), r.integer(0, nh - self.size)
        scaled = _resize(image, nh, nw)[y0 : y0 + self.size, x0 : x0 + self.size]
        out = np.empty((self.size, self.size, 3), dtype=np.uint8)
        out[:] = np.asarray(self.fill, dtype=np.uint8)
        out[: scaled.shape[0], : scaled.shape[1]] = scaled
        b = _boxes64(target)
        if b is not None:
            factors = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float64)
            b = b * factors - torch.tensor([x0, y0, x0, y0], dtype=torch.float64)
        return out, fit_boxes(target, b, self.size, self.size, self.min_visible)

    def __repr__(self) -> str:
        return (
            f"LargeScaleJitter(size={self.size}, p={self.p}, scale={self.scale}, "
            f"min_visible={self.min_visible}, fill={self.fill})"
        )
