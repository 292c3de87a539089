"""Online hard example mining (OHEM), the baseline of the focal-loss paper's Table 1d.

Per image: every non-ignored anchor is scored by its sigmoid cross-entropy (summed over the ``K``
classes, unbalanced); greedy NMS over the anchors' predicted boxes ranked by that loss drops near
duplicates; the highest-loss survivors form the minibatch, ``batch_size`` anchors per image. With
``pos_fraction`` (the "OHEM 1:3" variant at 0.25) at most ``floor(pos_fraction * batch_size)`` of them
are foreground and the negatives fill the rest. The classification loss is the cross-entropy summed
over the selected anchors.

- :func:`ohem_select` ``(scores [B, N], boxes [B, N, 4], valid [B, N], positive [B, N]) -> [B, N]``
  bool mask of the selected anchors. Per image, the greedy NMS runs over the loss-sorted anchors in
  blocks (``4 * batch_size`` first, doubling up to 2048; vectorized inside a block) and stops once the
  minibatch is decided, so a batch of 128 usually costs a few thousand boxes, not the ~100k anchors of
  an image. With a ratio it must see every positive, so a well-classified positive deep in the ranking
  makes it run further (on the CPU, seconds per image in the worst case).
- :func:`ohem_cross_entropy` ``(logits [B, N, K], cls_targets [B, N], boxes [B, N, 4], ...) ->
  (loss, num_selected)``: the summed cross-entropy of the selected anchors (a float32 scalar with
  gradient) and their count (a float32 scalar).

Targets are the class codes of :mod:`retinanet.losses.focal` (``>= 0`` class, ``-1`` background,
``-2`` ignored). Ties in the loss are broken by the lower anchor index, as in the NMS.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from retinanet.losses.focal import sigmoid_cross_entropy_loss
from retinanet.ops.boxes import box_iou, exact_threshold
from retinanet.ops.nms import nms

__all__ = ["ohem_select", "ohem_cross_entropy"]

_BLOCK = 2048  # candidates per NMS block (the IoU against the kept boxes is [block, kept])


def _greedy_prefix(
    boxes: Tensor, positive: Tensor, thresh: Optional[float], batch_size: int, cap_pos: Optional[int]
) -> tuple[Tensor, Tensor]:
    """Greedy NMS over one image's candidates, already sorted by decreasing loss, run in blocks
    and stopped as soon as the minibatch is decided. Returns the kept positions (sorted) and whether
    each is positive.

    Without a ratio (``cap_pos`` None) it stops once ``batch_size`` anchors are kept. With one, once
    ``cap_pos`` positives and ``batch_size - cap_pos`` negatives are kept, or every positive was seen
    and enough negatives are kept to fill the minibatch. A block is first cut by the boxes kept before
    it, then reduced by NMS inside it: the exact greedy result, with the IoU formula and threshold
    comparison of :func:`nms`."""
    m = boxes.shape[0]
    kept: list[Tensor] = []
    kept_boxes = boxes.new_zeros((0, 4))
    t_cmp = exact_threshold(float(thresh), boxes.dtype, strict=True) if thresh is not None else 0.0
    pos_left = int(positive.sum())
    n_pos = n_neg = 0
    start, block = 0, min(_BLOCK, 4 * batch_size)
    while start < m:
        idx = torch.arange(start, min(start + block, m), device=boxes.device)
        pos_left -= int(positive[idx].sum())
        start, block = start + block, min(_BLOCK, 2 * block)
        if thresh is not None:
            if kept_boxes.shape[0]:
                idx = idx[~(box_iou(boxes[idx], kept_boxes) > t_cmp).any(1)]
            idx = idx[nms(boxes[idx], -idx.to(boxes.dtype), float(thresh))]
            kept_boxes = torch.cat([kept_boxes, boxes[idx]])
        kept.append(idx)
        k_pos = int(positive[idx].sum())
        n_pos, n_neg = n_pos + k_pos, n_neg + idx.numel() - k_pos
        if cap_pos is None:
            if n_pos + n_neg >= batch_size:
                break
        elif n_neg >= batch_size - min(n_pos, cap_pos) and (n_pos >= cap_pos or pos_left == 0):
            break
    out = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long, device=boxes.device)
    return out, positive[out]


def ohem_select(
    scores: Tensor,
    boxes: Tensor,
    valid: Tensor,
    positive: Tensor,
    batch_size: int,
    nms_thresh: Optional[float] = 0.5,
    pos_fraction: Optional[float] = None,
) -> Tensor:
    """The OHEM minibatch: a bool mask ``[B, N]`` of the selected anchors.

    ``scores [B, N]`` rank the anchors (their loss; higher = harder), ``boxes [B, N, 4]`` are their
    predicted boxes, ``valid [B, N]`` marks the anchors that take part (not ignored), ``positive [B, N]``
    the foreground ones. ``nms_thresh=None`` skips the NMS; ``pos_fraction=None`` imposes no ratio.
    """
    if scores.dim() != 2 or boxes.shape != (*scores.shape, 4):
        raise ValueError(
            f"ohem_select: need scores [B, N] and boxes [B, N, 4], got {list(scores.shape)}, {list(boxes.shape)}"
        )
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"ohem_select: batch_size must be >= 1, got {batch_size}")
    cap = None if pos_fraction is None else math.floor(float(pos_fraction) * batch_size + 1e-9)
    mask = torch.zeros_like(valid, dtype=torch.bool)
    for b in range(scores.shape[0]):
        cand = valid[b].nonzero().squeeze(1)
        # decreasing loss, ties by the lower anchor index (the NMS order)
        cand = cand[torch.sort(-scores[b, cand].detach().float(), stable=True).indices]
        kept, kept_pos = _greedy_prefix(boxes[b, cand].detach().float(), positive[b, cand], nms_thresh, batch_size, cap)
        if cap is None:
            take = kept[:batch_size]
        else:
            pos, neg = kept[kept_pos], kept[~kept_pos]
            pos = pos[:cap]
            take = torch.cat([pos, neg[: batch_size - pos.numel()]])
        mask[b, cand[take]] = True
    return mask


def ohem_cross_entropy(
    logits: Tensor,
    cls_targets: Tensor,
    boxes: Tensor,
    batch_size: int,
    nms_thresh: Optional[float] = 0.5,
    pos_fraction: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """Sigmoid cross-entropy summed over the OHEM minibatch, and the minibatch size.

    ``logits [B, N, K]``, ``cls_targets [B, N]`` class codes, ``boxes [B, N, 4]`` the predicted boxes
    (used for the NMS only; a non-finite box suppresses nothing). Returns ``(loss, num_selected)``.
    """
    per_anchor = sigmoid_cross_entropy_loss(logits, cls_targets, reduction="none").sum(-1)  # [B, N]
    valid = cls_targets != -2
    finite = torch.isfinite(boxes).all(-1)
    safe_boxes = torch.where(finite[..., None], boxes, torch.zeros_like(boxes))
    mask = ohem_select(per_anchor.detach(), safe_boxes, valid, cls_targets >= 0, batch_size, nms_thresh, pos_fraction)
    loss = torch.where(mask, per_anchor, torch.zeros_like(per_anchor)).sum()
    return loss, mask.sum().to(torch.float32)
