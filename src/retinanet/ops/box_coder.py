"""Anchor-relative box deltas (Girshick et al.; the targets of RetinaNet's box subnet).

- :class:`BoxCoder` ``encode(gt[..., 4], anchors[..., 4]) -> deltas[..., 4]`` and
  ``decode(deltas[..., 4], anchors[..., 4]) -> boxes[..., 4]``: checked, leading dims broadcast
  (e.g. deltas ``[B, N, 4]`` with anchors ``[N, 4]``).
- :func:`decode_boxes` the unchecked decode, TorchScript-compatible, for post-processing and export.

Boxes are ``(x1, y1, x2, y2)`` pixels; deltas ``(dx, dy, dw, dh)``. Half-precision inputs are computed
in float32, float64 stays float64.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor

from retinanet.ops.boxes import check_boxes, float_dtype, to_float

__all__ = ["BoxCoder", "decode_boxes"]


def _centers(b: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(cx, cy, w, h)`` of ``[..., 4]`` boxes."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def decode_boxes(
    deltas: Tensor, anchors: Tensor, weights: Tuple[float, float, float, float], scale_clamp: float
) -> Tensor:
    """Boxes ``[..., 4]`` from ``deltas`` relative to ``anchors`` (broadcast, both already in the compute
    dtype); the arithmetic of :meth:`BoxCoder.decode` without its checks."""
    ax, ay, aw, ah = _centers(anchors)
    wx, wy, ww, wh = weights
    dw = (deltas[..., 2] / ww).clamp(max=scale_clamp)
    dh = (deltas[..., 3] / wh).clamp(max=scale_clamp)
    cx = (deltas[..., 0] / wx) * aw + ax
    cy = (deltas[..., 1] / wy) * ah + ay
    half_w = 0.5 * (torch.exp(dw) * aw)
    half_h = 0.5 * (torch.exp(dh) * ah)
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


class BoxCoder:
    """Encodes boxes as deltas from anchors and decodes them back.

    ``encode``: ``dx = wx * (gx - ax) / aw``, ``dy = wy * (gy - ay) / ah``, ``dw = ww * log(gw / aw)``,
    ``dh = wh * log(gh / ah)`` with centres ``(x1 + x2) / 2`` and sizes ``x2 - x1``. ``decode`` inverts it,
    clamping ``dw / ww`` and ``dh / wh`` at ``scale_clamp`` before ``exp`` so a wild prediction gives at
    most ``exp(scale_clamp)`` times the anchor size. Both are differentiable (no in-place ops on inputs).
    Ground-truth sizes below ``min_gt_size`` (1e-6 px) are raised to it so that a degenerate gt box
    yields a large but finite ``dw``/``dh`` instead of -inf.
    """

    min_gt_size = 1e-6

    def __init__(
        self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), scale_clamp: float = math.log(1000.0 / 16)
    ) -> None:
        w = tuple(float(x) for x in weights)
        if len(w) != 4 or not all(math.isfinite(x) and x > 0 for x in w):
            raise ValueError(
                f"box_coder.py: BoxCoder weights must be 4 finite numbers > 0 (wx, wy, ww, wh), got {tuple(weights)}"
            )
        if math.isnan(float(scale_clamp)):
            raise ValueError("box_coder.py: BoxCoder scale_clamp must be a number, got nan")
        self.weights: Tuple[float, float, float, float] = (w[0], w[1], w[2], w[3])
        self.scale_clamp = float(scale_clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.6g})"

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas ``[..., 4]`` that move ``anchors`` onto ``gt_boxes`` (both ``[..., 4]``, broadcast)."""
        check_boxes("gt_boxes", gt_boxes)
        check_boxes("anchors", anchors)
        dtype = float_dtype(gt_boxes, anchors)
        gx, gy, gw, gh = _centers(to_float(gt_boxes, dtype))
        ax, ay, aw, ah = _centers(to_float(anchors, dtype))
        wx, wy, ww, wh = self.weights
        dx = wx * (gx - ax) / aw
        dy = wy * (gy - ay) / ah
        dw = ww * torch.log(gw.clamp(min=self.min_gt_size) / aw)
        dh = wh * torch.log(gh.clamp(min=self.min_gt_size) / ah)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``[..., 4]`` (x1, y1, x2, y2) from ``deltas`` relative to ``anchors`` (broadcast)."""
        if not isinstance(deltas, Tensor) or deltas.dim() == 0 or deltas.shape[-1] != 4:
            raise ValueError(
                f"box_coder.py: deltas must be a tensor [..., 4] (dx, dy, dw, dh), got "
                f"{list(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__}"
            )
        check_boxes("anchors", anchors)
        dtype = float_dtype(deltas, anchors)
        return decode_boxes(to_float(deltas, dtype), to_float(anchors, dtype), self.weights, self.scale_clamp)
