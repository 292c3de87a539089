"""Box operations: area, IoU, clipping, the anchor box coder and (batched) non-maximum suppression.

Boxes are ``(x1, y1, x2, y2)`` in absolute pixels, width ``x2 - x1`` (no +1), see
``docs/architecture.md``. Shapes:

- :func:`box_area` ``[..., 4] -> [...]``; a box with ``x2 < x1`` or ``y2 < y1`` has area 0.
- :func:`box_iou` ``a[N, 4], b[M, 4] -> [N, M]``, in [0, 1]; a pair whose union is 0 has IoU 0 (never NaN).
- :func:`clip_boxes` ``[..., 4]`` with an image size ``(h, w)`` or a tensor ``[..., 2]`` of sizes.
- :func:`remove_small_boxes` ``[N, 4] -> LongTensor[K]`` indices of boxes at least ``min_size`` wide and high.
- :class:`BoxCoder` ``encode(gt[..., 4], anchors[..., 4]) -> deltas[..., 4]`` and
  ``decode(deltas[..., 4], anchors[..., 4]) -> boxes[..., 4]`` (leading dims broadcast).
- :func:`nms` ``boxes[N, 4], scores[N] -> LongTensor[K]`` and :func:`batched_nms` (``idxs[N]`` groups that
  never suppress each other), both with torchvision's semantics and kept indices by decreasing score.

Half-precision (and integer) boxes are computed in float32; float64 stays float64.

NMS algorithm (exact, vectorized). Greedy NMS keeps box ``j`` (in descending-score rank order) iff no
*kept* box ``i`` ranked before it has ``IoU(i, j) > iou_threshold``. We (1) find the suppression edges
``i -> j`` without the full ``N x N`` IoU matrix: a pair can only have ``IoU > t`` if both boxes share a
group and overlap in x by more than ``t * width``; after sorting boxes by (group, x1), each box's
candidate partners are one contiguous run found with ``searchsorted``, and the IoU is computed only for
those pairs, in bounded chunks. (2) The greedy result is the unique fixed point of
``keep[j] = not any(keep[i] for edges i -> j)``; we reach it by peeling: every undecided box with no
undecided suppressor is kept, the boxes it suppresses are dropped, and the edges touching decided boxes
are discarded, repeated until no edge is left. A pathological chain (each box suppressing only the next)
needs many rounds; after ``_MAX_PEEL_ROUNDS`` the rest is finished by one sequential sweep in rank order.
Ties in score are broken by the lower input index first (stable sort), so results are deterministic.
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
    "remove_small_boxes",
    "BoxCoder",
    "nms",
    "batched_nms",
]

_TINY = torch.finfo(torch.float32).tiny  # union floor: 0 / _TINY = 0 for empty unions, no NaN
_PAIR_CHUNK = 1 << 18  # candidate pairs whose IoU is computed at once in NMS (~25 MB of temporaries)
_MAX_PEEL_ROUNDS = 32  # peeling rounds before NMS finishes with a sequential sweep
_DENSE_MAX_N = 1 << 14  # NMS switches its edge list to an N x N bool matrix only up to this N ...
_DENSE_EDGE_DIVISOR = 16  # ... once it holds more than N * N / 16 edges (16 bytes each > N * N bytes)


# ----------------------------------------------------------------------------------------------
# helpers
def _check_boxes(name: str, boxes: object, ndim: Optional[int] = None) -> Tensor:
    if not isinstance(boxes, Tensor):
        raise TypeError(f"boxes.py: {name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() == 0 or boxes.shape[-1] != 4 or (ndim is not None and boxes.dim() != ndim):
        want = "[N, 4]" if ndim == 2 else "[..., 4]"
        raise ValueError(f"boxes.py: {name} must have shape {want} as (x1, y1, x2, y2), "
                         f"got shape {list(boxes.shape)}")
    return boxes


def _as_float(t: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """float32 for half/bfloat16/integer tensors, float64 kept (or ``dtype`` when given)."""
    if dtype is None:
        dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    return t if t.dtype == dtype else t.to(dtype)


def _common_float(a: Tensor, b: Tensor) -> torch.dtype:
    da = _as_float(a[..., :0]).dtype
    db = _as_float(b[..., :0]).dtype
    return torch.promote_types(da, db)


def _f32_bound(t: float, dtype: torch.dtype, upper: bool) -> float:
    """A threshold ``t`` as a value of ``dtype`` such that comparisons of ``dtype`` values against it
    equal the exact real comparison (as torchvision's C++ NMS does with its double threshold):
    ``x > t  <=>  x > _f32_bound(t, dtype, upper=False)`` and ``x >= t  <=>  x >= _f32_bound(t, dtype, True)``.
    """
    if dtype == torch.float64 or not math.isfinite(t):
        return t
    v = float(np.float32(t))
    if upper and v < t:
        v = float(np.nextafter(np.float32(v), np.float32(np.inf)))
    elif not upper and v > t:
        v = float(np.nextafter(np.float32(v), np.float32(-np.inf)))
    return v


def _iou_parts(ax1: Tensor, ay1: Tensor, ax2: Tensor, ay2: Tensor, area_a: Tensor,
               bx1: Tensor, by1: Tensor, bx2: Tensor, by2: Tensor, area_b: Tensor) -> Tensor:
    """IoU of broadcastable coordinate tensors. The one formula shared by box_iou, nms and the
    matcher, so every caller gets bit-identical values."""
    w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    inter = w * h
    union = (area_a + area_b) - inter
    return inter / union.clamp(min=_TINY)


def _iou_parts_into(a: Sequence[Tensor], b: Sequence[Tensor], out: Tensor, tmp: Tensor,
                    tmp2: Tensor) -> Tensor:
    """Same arithmetic as :func:`_iou_parts` (same values bit for bit) into preallocated buffers of
    the broadcast shape, for callers that loop over chunks (no autograd)."""
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
    b = _as_float(_check_boxes("boxes", boxes))
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``[N, 4] x [M, 4] -> [N, M]`` in float32 (float64 if an input is float64).

    Values are in [0, 1]; a pair with an empty union (two zero-area boxes) has IoU 0, never NaN
    (unions are floored at float32's smallest normal number, 1.2e-38, which only affects sub-1e-38 areas).
    Builds the full matrix: for many boxes against many anchors use :class:`retinanet.ops.matcher.Matcher`,
    which works in chunks. Differentiable.
    """
    _check_boxes("boxes1", boxes1, ndim=2)
    _check_boxes("boxes2", boxes2, ndim=2)
    dtype = _common_float(boxes1, boxes2)
    a, b = _as_float(boxes1, dtype), _as_float(boxes2, dtype)
    area_a, area_b = box_area(a), box_area(b)
    return _iou_parts(a[:, 0:1], a[:, 1:2], a[:, 2:3], a[:, 3:4], area_a[:, None],
                      b[:, 0], b[:, 1], b[:, 2], b[:, 3], area_b)


def clip_boxes(boxes: Tensor, size: Union[Sequence[float], Tensor]) -> Tensor:
    """Clip ``[..., 4]`` boxes to ``0 <= x <= w``, ``0 <= y <= h``; returns a new tensor.

    ``size`` is ``(h, w)`` for all boxes, or a tensor (or nested sequence) ``[..., 2]`` of ``(h, w)``
    whose leading dims line up with the *leading* dims of ``boxes``: missing trailing dims are added
    before broadcasting, so ``boxes[B, N, 4]`` with ``size[B, 2]`` clips each image's boxes to its own
    size, and ``boxes[N, 4]`` with ``size[N, 2]`` gives every box its own size.
    """
    b = _as_float(_check_boxes("boxes", boxes))
    s = torch.as_tensor(size, dtype=b.dtype, device=b.device)
    if s.dim() == 0 or s.shape[-1] != 2 or s.dim() > b.dim():
        raise ValueError(f"boxes.py: clip_boxes size must be (h, w) or a tensor [..., 2] with at most "
                         f"{b.dim()} dims for boxes of shape {list(b.shape)}, got shape {list(s.shape)}")
    if bool((s < 0).any()):
        raise ValueError(f"boxes.py: clip_boxes size (h, w) must be >= 0, got {s.tolist()}")
    while s.dim() < b.dim():
        s = s.unsqueeze(-2)
    h, w = s[..., 0:1], s[..., 1:2]
    out = torch.empty(torch.broadcast_shapes(b.shape, s.shape[:-1] + (4,)), dtype=b.dtype, device=b.device)
    out[..., 0::2] = torch.minimum(b[..., 0::2].clamp(min=0), w)
    out[..., 1::2] = torch.minimum(b[..., 1::2].clamp(min=0), h)
    return out


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (LongTensor) of the ``[N, 4]`` boxes with width and height both ``>= min_size``."""
    b = _check_boxes("boxes", boxes, ndim=2)
    if not math.isfinite(float(min_size)):
        raise ValueError(f"boxes.py: remove_small_boxes min_size must be finite, got {min_size}")
    keep = ((b[:, 2] - b[:, 0]) >= min_size) & ((b[:, 3] - b[:, 1]) >= min_size)
    return torch.where(keep)[0]


# ----------------------------------------------------------------------------------------------
# box coder
class BoxCoder:
    """Anchor-relative box deltas (Girshick et al.; RetinaNet's box subnet targets).

    ``encode``: ``dx = wx * (gx - ax) / aw``, ``dy = wy * (gy - ay) / ah``, ``dw = ww * log(gw / aw)``,
    ``dh = wh * log(gh / ah)`` with centres ``(x1 + x2) / 2`` and sizes ``x2 - x1``. ``decode`` inverts it,
    clamping ``dw / ww`` and ``dh / wh`` at ``scale_clamp`` before ``exp`` so a wild prediction gives at
    most ``exp(scale_clamp)`` times the anchor size. Both take ``[..., 4]`` tensors whose leading dims
    broadcast (e.g. deltas ``[B, N, 4]`` with anchors ``[N, 4]``) and compute in float32 (half inputs are
    upcast; float64 stays float64). Both are differentiable (no in-place ops on inputs).
    Ground-truth sizes below ``min_gt_size`` (1e-6 px) are raised to it so that a degenerate gt box
    yields a large but finite ``dw``/``dh`` instead of -inf.
    """

    min_gt_size = 1e-6

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = math.log(1000.0 / 16)) -> None:
        w = tuple(float(x) for x in weights)
        if len(w) != 4 or not all(math.isfinite(x) and x > 0 for x in w):
            raise ValueError(f"boxes.py: BoxCoder weights must be 4 finite numbers > 0 (wx, wy, ww, wh), "
                             f"got {tuple(weights)}")
        if math.isnan(float(scale_clamp)):
            raise ValueError("boxes.py: BoxCoder scale_clamp must be a number, got nan")
        self.weights = w
        self.scale_clamp = float(scale_clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.6g})"

    @staticmethod
    def _centers(b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        w = b[..., 2] - b[..., 0]
        h = b[..., 3] - b[..., 1]
        return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas ``[..., 4]`` that move ``anchors`` onto ``gt_boxes`` (both ``[..., 4]``, broadcast)."""
        _check_boxes("gt_boxes", gt_boxes)
        _check_boxes("anchors", anchors)
        dtype = _common_float(gt_boxes, anchors)
        gx, gy, gw, gh = self._centers(_as_float(gt_boxes, dtype))
        ax, ay, aw, ah = self._centers(_as_float(anchors, dtype))
        wx, wy, ww, wh = self.weights
        dx = wx * (gx - ax) / aw
        dy = wy * (gy - ay) / ah
        dw = ww * torch.log(gw.clamp(min=self.min_gt_size) / aw)
        dh = wh * torch.log(gh.clamp(min=self.min_gt_size) / ah)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``[..., 4]`` (x1, y1, x2, y2) from ``deltas`` relative to ``anchors`` (broadcast)."""
        if not isinstance(deltas, Tensor) or deltas.dim() == 0 or deltas.shape[-1] != 4:
            raise ValueError(f"boxes.py: deltas must be a tensor [..., 4] (dx, dy, dw, dh), got "
                             f"{list(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__}")
        _check_boxes("anchors", anchors)
        dtype = _common_float(deltas, anchors)
        d = _as_float(deltas, dtype)
        ax, ay, aw, ah = self._centers(_as_float(anchors, dtype))
        wx, wy, ww, wh = self.weights
        dw = (d[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (d[..., 3] / wh).clamp(max=self.scale_clamp)
        cx = (d[..., 0] / wx) * aw + ax
        cy = (d[..., 1] / wy) * ah + ay
        half_w = 0.5 * (torch.exp(dw) * aw)
        half_h = 0.5 * (torch.exp(dh) * ah)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


# ----------------------------------------------------------------------------------------------
# NMS
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression, torchvision's semantics.

    Boxes ``[N, 4]``, scores ``[N]``. In order of decreasing score (ties: lower index first), a box is
    dropped when its IoU with an already kept box is ``> iou_threshold`` (strictly, compared exactly as
    real numbers: a float32 IoU of ``0.3f = 0.30000001`` exceeds a threshold of 0.3). Returns the kept
    indices (int64) sorted by decreasing score; empty input gives an empty int64 tensor.
    """
    return _nms(boxes, scores, None, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """:func:`nms` run independently per group: boxes with different ``idxs[N]`` (integer class or
    image-and-class ids) never suppress each other. Kept indices sorted by decreasing score overall."""
    return _nms(boxes, scores, idxs, iou_threshold)


def _nms(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float) -> Tensor:
    _check_boxes("boxes", boxes, ndim=2)
    n = boxes.shape[0]
    if not isinstance(scores, Tensor) or scores.shape != (n,):
        raise ValueError(f"boxes.py: scores must be a tensor [N] matching boxes [{n}, 4], got "
                         f"{list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}")
    if idxs is not None:
        if not isinstance(idxs, Tensor) or idxs.shape != (n,):
            raise ValueError(f"boxes.py: idxs must be a tensor [N] matching boxes [{n}, 4], got "
                             f"{list(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__}")
        if idxs.is_floating_point() or idxs.is_complex():
            raise TypeError(f"boxes.py: idxs must be an integer tensor, got {idxs.dtype}")
    t = float(iou_threshold)
    if math.isnan(t):
        raise ValueError("boxes.py: iou_threshold must be a number, got nan")
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)

    order = torch.argsort(scores, descending=True, stable=True)  # rank -> input index
    group = None if idxs is None else idxs[order]  # group of each rank
    if t < 0:  # every IoU (>= 0) exceeds t: each group keeps only its best box
        if group is None:
            return order[:1]
        g_sorted, perm = torch.sort(group, stable=True)
        first = torch.ones(n, dtype=torch.bool, device=device)
        first[1:] = g_sorted[1:] != g_sorted[:-1]
        return order[torch.sort(perm[first]).values]

    b = _as_float(boxes)[order]  # rank order from here on
    src, dst = _suppression_edges(b, group, t, _f32_bound(t, b.dtype, upper=False))
    if src.numel() == 0:
        return order
    keep = _resolve_greedy(src, dst, n)
    return order[keep]


def _suppression_edges(b: Tensor, group: Optional[Tensor], t: float,
                       t_cmp: float) -> tuple[Tensor, Tensor]:
    """All pairs ``(i, j)``, ``i < j`` in rank order, same group, ``IoU > t``, as two int64 tensors
    (``t_cmp``: ``t`` as a value of the IoU dtype, see :func:`_f32_bound`)."""
    n = b.shape[0]
    device = b.device
    x1 = b[:, 0]
    # sort positions by (group, x1); stable so equal x1 keep rank order
    px = torch.argsort(x1, stable=True)
    x1_sorted = x1[px]
    x_rank = torch.empty(n, dtype=torch.int64, device=device)
    x_rank[px] = torch.arange(n, device=device)
    if group is None:
        pos = px
        seg = torch.zeros(n, dtype=torch.int64, device=device)
    else:
        g_sorted, perm = torch.sort(group[px], stable=True)
        pos = px[perm]
        seg = torch.zeros(n, dtype=torch.int64, device=device)
        seg[1:] = torch.cumsum(g_sorted[1:] != g_sorted[:-1], 0)
    key = seg * n + x_rank[pos]  # strictly increasing along pos: an exact integer sort key

    # IoU > t needs the x overlap of boxes p (left) and q (right) to exceed t * width(p), so partner q
    # satisfies x1[q] < x2[p] - t * w[p]. We test the weaker x1[q] < x2[p] - t' * w[p] with a slightly
    # smaller t' (never missing a pair despite float rounding), and x1[q] < x2[p] (exact) for tiny t.
    t_eff = t * (1 - 1e-3) if t >= 1e-3 else 0.0
    geo = b[pos]
    x1p, x2p = geo[:, 0].double(), geo[:, 2].double()
    limit = x2p - t_eff * (x2p - x1p)
    n_left = torch.searchsorted(x1_sorted.double(), limit, side="left")  # count of x1 < limit
    end = torch.searchsorted(key, seg * n + n_left, side="left")
    counts = (end - torch.arange(1, n + 1, device=device)).clamp_(min=0)

    area = box_area(geo)
    table = torch.cat((geo.t(), area[None]), dim=0)  # [5, n] in (group, x1) order (row gathers are fast)
    csum = torch.cumsum(counts, 0)
    total = int(csum[-1])
    srcs: list[Tensor] = []
    dsts: list[Tensor] = []
    n_edges = 0
    dense: Optional[Tensor] = None
    start, done = 0, 0
    while done < total:
        # positions [start, stop) whose pairs fit the chunk (at least one position)
        stop = int(torch.searchsorted(csum, done + _PAIR_CHUNK, side="right"))
        stop = max(stop, start + 1)
        c = counts[start:stop]
        n_pairs = int(csum[stop - 1]) - done
        if n_pairs > 0:
            ii = torch.repeat_interleave(torch.arange(start, stop, device=device), c, output_size=n_pairs)
            first = torch.repeat_interleave(csum[start:stop] - c - done, c, output_size=n_pairs)
            jj = ii + 1 + (torch.arange(n_pairs, device=device) - first)
            ta, tb = table.index_select(1, ii), table.index_select(1, jj)
            iou = _iou_parts(*ta.unbind(0), *tb.unbind(0))
            hit = (iou > t_cmp).nonzero().squeeze(1)
            ri = pos.index_select(0, ii.index_select(0, hit))
            rj = pos.index_select(0, jj.index_select(0, hit))
            s, d = torch.minimum(ri, rj), torch.maximum(ri, rj)
            if dense is not None:
                dense[s, d] = True
            elif s.numel():
                srcs.append(s)
                dsts.append(d)
                n_edges += s.numel()
                # once the edge list outgrows an N x N bool matrix, switch to the matrix
                if n_edges > n * n // _DENSE_EDGE_DIVISOR and n <= _DENSE_MAX_N:
                    dense = torch.zeros((n, n), dtype=torch.bool, device=device)
                    dense[torch.cat(srcs), torch.cat(dsts)] = True
                    srcs, dsts = [], []
        done += n_pairs
        start = stop
    if dense is not None:
        return _dense_to_peeled_edges(dense)
    if not srcs:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty
    return torch.cat(srcs), torch.cat(dsts)


def _dense_to_peeled_edges(m: Tensor) -> tuple[Tensor, Tensor]:
    """Turn a dense upper-triangular suppression matrix into a (much shorter) equivalent edge list.

    Runs the peeling rounds of :func:`_resolve_greedy` on the matrix (at most ``_MAX_PEEL_ROUNDS``),
    then returns the edges among still-undecided boxes plus one witness edge per dropped box (from a
    kept box that suppresses it); kept boxes get none. Greedy NMS on that list gives the same result.
    """
    n = m.shape[0]
    device = m.device
    idx = torch.arange(n, device=device)
    sub = m
    alive = idx  # undecided boxes (sub is m restricted to them)
    out_s: list[Tensor] = []
    out_d: list[Tensor] = []
    for _ in range(_MAX_PEEL_ROUNDS):
        has_in = sub.any(0)
        new_keep = ~has_in
        rows = sub[new_keep]
        killed = rows.any(0)
        if bool(killed.any()):
            # witness edge: the first newly kept box that suppresses each killed box
            first_killer = rows[:, killed].to(torch.uint8).argmax(0)
            out_s.append(alive[new_keep][first_killer])
            out_d.append(alive[killed])
        rest = ~(new_keep | killed)
        if not bool(rest.any()):
            sub = None
            break
        alive = alive[rest]
        sub = sub[rest][:, rest]
    if sub is not None:  # still undecided: hand over their edges as they are
        s, d = sub.nonzero(as_tuple=True)
        out_s.append(alive[s])
        out_d.append(alive[d])
    if not out_s:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty
    return torch.cat(out_s), torch.cat(out_d)


def _resolve_greedy(src: Tensor, dst: Tensor, n: int) -> Tensor:
    """Greedy keep mask (rank order) from suppression edges ``src -> dst`` (``src < dst``)."""
    device = src.device
    undecided = torch.ones(n, dtype=torch.bool, device=device)
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(_MAX_PEEL_ROUNDS):
        has_in = torch.zeros(n, dtype=torch.bool, device=device)
        has_in[dst] = True
        new_keep = undecided & ~has_in  # all suppressors already dropped: kept
        kept |= new_keep
        killed = torch.zeros(n, dtype=torch.bool, device=device)
        killed[dst[new_keep[src]]] = True
        undecided &= ~(new_keep | killed)
        live = undecided[src] & undecided[dst]
        src, dst = src[live], dst[live]
        if src.numel() == 0:
            return kept | undecided
    # Long suppression chains: finish sequentially in rank order (each box's suppressors come first).
    kept |= undecided
    d_sorted, perm = torch.sort(dst, stable=True)
    s_list = src[perm].tolist()
    nodes, cnt = torch.unique_consecutive(d_sorted, return_counts=True)
    keep_list = kept.tolist()
    at = 0
    for j, c in zip(nodes.tolist(), cnt.tolist()):
        preds = s_list[at:at + c]
        at += c
        keep_list[j] = not any(keep_list[i] for i in preds)
    return torch.tensor(keep_list, dtype=torch.bool, device=device)
