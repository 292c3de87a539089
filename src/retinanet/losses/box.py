"""Box regression losses: smooth L1, L1 and GIoU.

- :func:`smooth_l1_loss` / :func:`l1_loss`: ``input`` and ``target`` of the same shape (e.g. box
  deltas ``[N, 4]``) -> that shape (``reduction="none"``) or a scalar;
- :func:`giou_loss`: elementwise pairs of ``(x1, y1, x2, y2)`` boxes ``[..., 4]`` -> ``[...]`` or a scalar.
"""

from __future__ import annotations

import torch
from torch import Tensor

from retinanet.losses.common import Reduction, check_float, check_reduction, reduce_loss

__all__ = ["smooth_l1_loss", "l1_loss", "giou_loss"]


def _check_pair(fn: str, a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    check_float(fn, names[0], a)
    check_float(fn, names[1], b)
    if a.shape != b.shape:
        raise ValueError(f"{fn}: {names[0]} shape {tuple(a.shape)} != {names[1]} shape {tuple(b.shape)}")


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 0.1, reduction: Reduction = "none") -> Tensor:
    """Smooth L1 (Huber / beta): ``0.5 d**2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``.

    ``input`` and ``target`` of the same shape (e.g. box deltas [N, 4]); ``beta < 1e-5`` is exact L1.
    """
    fn = "smooth_l1_loss"
    _check_pair(fn, input, target, ("input", "target"))
    check_reduction(fn, reduction)
    beta = float(beta)
    if not (beta >= 0.0):
        raise ValueError(f"{fn}: beta must be >= 0, got {beta}")
    d = (input - target).abs()
    if beta < 1e-5:
        loss = d
    else:
        loss = torch.where(d < beta, (0.5 / beta) * d * d, d - 0.5 * beta)
    return reduce_loss(loss, reduction)


def l1_loss(input: Tensor, target: Tensor, reduction: Reduction = "none") -> Tensor:
    """Elementwise ``|input - target|`` for tensors of the same shape."""
    fn = "l1_loss"
    _check_pair(fn, input, target, ("input", "target"))
    check_reduction(fn, reduction)
    return reduce_loss((input - target).abs(), reduction)


def giou_loss(
    pred_boxes: Tensor,
    target_boxes: Tensor,
    reduction: Reduction = "none",
    eps: float = 1e-7,
) -> Tensor:
    """``1 - GIoU`` of elementwise box pairs ``(x1, y1, x2, y2)`` [..., 4] -> [...] (in [0, 2)).

    GIoU = IoU - (C - U) / C with U the union and C the area of the smallest enclosing box.
    Identical boxes give 0, disjoint boxes give more than 1.
    """
    fn = "giou_loss"
    _check_pair(fn, pred_boxes, target_boxes, ("pred_boxes", "target_boxes"))
    check_reduction(fn, reduction)
    if pred_boxes.dim() < 1 or pred_boxes.shape[-1] != 4:
        raise ValueError(f"{fn}: boxes must have shape [..., 4], got {tuple(pred_boxes.shape)}")
    px1, py1, px2, py2 = pred_boxes.unbind(-1)
    tx1, ty1, tx2, ty2 = target_boxes.unbind(-1)
    iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
    ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
    inter = iw * ih
    union = (px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter
    iou = inter / (union + eps)
    cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)
    ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    enclose = cw * ch
    giou = iou - (enclose - union) / (enclose + eps)
    return reduce_loss(1.0 - giou, reduction)
