"""Anchor coverage of ground-truth boxes: each box's best anchor IoU and its positive anchors, computed
without the boxes x anchors IoU matrix.

``anchor_coverage(boxes[n, 4], input_sizes[n, 2], generator, fg_iou_threshold, allow_low_quality_matches)``
returns a :class:`Coverage` of ``[n]`` tensors. Box ``i`` is taken alone on its padded input
``input_sizes[i] = (Hp, Wp)``: its anchors are exactly ``generator.flat(feature_sizes, input_size=(Hp, Wp))``
with the network's feature maps ``ceil(Hp / s), ceil(Wp / s)`` for ``s`` in ``network_strides`` (8..128),
so ``strides_from_input``, ``round_sizes`` and ``offset`` act as in the model. IoU values are the
matcher's (:func:`~retinanet.ops.boxes.iou_from_parts` on float32 boxes and anchors):

- ``best_iou`` float32: the highest IoU with any anchor; ``best_level`` (0 = P3) and ``best_anchor`` (cell
  anchor index, ratio outer, scale inner) int64: where it is reached;
- ``num_fg`` int64: the anchors with IoU >= ``fg_iou_threshold`` (the box alone: an anchor that another
  box of the image overlaps more would go to that box);
- ``num_low_quality`` int64: with ``allow_low_quality_matches``, for a box with ``0 < best_iou < fg``, the
  anchors at its best IoU (the matcher makes them foreground); 0 otherwise.

Method: the anchors of one level and one cell shape are translates on a grid, and a box's intersection
with a translate is an x overlap times a y overlap, each non-increasing in the distance between the
centres. So a box's best IoU over one (level, shape) grid is at one of the 2 x 2 grid positions around
its centre. It is computed only for the (level, shape) pairs whose IoU at aligned centres (an upper
bound) reaches the smaller of fg and the best found on the box's two pairs of highest bound. An anchor
with IoU >= t lies within ``|dx| <= (w_box + w_anchor) / 2 - t * max(areas) / min(heights)`` of the box
centre (likewise ``dy``), so counts are taken over that window (plus a cell each side), for the pairs whose
best reaches the threshold. Exact against every anchor (float32 near-ties are visited); memory: chunks of
about ``max_elems`` values; one CPU thread (the tensors are small: more threads mostly wait).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from retinanet.ops.anchors import AnchorGenerator
from retinanet.ops.boxes import box_area, check_boxes, exact_threshold, iou_from_parts

__all__ = ["Coverage", "anchor_coverage", "NETWORK_STRIDES"]

#: downsampling of the feature maps P3..P7 (their sizes are ``ceil(input / stride)``)
NETWORK_STRIDES = (8, 16, 32, 64, 128)
_MAX_ELEMS = 1 << 21


@dataclass
class Coverage:
    """Per-box results of :func:`anchor_coverage` (all ``[n]``)."""

    best_iou: Tensor
    best_level: Tensor
    best_anchor: Tensor
    num_fg: Tensor
    num_low_quality: Tensor

    @property
    def num_positive(self) -> Tensor:
        """Foreground anchors per box: IoU >= fg, plus the low-quality matches."""
        return self.num_fg + self.num_low_quality


def _coords(idx: Tensor, stride: Tensor, offset: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """float32 anchor edges at grid index ``idx``, with grid_anchors' arithmetic (float64, then cast)."""
    shift = idx.to(torch.float64) * stride + offset * stride
    return (shift + lo).to(torch.float32), (shift + hi).to(torch.float32)


def _iou_grid(g: Tensor, ax1: Tensor, ax2: Tensor, ay1: Tensor, ay2: Tensor) -> Tensor:
    """IoU of boxes ``g[..., 4]`` (float32) with anchors on x edges ``[..., Kx]`` times y edges ``[..., Ky]``
    -> ``[..., Kx, Ky]``."""
    x1, x2, y1, y2 = ax1[..., :, None], ax2[..., :, None], ay1[..., None, :], ay2[..., None, :]
    area_a = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    gp = [g[..., k, None, None] for k in range(4)]
    return iou_from_parts(gp[0], gp[1], gp[2], gp[3], box_area(g)[..., None, None], x1, y1, x2, y2, area_a)


def _grids(input_sizes: Tensor, gen: AnchorGenerator, network_strides: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Feature sizes ``[n, L, 2]`` (int64, (H, W)) and anchor strides ``[n, L, 2]`` (float64, (sy, sx))."""
    ns = torch.tensor([int(s) for s in network_strides], dtype=torch.int64)[None, :, None]
    feat = (input_sizes[:, None, :] + ns - 1) // ns
    if gen.strides_from_input:
        strides = (input_sizes[:, None, :] // feat.clamp(min=1)).to(torch.float64)
    else:
        strides = torch.tensor(gen.strides, dtype=torch.float64)[None, :, None].expand(feat.shape).clone()
    return feat, strides


def anchor_coverage(
    boxes: Tensor,
    input_sizes: Tensor,
    generator: AnchorGenerator,
    fg_iou_threshold: float = 0.5,
    allow_low_quality_matches: bool = True,
    network_strides: Sequence[int] = NETWORK_STRIDES,
    max_elems: int = _MAX_ELEMS,
    count: bool = True,
) -> Coverage:
    """Best anchor IoU and positive-anchor counts of ``boxes[n, 4]`` on padded inputs ``input_sizes[n, 2]``
    (``(Hp, Wp)`` per box); see the module docstring. ``count=False``: the best IoU only (over the 2 x 2
    positions; equal up to float32 rounding), counts 0, several times faster. Runs on one CPU thread (the
    tensors are small: more threads mostly wait for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _anchor_coverage(
            boxes,
            input_sizes,
            generator,
            fg_iou_threshold,
            allow_low_quality_matches,
            network_strides,
            max_elems,
            count,
        )
    finally:
        torch.set_num_threads(threads)


def _anchor_coverage(
    boxes: Tensor,
    input_sizes: Tensor,
    generator: AnchorGenerator,
    fg_iou_threshold: float,
    allow_low_quality_matches: bool,
    network_strides: Sequence[int],
    max_elems: int,
    count: bool,
) -> Coverage:
    check_boxes("boxes", boxes, ndim=2)
    sizes = torch.as_tensor(input_sizes, dtype=torch.int64).reshape(-1, 2).cpu()
    b = boxes.detach().to("cpu", torch.float32)
    n = b.shape[0]
    if sizes.shape[0] != n or bool((sizes <= 0).any()):
        raise ValueError(f"anchor_coverage: input_sizes must be [n={n}, 2] positive (Hp, Wp), got {list(sizes.shape)}")
    if len(network_strides) != generator.num_levels:
        raise ValueError(
            f"anchor_coverage: {len(network_strides)} network strides for {generator.num_levels} anchor levels"
        )
    cells = torch.stack(generator.cell_anchors)  # [L, A, 4] float64
    num_levels, num_anchors = cells.shape[:2]
    feat, strides = _grids(sizes, generator, network_strides)
    off = generator.offset
    fg = exact_threshold(float(fg_iou_threshold), torch.float32, strict=False)
    # float32 rounding can put an IoU a few ulps above its real bound or its 2 x 2 best: near ties are visited
    near = 1.0 - 1e-5

    # pass 1: the best IoU of each (box, level, shape) over the 2 x 2 grid positions around the box centre, for
    # the pairs whose aligned IoU (an upper bound) can reach min(fg, the best of the box's top-2 bounds)
    pair_best = torch.zeros(n, num_levels, num_anchors, dtype=torch.float32)
    wa, ha = cells[..., 2] - cells[..., 0], cells[..., 3] - cells[..., 1]  # [L, A]
    step = max(1, max_elems // (num_levels * num_anchors * 4))
    for s in range(0, n, step):
        g = b[s : s + step]
        g64 = g.to(torch.float64)
        wb, hb = (g64[:, 2] - g64[:, 0])[:, None, None], (g64[:, 3] - g64[:, 1])[:, None, None]
        inter = torch.minimum(wb, wa) * torch.minimum(hb, ha)
        bound = (inter / (wb * hb + wa * ha - inter).clamp(min=1e-300)).reshape(len(g), -1)  # [m, L * A]
        k = min(2, bound.shape[1])
        first = bound.topk(k, dim=1).indices
        rows = torch.arange(len(g))[:, None].expand(-1, k).reshape(-1)
        b0 = _pair_best(b, feat, strides, cells, off, rows + s, first.reshape(-1)).view(-1, k).amax(dim=1)
        need = torch.clamp(b0, max=fg).to(torch.float64) * near
        ri, fi = (bound >= need[:, None]).nonzero(as_tuple=True)
        pair_best.view(n, -1)[ri + s, fi] = _pair_best(b, feat, strides, cells, off, ri + s, fi)
    flat = pair_best.reshape(n, -1)
    best, where = flat.max(dim=1) if n else (flat.new_zeros(0), torch.zeros(0, dtype=torch.int64))

    # pass 2: counts over the windows where an anchor can reach the threshold
    num_fg = torch.zeros(n, dtype=torch.int64)
    num_lq = torch.zeros(n, dtype=torch.int64)
    if not count:
        return Coverage(best, where // num_anchors, where % num_anchors, num_fg, num_lq)
    bi, li, ai = (pair_best >= fg * near).nonzero(as_tuple=True)
    counts, wmax = _window_counts(b, feat, strides, cells, off, bi, li, ai, torch.full((bi.numel(),), fg), max_elems)
    num_fg.index_add_(0, bi, counts)
    top = best.clone()
    top.scatter_reduce_(0, bi, wmax, reduce="amax")
    if allow_low_quality_matches:
        low = (top > 0) & (top < fg)
        bi, li, ai = ((pair_best >= top[:, None, None] * near) & low[:, None, None]).nonzero(as_tuple=True)
        counts, wmax = _window_counts(b, feat, strides, cells, off, bi, li, ai, best[bi], max_elems)
        top.scatter_reduce_(0, bi, wmax, reduce="amax")
        redo = (top[bi] > best[bi]).nonzero().squeeze(1)  # a window held a higher IoU: count at that one
        if redo.numel():
            args = (bi[redo], li[redo], ai[redo], top[bi[redo]], max_elems)
            counts[redo] = _window_counts(b, feat, strides, cells, off, *args)[0]
        num_lq.index_add_(0, bi, counts)  # the anchors at the box's best IoU
    return Coverage(top, where // num_anchors, where % num_anchors, num_fg, num_lq)


def _pair_best(b: Tensor, feat: Tensor, strides: Tensor, cells: Tensor, off: float, bi: Tensor, fi: Tensor) -> Tensor:
    """The best IoU ``[P]`` of box ``bi`` with the anchors of (level, shape) ``fi = level * A + shape``, over the
    2 x 2 grid positions around the box centre."""
    num_anchors = cells.shape[1]
    li, cell = fi // num_anchors, cells.reshape(-1, 4)[fi]  # [P, 4]
    g = b[bi]
    g64 = g.to(torch.float64)
    edges = []
    for axis in (0, 1):  # x, y
        st = strides[bi, li, 1 - axis][:, None]
        last = (feat[bi, li, 1 - axis] - 1).to(torch.float64)[:, None]
        u = torch.floor(
            (
                (g64[:, axis, None] + g64[:, axis + 2, None]) / 2
                - off * st
                - (cell[:, axis, None] + cell[:, axis + 2, None]) / 2
            )
            / st
        )
        idx = torch.minimum(torch.cat((u, u + 1), dim=1).clamp(min=0), last)  # [P, 2]
        edges.append(_coords(idx, st, off, cell[:, axis, None], cell[:, axis + 2, None]))
    (ax1, ax2), (ay1, ay2) = edges
    return _iou_grid(g, ax1, ax2, ay1, ay2).amax(dim=(1, 2))


def _window_counts(
    b: Tensor,
    feat: Tensor,
    strides: Tensor,
    cells: Tensor,
    off: float,
    bi: Tensor,
    li: Tensor,
    ai: Tensor,
    thr: Tensor,
    max_elems: int,
) -> tuple[Tensor, Tensor]:
    """For the triples (box ``bi``, level ``li``, shape ``ai``): the anchors with IoU >= ``thr`` ``[P]``
    (int64) and the highest IoU in the window ``[P]`` (float32)."""
    p = bi.numel()
    counts = torch.zeros(p, dtype=torch.int64)
    wmax = torch.zeros(p, dtype=torch.float32)
    if p == 0:
        return counts, wmax
    g = b[bi]
    g64 = g.to(torch.float64)
    cell = cells[li, ai]  # [P, 4]
    wb, hb = g64[:, 2] - g64[:, 0], g64[:, 3] - g64[:, 1]
    wa, ha = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    t = thr.to(torch.float64)
    need = t * torch.maximum(wb * hb, wa * ha)
    lo_idx, kk = [], []
    for axis, (sb, sa, other_b, other_a) in enumerate(((wb, wa, hb, ha), (hb, ha, wb, wa))):
        st = strides[bi, li, 1 - axis]
        last = (feat[bi, li, 1 - axis] - 1).to(torch.float64)
        reach = ((sb + sa) / 2 - need / torch.minimum(other_b, other_a).clamp(min=1e-30)).clamp(min=0)
        reach = torch.where(t > 0, reach, torch.full_like(reach, float("inf")))
        c = (g64[:, axis] + g64[:, axis + 2]) / 2
        u = (c - off * st - (cell[:, axis] + cell[:, axis + 2]) / 2) / st
        zero = torch.zeros_like(last)
        lo = torch.minimum(torch.maximum(torch.floor(u - reach / st) - 1, zero), last)
        hi = torch.minimum(torch.maximum(torch.ceil(u + reach / st) + 1, zero), last)
        lo_idx.append(lo.to(torch.int64))
        kk.append((hi - lo + 1).to(torch.int64))
    # bucket by window shape (rounded up to powers of two), chunk each bucket by max_elems
    kx = _pow2(kk[0])
    ky = _pow2(kk[1])
    key = kx * (1 << 32) + ky
    for k in torch.unique(key).tolist():
        sel = (key == k).nonzero().squeeze(1)
        kxv, kyv = k >> 32, k & ((1 << 32) - 1)
        step = max(1, max_elems // (kxv * kyv))
        for s in range(0, sel.numel(), step):
            j = sel[s : s + step]
            edges, valid = [], []
            for axis, kv in ((0, kxv), (1, kyv)):
                idx = lo_idx[axis][j, None] + torch.arange(kv)[None]
                valid.append(idx < lo_idx[axis][j, None] + kk[axis][j, None])
                st = strides[bi[j], li[j], 1 - axis][:, None]
                edges.append(_coords(idx, st, off, cell[j, axis, None], cell[j, axis + 2, None]))
            (ax1, ax2), (ay1, ay2) = edges
            iou = _iou_grid(g[j], ax1, ax2, ay1, ay2)  # [P', Kx, Ky]
            iou = iou.masked_fill(~(valid[0][:, :, None] & valid[1][:, None, :]), -1.0)
            counts[j] = (iou >= thr[j, None, None]).sum(dim=(1, 2))
            wmax[j] = iou.amax(dim=(1, 2))
    return counts, wmax


def _pow2(k: Tensor) -> Tensor:
    """The smallest power of two >= ``k`` (k >= 1), elementwise."""
    return torch.pow(2, torch.ceil(torch.log2(k.to(torch.float64))).clamp(min=0)).to(torch.int64)
