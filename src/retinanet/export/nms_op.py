"""The NMS step of the exported detectors as one operator, ``torch.ops.retinanet.nms_keep``.

``nms_keep(boxes [B, C, 4] float32, priority [B, C] float32, labels [B, C] int64, num_classes,
iou_threshold, iou_cmp) -> keep [B, C] bool``: per image and class, greedy NMS in order of decreasing
``priority``; a candidate with ``priority <= 0`` takes no part (is never kept, never suppresses). A box
is dropped when its IoU with a kept box of the same image and class is ``> iou_threshold``.

In PyTorch (eager, and inside a ``torch.export`` program) the operator runs
:func:`retinanet.ops.nms.greedy_nms`, the NMS of the eager model, with ``iou_cmp``, the exact float32
stand-in of the threshold (:func:`retinanet.ops.boxes.exact_threshold`). For ONNX,
:func:`onnx_nms_keep` translates it to ``NonMaxSuppression`` (``iou_cmp`` as its threshold): ONNX
Runtime computes the float32 IoU with the same formula and compares it with ``>`` as well; its order of
equal scores is unspecified, so the caller passes distinct priorities (the rank of each candidate in
the eager model's order). Loading a pt2 file that uses the operator imports this module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from retinanet.ops.nms import greedy_nms

__all__ = ["nms_keep", "onnx_nms_keep"]


@torch.library.custom_op("retinanet::nms_keep", mutates_args=())
def nms_keep(
    boxes: Tensor, priority: Tensor, labels: Tensor, num_classes: int, iou_threshold: float, iou_cmp: float
) -> Tensor:
    """Keep mask ``[B, C]`` of greedy per-(image, class) NMS (see the module docstring)."""
    b, c = priority.shape
    if boxes.shape != (b, c, 4) or labels.shape != (b, c):
        raise ValueError(
            f"nms_keep: boxes [B, C, 4], priority [B, C] and labels [B, C] expected, got "
            f"{list(boxes.shape)}, {list(priority.shape)}, {list(labels.shape)}"
        )
    img, cand = (priority > 0).nonzero(as_tuple=True)
    groups = img * int(num_classes) + labels[img, cand]
    kept = greedy_nms(boxes[img, cand], priority[img, cand], groups, float(iou_threshold), float(iou_cmp))
    keep = torch.zeros((b, c), dtype=torch.bool, device=priority.device)
    keep[img[kept], cand[kept]] = True
    return keep


@nms_keep.register_fake
def _(boxes: Tensor, priority: Tensor, labels: Tensor, num_classes: int, iou_threshold: float, iou_cmp: float):
    return torch.empty(priority.shape, dtype=torch.bool, device=priority.device)


def _opset() -> Any:
    """onnxscript's opset 18 (imported on use: onnxscript is needed for ONNX export only)."""
    from onnxscript import opset18

    return opset18


def onnx_nms_keep(boxes: Any, priority: Any, labels: Any, num_classes: int, iou_threshold: float, iou_cmp: float):
    """ONNX translation of :func:`nms_keep` (onnxscript ops, for ``torch.onnx.export``'s
    ``custom_translation_table``): one ``NonMaxSuppression`` over ``[B, K, C]`` class scores that hold a
    candidate's priority in its class row and -1 elsewhere, score threshold 0."""
    op = _opset()
    classes = op.Range(op.Constant(value_int=0), op.Constant(value_int=num_classes), op.Constant(value_int=1))
    in_class = op.Equal(op.Unsqueeze(labels, [1]), op.Unsqueeze(classes, [0, 2]))  # [B, K, C]
    scores = op.Where(in_class, op.Unsqueeze(priority, [1]), op.Constant(value_float=-1.0))  # priority: float32
    max_per_class = op.Shape(priority, start=1, end=2)  # C: no limit
    selected = op.NonMaxSuppression(
        boxes,
        scores,
        max_per_class,
        op.Constant(value_floats=[iou_cmp]),
        op.Constant(value_floats=[0.0]),
    )  # [S, 3] (image, class, candidate)
    where = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # [S, 2] (image, candidate)
    ones = op.Expand(op.Constant(value_int=1), op.Shape(selected, start=0, end=1))
    zeros = op.Expand(op.Constant(value_int=0), op.Shape(priority))
    return op.Cast(op.ScatterND(zeros, where, ones), to=9)  # 9: BOOL


def onnx_sort_stable(self: Any, *, stable: Any = None, dim: int = -1, descending: bool = False):
    """ONNX translation of ``torch.sort(..., stable=True)``: ``TopK`` over the whole axis, which breaks
    ties by the lower index (the ONNX specification; ONNX Runtime's kernel does) in both directions."""
    op = _opset()
    k = op.Shape(self, start=dim) if dim == -1 else op.Shape(self, start=dim, end=dim + 1)
    values, indices = op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)
    return values, indices
