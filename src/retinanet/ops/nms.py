"""Greedy non-maximum suppression, exact and vectorized, with torchvision's semantics.

- :func:`nms` ``boxes[N, 4], scores[N], iou_threshold -> LongTensor[K]``: kept indices by decreasing
  score (ties: lower index first).
- :func:`batched_nms` the same with ``idxs[N]``: boxes of different groups never suppress each other.

The suppression pairs are found without the ``N x N`` IoU matrix (a sweep over boxes sorted by
``(group, x1)``) and the greedy result is resolved by peeling rounds with a sequential finish for
long chains; ``docs/nms.md`` describes the algorithm.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from retinanet.ops.boxes import check_boxes, exact_threshold, iou_from_parts, to_float

__all__ = ["nms", "batched_nms", "greedy_nms"]

_PAIR_CHUNK = 1 << 18  # candidate pairs whose IoU is computed at once (~25 MB of temporaries)
_MAX_PEEL_ROUNDS = 32  # peeling rounds before finishing with a sequential sweep
_DENSE_MAX_N = 1 << 14  # the edge list switches to an N x N bool matrix only up to this N ...
_DENSE_EDGE_DIVISOR = 16  # ... once it holds more than N * N / 16 edges (16 bytes each > N * N bytes)


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
    check_boxes("boxes", boxes, ndim=2)
    n = boxes.shape[0]
    if not isinstance(scores, Tensor) or scores.shape != (n,):
        raise ValueError(
            f"nms.py: scores must be a tensor [N] matching boxes [{n}, 4], got "
            f"{list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__}"
        )
    if idxs is not None:
        if not isinstance(idxs, Tensor) or idxs.shape != (n,):
            raise ValueError(
                f"nms.py: idxs must be a tensor [N] matching boxes [{n}, 4], got "
                f"{list(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__}"
            )
        if idxs.is_floating_point() or idxs.is_complex():
            raise TypeError(f"nms.py: idxs must be an integer tensor, got {idxs.dtype}")
    t = float(iou_threshold)
    if math.isnan(t):
        raise ValueError("nms.py: iou_threshold must be a number, got nan")
    b = to_float(boxes)
    return greedy_nms(
        b,
        scores,
        idxs,
        t,
        exact_threshold(t, b.dtype, strict=True),
        _PAIR_CHUNK,
        _MAX_PEEL_ROUNDS,
        _DENSE_MAX_N,
        _DENSE_EDGE_DIVISOR,
    )


def greedy_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Optional[Tensor],
    t: float,
    t_cmp: float,
    pair_chunk: int = _PAIR_CHUNK,
    max_rounds: int = _MAX_PEEL_ROUNDS,
    dense_max_n: int = _DENSE_MAX_N,
    dense_divisor: int = _DENSE_EDGE_DIVISOR,
) -> Tensor:
    """The unchecked, scriptable core of :func:`batched_nms`: float32/64 ``boxes [N, 4]``, ``scores [N]``,
    optional groups ``idxs [N]``, threshold ``t`` and ``t_cmp``, its exact stand-in in the boxes' dtype
    (:func:`~retinanet.ops.boxes.exact_threshold`); the last four set the work sizes (module constants)."""
    n = boxes.shape[0]
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

    b = boxes[order]  # rank order from here on
    src, dst = _suppression_edges(b, group, t, t_cmp, pair_chunk, dense_max_n, dense_divisor, max_rounds)
    if src.numel() == 0:
        return order
    keep = _resolve_greedy(src, dst, n, max_rounds)
    return order[keep]


def _suppression_edges(
    b: Tensor,
    group: Optional[Tensor],
    t: float,
    t_cmp: float,
    pair_chunk: int,
    dense_max_n: int,
    dense_divisor: int,
    max_rounds: int,
) -> Tuple[Tensor, Tensor]:
    """All pairs ``(i, j)``, ``i < j`` in rank order, same group, ``IoU > t``, as two int64 tensors
    (``t_cmp``: ``t`` as a value of the IoU dtype, see :func:`~retinanet.ops.boxes.exact_threshold`)."""
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

    area = (geo[:, 2] - geo[:, 0]).clamp(min=0) * (geo[:, 3] - geo[:, 1]).clamp(min=0)
    table = torch.cat((geo.t(), area[None]), dim=0)  # [5, n] in (group, x1) order (row gathers are fast)
    csum = torch.cumsum(counts, 0)
    total = int(csum[-1])
    srcs: List[Tensor] = []
    dsts: List[Tensor] = []
    n_edges = 0
    dense: Optional[Tensor] = None
    start, done = 0, 0
    while done < total:
        # positions [start, stop) whose pairs fit the chunk (at least one position)
        stop = int(torch.searchsorted(csum, done + pair_chunk, side="right"))
        stop = max(stop, start + 1)
        c = counts[start:stop]
        n_pairs = int(csum[stop - 1]) - done
        if n_pairs > 0:
            ii = torch.repeat_interleave(torch.arange(start, stop, device=device), c, output_size=n_pairs)
            first = torch.repeat_interleave(csum[start:stop] - c - done, c, output_size=n_pairs)
            jj = ii + 1 + (torch.arange(n_pairs, device=device) - first)
            ta, tb = table.index_select(1, ii), table.index_select(1, jj)
            iou = iou_from_parts(ta[0], ta[1], ta[2], ta[3], ta[4], tb[0], tb[1], tb[2], tb[3], tb[4])
            hit = (iou > t_cmp).nonzero().squeeze(1)
            ri = pos.index_select(0, ii.index_select(0, hit))
            rj = pos.index_select(0, jj.index_select(0, hit))
            s, d = torch.minimum(ri, rj), torch.maximum(ri, rj)
            if dense is not None:
                dense[s, d] = True
            elif s.numel() > 0:
                srcs.append(s)
                dsts.append(d)
                n_edges += s.numel()
                # once the edge list outgrows an N x N bool matrix, switch to the matrix
                if n_edges > n * n // dense_divisor and n <= dense_max_n:
                    dense = torch.zeros((n, n), dtype=torch.bool, device=device)
                    dense[torch.cat(srcs), torch.cat(dsts)] = True
                    srcs, dsts = [], []
        done += n_pairs
        start = stop
    if dense is not None:
        return _dense_to_peeled_edges(dense, max_rounds)
    if len(srcs) == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty
    return torch.cat(srcs), torch.cat(dsts)


def _dense_to_peeled_edges(m: Tensor, max_rounds: int) -> Tuple[Tensor, Tensor]:
    """Turn a dense upper-triangular suppression matrix into a (much shorter) equivalent edge list.

    Runs the peeling rounds of :func:`_resolve_greedy` on the matrix (at most ``_MAX_PEEL_ROUNDS``),
    then returns the edges among still-undecided boxes plus one witness edge per dropped box (from a
    kept box that suppresses it); kept boxes get none. Greedy NMS on that list gives the same result.
    """
    n = m.shape[0]
    device = m.device
    sub = m
    alive = torch.arange(n, device=device)  # undecided boxes (sub is m restricted to them)
    out_s: List[Tensor] = []
    out_d: List[Tensor] = []
    decided = False
    for _ in range(max_rounds):
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
            decided = True
            break
        alive = alive[rest]
        sub = sub[rest][:, rest]
    if not decided:  # still undecided: hand over their edges as they are
        sd = sub.nonzero()
        out_s.append(alive[sd[:, 0]])
        out_d.append(alive[sd[:, 1]])
    if len(out_s) == 0:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty
    return torch.cat(out_s), torch.cat(out_d)


def _resolve_greedy(src: Tensor, dst: Tensor, n: int, max_rounds: int) -> Tensor:
    """Greedy keep mask (rank order) from suppression edges ``src -> dst`` (``src < dst``)."""
    device = src.device
    undecided = torch.ones(n, dtype=torch.bool, device=device)
    kept = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(max_rounds):
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
    s_list: List[int] = src[perm].tolist()
    nodes, cnt = torch.unique_consecutive(d_sorted, return_counts=True)
    keep_list: List[bool] = kept.tolist()
    node_list: List[int] = nodes.tolist()
    cnt_list: List[int] = cnt.tolist()
    at = 0
    for j, c in zip(node_list, cnt_list):
        suppressed = False
        for i in s_list[at : at + c]:
            suppressed = suppressed or keep_list[i]
        at += c
        keep_list[j] = not suppressed
    return torch.tensor(keep_list, dtype=torch.bool, device=device)
