"""IoU matcher: assigns each anchor a ground-truth box index, background or ignore (RetinaNet's rule).

``Matcher.match(gt_boxes[M, 4], anchors[N, 4]) -> LongTensor[N]`` with, per anchor:

- the index ``m`` of its best ground-truth box (highest IoU, first index on ties) when that IoU is
  ``>= fg_iou_threshold`` (0.5 in the paper);
- ``-1`` (background) when its best IoU is ``< bg_iou_threshold`` (0.4);
- ``-2`` (ignored) in between;
- with ``allow_low_quality_matches``: for every gt box whose best IoU over all anchors is ``> 0``, each
  anchor reaching exactly that best IoU becomes foreground with its *own* best gt index (the convention
  of detectron2 and torchvision), so every box that touches any anchor gets at least one positive.

``M = 0`` gives all ``-1``. Thresholds compare IoU values exactly as real numbers (a float32 IoU of
``0.4f = 0.40000001`` is ``>= 0.4``).

Memory: ``match`` never builds the ``M x N`` IoU matrix. Pass 1 walks the anchors in chunks of
``chunk_size`` (default: about 512k IoU values per chunk, in three reused buffers) and keeps only each
anchor's best IoU, each gt's best IoU and, for low-quality matches, the few (chunk, gt) pairs where a
gt's best IoU may lie. Pass 2 recomputes just those gt rows on those chunks to find the anchors
reaching a gt's best IoU; pass 3 computes the best gt index only for anchors that keep one
(foreground and rescued). ``Matcher(iou_matrix)`` applies the same rule to an IoU matrix ``[M, N]``
you already have.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from retinanet.ops.boxes import (
    box_area,
    check_boxes,
    exact_threshold,
    float_dtype,
    iou_from_parts,
    iou_from_parts_into,
    to_float,
)

__all__ = ["Matcher"]

_CHUNK_ELEMS = 1 << 19  # IoU values per chunk when chunk_size is None (2 MB float32 buffers)


class Matcher:
    """Anchor-to-gt assignment with an ignore band and optional low-quality matches (see module doc)."""

    BACKGROUND = -1
    IGNORE = -2

    def __init__(
        self,
        fg_iou_threshold: float = 0.5,
        bg_iou_threshold: float = 0.4,
        allow_low_quality_matches: bool = True,
        chunk_size: Optional[int] = None,
    ) -> None:
        fg, bg = float(fg_iou_threshold), float(bg_iou_threshold)
        if math.isnan(fg) or math.isnan(bg) or bg > fg:
            raise ValueError(
                f"matcher.py: need bg_iou_threshold <= fg_iou_threshold, got "
                f"bg_iou_threshold={bg_iou_threshold}, fg_iou_threshold={fg_iou_threshold}"
            )
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or int(chunk_size) < 1
        ):
            raise ValueError(f"matcher.py: chunk_size must be a positive int or None, got {chunk_size!r}")
        self.fg_iou_threshold = fg
        self.bg_iou_threshold = bg
        self.allow_low_quality_matches = bool(allow_low_quality_matches)
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    def __repr__(self) -> str:
        return (
            f"Matcher(fg_iou_threshold={self.fg_iou_threshold}, bg_iou_threshold={self.bg_iou_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches}, chunk_size={self.chunk_size})"
        )

    # ------------------------------------------------------------------------------------------
    def __call__(self, iou_matrix: Tensor) -> Tensor:
        """Matches ``LongTensor[N]`` from an IoU matrix ``[M, N]`` (gt x anchors)."""
        if not isinstance(iou_matrix, Tensor) or iou_matrix.dim() != 2:
            got = list(iou_matrix.shape) if isinstance(iou_matrix, Tensor) else type(iou_matrix).__name__
            raise ValueError(f"matcher.py: iou_matrix must be a tensor [M, N] (gt x anchors), got {got}")
        iou = to_float(iou_matrix)
        m, n = iou.shape
        if m == 0:
            return torch.full((n,), self.BACKGROUND, dtype=torch.int64, device=iou.device)
        if n == 0:
            return torch.empty(0, dtype=torch.int64, device=iou.device)
        best, best_gt = iou.max(dim=0)
        rescue = None
        if self.allow_low_quality_matches:
            gt_best = iou.amax(dim=1)
            target = torch.where(gt_best > 0, gt_best, torch.full_like(gt_best, math.inf))
            rescue = (iou == target[:, None]).any(dim=0).nonzero().squeeze(1)
        return self._labels(best, best_gt, rescue)

    def match(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Matches ``LongTensor[N]`` for ``gt_boxes[M, 4]`` and ``anchors[N, 4]``, chunked over anchors."""
        return self.match_with_iou(gt_boxes, anchors)[0]

    def match_with_iou(self, gt_boxes: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor]:
        """``(matches LongTensor[N], best_iou float[N])``: ``best_iou`` is each anchor's highest IoU
        with any gt box (the IoU with ``matches`` for foreground anchors; 0 when ``M = 0``)."""
        check_boxes("gt_boxes", gt_boxes, ndim=2)
        check_boxes("anchors", anchors, ndim=2)
        if gt_boxes.device != anchors.device:
            raise ValueError(f"matcher.py: gt_boxes on {gt_boxes.device} but anchors on {anchors.device}")
        dtype = float_dtype(gt_boxes, anchors)
        gt = to_float(gt_boxes, dtype)
        an = to_float(anchors, dtype)
        m, n = gt.shape[0], an.shape[0]
        device = an.device
        if m == 0 or n == 0:
            return (
                torch.full((n,), self.BACKGROUND, dtype=torch.int64, device=device),
                torch.zeros(n, dtype=dtype, device=device),
            )

        chunk = min(self.chunk_size or max(1, _CHUNK_ELEMS // m), n)
        g_t = torch.cat((gt.t(), box_area(gt)[None]), dim=0)  # [5, m] contiguous
        g_parts = [g_t[k][:, None] for k in range(5)]  # [m, 1] each
        an_t = torch.cat((an.t(), box_area(an)[None]), dim=0)  # [5, N]: one contiguous row per part
        bufs = [torch.empty(m * chunk, dtype=dtype, device=device) for _ in range(3)]

        def iou_rows(cols: Tensor) -> Tensor:
            """cols [5, k] anchor parts -> IoU as a [k, m] view of a [m, k] block in bufs[0]."""
            k = cols.shape[1]
            views = [b[: m * k].view(m, k) for b in bufs]
            return iou_from_parts_into(g_parts, [cols[i][None] for i in range(5)], *views).t()

        # pass 1: each anchor's best IoU, each gt's best IoU, and the chunks where a gt's best may lie
        best = torch.empty(n, dtype=dtype, device=device)
        gt_best = torch.zeros(m, dtype=dtype, device=device)
        seen: list[tuple[int, Tensor, Tensor]] = []  # (chunk start, gt ids, their max in the chunk)
        for s in range(0, n, chunk):
            iou = iou_rows(an_t[:, s : s + chunk])
            torch.amax(iou, dim=1, out=best[s : s + chunk])
            col_max = iou.amax(dim=0)
            if self.allow_low_quality_matches:
                g = ((col_max >= gt_best) & (col_max > 0)).nonzero().squeeze(1)
                if g.numel():
                    seen.append((s, g, col_max[g]))
            torch.maximum(gt_best, col_max, out=gt_best)

        # pass 2 (low-quality matches): revisit only the (chunk, gt) pairs that hold a gt's best IoU
        rescue = None
        if seen:
            hits = []
            for s, g, v in seen:
                g = g[v == gt_best[g]]
                if g.numel() == 0:
                    continue
                cols = an_t[:, s : s + chunk]
                a = [cols[i][:, None] for i in range(5)]
                b = [p[g, 0][None] for p in g_parts]
                iou = iou_from_parts(a[0], a[1], a[2], a[3], a[4], b[0], b[1], b[2], b[3], b[4])
                hits.append(s + (iou == gt_best[g][None]).any(dim=1).nonzero().squeeze(1))
            if hits:
                rescue = torch.cat(hits)

        # pass 3: the gt index (first on ties) only for anchors that keep one: foreground and rescued
        fg = exact_threshold(self.fg_iou_threshold, dtype, strict=False)
        with_gt = (best >= fg).nonzero().squeeze(1)
        if rescue is not None:
            with_gt = torch.unique(torch.cat((with_gt, rescue)))
        best_gt = torch.zeros(n, dtype=torch.int64, device=device)
        for s in range(0, with_gt.numel(), chunk):
            idx = with_gt[s : s + chunk]
            best_gt[idx] = iou_rows(an_t.index_select(1, idx)).argmax(dim=1)
        return self._labels(best, best_gt, rescue), best

    # ------------------------------------------------------------------------------------------
    def _labels(self, best: Tensor, best_gt: Tensor, rescue: Optional[Tensor]) -> Tensor:
        """Thresholds ``best`` IoU into codes; ``rescue``: anchor indices restored to ``best_gt``."""
        fg = exact_threshold(self.fg_iou_threshold, best.dtype, strict=False)
        bg = exact_threshold(self.bg_iou_threshold, best.dtype, strict=False)
        codes = torch.where(best >= bg, self.IGNORE, self.BACKGROUND).to(torch.int64)
        out = torch.where(best >= fg, best_gt, codes)
        if rescue is not None and rescue.numel():
            out[rescue] = best_gt[rescue]
        return out
