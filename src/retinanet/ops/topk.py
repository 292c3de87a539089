"""Top-k selection above a threshold in about one read of a large 1-D tensor.

``topk_above(x[M], k, thresh) -> LongTensor[<= k]``: ascending indices of the ``k`` largest values of
``x`` among those ``> thresh``, the same set as ``x.topk(k)`` filtered by ``> thresh`` (ties at the k-th
value aside). RetinaNet's post-processing uses it per pyramid level on the flattened ``[H*W*A*K]``
logits, where a full ``topk`` would sort millions of values to keep a thousand.

A threshold ``tau`` is estimated from a fixed sample so that a few thousand values exceed it; the values
above ``tau`` are collected blockwise without a logits-sized temporary on CPU. If fewer than ``k`` pass,
it falls back to ``thresh`` itself, so the result is always exact. NaN never counts as above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["topk_above"]

_SAMPLE = 1 << 15  # logits sampled per level to estimate a threshold below the k-th largest
_CHUNK = 1 << 20  # logits compared at once when collecting candidates (1 MB of bool scratch on CPU)
_sample_cache: dict = {}


def _sample_index(m: int, device: torch.device) -> Tensor:
    """A fixed pseudo-random set of ``_SAMPLE`` positions in ``[0, m)`` (cached per ``m``, device)."""
    key = (m, str(device))
    idx = _sample_cache.get(key)
    if idx is None:
        if len(_sample_cache) >= 32:
            _sample_cache.clear()
        idx = torch.randint(m, (_SAMPLE,), generator=torch.Generator().manual_seed(m)).to(device)
        _sample_cache[key] = idx
    return idx


_BLOCK = 128  # values per block whose maximum is taken first in _nonzero_gt (largest inputs)


def _block_size(m: int) -> int:
    """Block length for _nonzero_gt: 128 for the largest levels, smaller ones so that the few thousand
    values a top-k threshold lets through stay in a small fraction of the blocks."""
    return _BLOCK if m >= (1 << 23) else (64 if m >= (1 << 21) else 32)


def _nonzero_gt(x: Tensor, tau: float) -> Tensor:
    """Ascending indices of ``x[i] > tau`` (1-D ``x``), without a logits-sized temporary on CPU.

    On CPU: the maximum of each block of ``_BLOCK`` values is taken in one vectorized read, and only
    the blocks whose maximum exceeds ``tau`` are looked at element by element (a few thousand values
    when ``tau`` selects a few thousand). When many blocks qualify, a chunked compare through one
    small reused buffer is used instead."""
    m = x.numel()
    if m <= _CHUNK or x.device.type != "cpu":
        return (x > tau).nonzero().squeeze(1)
    if x.is_contiguous():
        bs = _block_size(m)
        nb = m // bs
        blocks = x[: nb * bs].view(nb, bs)
        # "not <=" so that a block whose maximum is NaN is looked at too (its other values may count)
        hot = (blocks.amax(1) <= tau).logical_not_().nonzero().squeeze(1)
        if hot.numel() * 4 <= nb:
            rc = (blocks.index_select(0, hot) > tau).nonzero()  # row-major: ascending indices
            idx = hot[rc[:, 0]].mul_(bs).add_(rc[:, 1])
            if nb * bs < m:
                idx = torch.cat([idx, (x[nb * bs :] > tau).nonzero().squeeze(1).add_(nb * bs)])
            return idx
    buf = torch.empty(_CHUNK, dtype=torch.bool, device=x.device)
    parts = []
    for s in range(0, m, _CHUNK):
        c = x[s : s + _CHUNK]
        nz = torch.gt(c, tau, out=buf[: c.numel()]).nonzero().squeeze(1)
        if nz.numel():
            parts.append(nz.add_(s))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=x.device)


def topk_above(x: Tensor, k: int, thresh: float = -math.inf) -> Tensor:
    """Ascending indices of the ``k`` largest values of the 1-D ``x`` among those ``> thresh``.

    The same set as ``x.topk(k)`` followed by ``> thresh`` (ties at the k-th value aside, where topk's
    own choice is arbitrary), in about one read of ``x``: a threshold ``tau`` is estimated from a fixed
    sample so that a few thousand values exceed it; if at least ``k`` do, the k largest are among them
    (exact), else it falls back to ``thresh`` itself. NaN never counts as above a threshold.
    """
    m = x.numel()
    if k <= 0 or m == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    tau = thresh
    if m > k and m > 4 * _SAMPLE:
        sample = x[_sample_index(m, x.device)]
        r = min(_SAMPLE, -(-4 * k * _SAMPLE // m) + 16)
        tau = max(thresh, float(sample.topk(r, sorted=False).values.min()))
    idx = _nonzero_gt(x, tau)
    if tau > thresh and idx.numel() < k:  # the estimate was too high: exact threshold
        idx = _nonzero_gt(x, thresh) if thresh > -math.inf else torch.arange(m, device=x.device)
    if idx.numel() > k:
        sel = x[idx].topk(k, sorted=False).indices
        idx = idx[sel].sort().values
    return idx
