"""Box arithmetic: area, pairwise IoU, clipping to the image, small-box filtering.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, width ``x2 - x1`` (no +1), see
``docs/architecture.md``. Shapes:

- :func:`box_area` ``[..., 4] -> [...]``; a box with ``x2 < x1`` or ``y2 < y1`` has area 0.
- :func:`box_iou` ``a[N, 4], b[M, 4] -> [N, M]``, in [0, 1]; a pair whose union is 0 has IoU 0 (never NaN).
- :func:`clip_boxes` ``[..., 4]`` with an image size ``(h, w)`` or a tensor ``[..., 2]`` of sizes;
  :func:`clip_boxes_to_sizes` is its unchecked core (TorchScript-compatible).
- :func:`remove_small_boxes` ``[N, 4] -> LongTensor[K]`` indices of boxes at least ``min_size`` wide and high.

Half-precision (and integer) boxes are computed in float32; float64 stays float64.

The helpers shared with :mod:`~retinanet.ops.box_coder`, :mod:`~retinanet.ops.nms` and
:mod:`~retinanet.ops.matcher` live here too, so every caller checks boxes, picks the compute dtype,
compares thresholds and computes IoU the same way:

- :func:`check_boxes` validates a ``[..., 4]`` (or ``[N, 4]``) tensor;
- :func:`float_dtype` / :func:`to_float`: the compute dtype of some boxes and the conversion to it;
- :func:`exact_threshold`: a real-valued threshold as a float32 value that compares exactly;
- :func:`iou_from_parts` / :func:`iou_from_parts_into`: the one IoU formula, on broadcastable
  ``(x1, y1, x2, y2, area)`` parts, allocating or into caller buffers (bit-identical values).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_iou",
    "clip_boxes",
    "clip_boxes_to_sizes",
    "remove_small_boxes",
    "check_boxes",
    "float_dtype",
    "to_float",
    "exact_threshold",
    "iou_from_parts",
    "iou_from_parts_into",
]

_TINY = torch.finfo(torch.float32).tiny  # union floor: 0 / _TINY = 0 for empty unions, no NaN


# ----------------------------------------------------------------------------------------------
# shared helpers
def check_boxes(name: str, boxes: object, ndim: Optional[int] = None) -> Tensor:
    """``boxes`` itself if it is a tensor ``[..., 4]`` (exactly ``ndim`` dims when given), else a
    ``TypeError`` / ``ValueError`` naming the argument ``name``."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes.py: {name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4 or (ndim is not None and boxes.dim() != ndim):
        want = "[N, 4]" if ndim == 2 else "[..., 4]"
        raise ValueError(f"boxes.py: {name} must have shape {want} as (x1, y1, x2, y2), got shape {list(boxes.shape)}")
    return boxes


def float_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype box arithmetic on ``tensors`` runs in: float64 if any of them is float64, else
    float32 (half, bfloat16 and integer boxes are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def to_float(t: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``t`` in ``dtype`` (default :func:`float_dtype` of ``t``), without a copy when it already is."""
    if dtype is None:
        dtype = float_dtype(t)
    return t if t.dtype == dtype else t.to(dtype)


def exact_threshold(t: float, dtype: torch.dtype, *, strict: bool) -> float:
    """``t`` as a value ``t'`` of ``dtype`` such that comparing ``dtype`` values against ``t'`` gives the
    exact real comparison against ``t`` (as torchvision's C++ NMS does with its double threshold):
    ``x > t <=> x > t'`` for ``strict=True`` and ``x >= t <=> x >= t'`` for ``strict=False``.
    """
    if dtype == torch.float64 or not math.isfinite(t):
        return t
    v = float(np.float32(t))
    if not strict and v < t:
        v = float(np.nextafter(np.float32(v), np.float32(np.inf)))
    elif strict and v > t:
        v = float(np.nextafter(np.float32(v), np.float32(-np.inf)))
    return v


def iou_from_parts(
    ax1: Tensor,
    ay1: Tensor,
    ax2: Tensor,
    ay2: Tensor,
    area_a: Tensor,
    bx1: Tensor,
    by1: Tensor,
    bx2: Tensor,
    by2: Tensor,
    area_b: Tensor,
    tiny: float = _TINY,
) -> Tensor:
    """IoU of boxes given as broadcastable coordinate and area tensors (the result has their broadcast
    shape). The one formula used by box_iou, nms and the matcher, so they agree bit for bit."""
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = w * h
    union = (area_a + area_b) - inter
    return inter / union.clamp(min=tiny)


def iou_from_parts_into(a: Sequence[Tensor], b: Sequence[Tensor], out: Tensor, tmp: Tensor, tmp2: Tensor) -> Tensor:
    """:func:`iou_from_parts` of ``a = (x1, y1, x2, y2, area)`` and ``b`` (same values bit for bit),
    written into ``out`` using ``tmp`` and ``tmp2`` as scratch; all three of the broadcast shape.
    For callers that loop over chunks; no autograd."""
    ax1, ay1, ax2, ay2, area_a = a
    bx1, by1, bx2, by2, area_b = b
    w = torch.minimum(ax2, bx2, out=out)
    w.sub_(torch.maximum(ax1, bx1, out=tmp)).clamp_(min=0)
    h = torch.minimum(ay2, by2, out=tmp)
    h.sub_(torch.maximum(ay1, by1, out=tmp2)).clamp_(min=0)
    inter = w.mul_(h)
    union = torch.add(area_a, area_b, out=tmp)
    union.sub_(inter).clamp_(min=_TINY)
    return inter.div_(union)


# ----------------------------------------------------------------------------------------------
# area, IoU, clipping
def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` boxes -> ``[...]``; degenerate boxes (``x2 < x1`` or ``y2 < y1``) have area 0."""
    b = to_float(check_boxes("boxes", boxes))
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``[N, 4] x [M, 4] -> [N, M]`` in float32 (float64 if an input is float64).

    Values are in [0, 1]; a pair with an empty union (two zero-area boxes) has IoU 0, never NaN
    (unions are floored at float32's smallest normal number, 1.2e-38, which only affects sub-1e-38 areas).
    Builds the full matrix: for many boxes against many anchors use :class:`retinanet.ops.matcher.Matcher`,
    which works in chunks. Differentiable.
    """
    check_boxes("boxes1", boxes1, ndim=2)
    check_boxes("boxes2", boxes2, ndim=2)
    dtype = float_dtype(boxes1, boxes2)
    a, b = to_float(boxes1, dtype), to_float(boxes2, dtype)
    area_a, area_b = box_area(a), box_area(b)
    return iou_from_parts(
        a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4], area_a[:, None], b[:, 0], b[:, 1], b[:, 2], b[:, 3], area_b
    )


def clip_boxes_to_sizes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Boxes ``[..., 4]`` clipped to ``0 <= x <= w``, ``0 <= y <= h`` for ``sizes[..., 2]`` of ``(h, w)``
    in the boxes' dtype, broadcast against ``boxes[..., :1]`` (e.g. one size per box, ``[N, 2]``).
    No checks; TorchScript-compatible. Returns a new tensor of the broadcast shape."""
    h, w = sizes[..., 0:1], sizes[..., 1:2]
    x = torch.minimum(boxes[..., 0::2].clamp(min=0), w)  # (x1, x2)
    y = torch.minimum(boxes[..., 1::2].clamp(min=0), h)  # (y1, y2)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def clip_boxes(boxes: Tensor, size: Union[Sequence[float], Tensor]) -> Tensor:
    """Clip ``[..., 4]`` boxes to ``0 <= x <= w``, ``0 <= y <= h``; returns a new tensor.

    ``size`` is ``(h, w)`` for all boxes, or a tensor (or nested sequence) ``[..., 2]`` of ``(h, w)``
    whose leading dims line up with the *leading* dims of ``boxes``: missing trailing dims are added
    before broadcasting, so ``boxes[B, N, 4]`` with ``size[B, 2]`` clips each image's boxes to its own
    size, and ``boxes[N, 4]`` with ``size[N, 2]`` gives every box its own size.
    """
    b = to_float(check_boxes("boxes", boxes))
    s = torch.as_tensor(size, dtype=b.dtype, device=b.device)
    if s.dim() == 0 or s.shape[-1] != 2 or s.dim() > b.dim():
        raise ValueError(
            f"boxes.py: clip_boxes size must be (h, w) or a tensor [..., 2] with at most "
            f"{b.dim()} dims for boxes of shape {list(b.shape)}, got shape {list(s.shape)}"
        )
    if bool((s < 0).any()):
        raise ValueError(f"boxes.py: clip_boxes size (h, w) must be >= 0, got {s.tolist()}")
    while s.dim() < b.dim():
        s = s.unsqueeze(-2)
    return clip_boxes_to_sizes(b, s)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (LongTensor) of the ``[N, 4]`` boxes with width and height both ``>= min_size``."""
    b = check_boxes("boxes", boxes, ndim=2)
    if not math.isfinite(float(min_size)):
        raise ValueError(f"boxes.py: remove_small_boxes min_size must be finite, got {min_size}")
    keep = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    return torch.where(keep)[0]
