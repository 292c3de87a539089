"""Fused focal-loss kernel (CPU-tuned, any device): the implementation of
:func:`retinanet.losses.sigmoid_focal_loss` for binary targets. Not public API: call the loss.

``fused_focal_loss(logits[..., K], targets, alpha, gamma, summed) -> loss`` with ``targets`` either
dense 0/1 of the logits' shape or int64 class codes of shape ``logits.shape[:-1]`` (``c >= 0`` the
positive column, ``-1`` background, ``-2`` ignored), already checked by the caller. The loss is a 0-dim
sum (``summed``) or ``[..., K]`` per element, in float32 (float64 for float64 logits); the gradient
comes back in the logits' dtype.

How it works: rows are processed in chunks of about 1 MB, so all temporaries are a few small reused
buffers. Each element is first treated as a negative (one fused set of passes computes its loss and
its gradient), then the few positive elements and the ignored rows are patched by index. The
gradient is computed during the forward into one buffer of the logits' size, which the backward
hands back (scaled in place by the incoming gradient when that is not 1). On the CPU that buffer is
kept between calls and reused once no tensor references it any more (:func:`release_buffers` drops
it), so a training step makes no fresh logits-sized allocation. A second backward through the same
graph (``retain_graph=True``, gradcheck) recomputes the gradient from the saved logits.
"""

from __future__ import annotations

import math
import threading
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from retinanet.utils.tuning import storage_use_count

__all__ = ["fused_focal_loss", "release_buffers", "loss_dtype"]

_CPU_CHUNK_ELEMS = 1 << 18  # elements per chunk on the CPU: ~1 MB per float32 buffer, cache-sized
# Largest sign-adjusted logit for which the single-exp CPU path is used (exp(30) ~ 1e13, far from
# overflow); above it the chunk falls back to sigmoid + softplus, which are exact for any logit.
_EXP_PATH_MAX = 30.0
_ACCEL_CHUNK_ELEMS = 1 << 24  # on accelerators launch overhead dominates: far bigger chunks


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the loss is computed in for logits of ``dtype``: float64 stays, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------
# element math
def _focal_terms(u: Tensor, scale: Union[float, Tensor], gamma: float) -> tuple[Tensor, Tensor]:
    """Loss and d loss / d u for sign-adjusted logits ``u = -s * x`` (small tensors, plain ops).

    With ``q = sigmoid(u) = 1 - p_t`` and ``ce = softplus(u) = -log(p_t)``:
    ``L = scale * q**gamma * ce`` and ``dL/du = scale * q**gamma * (gamma * (1 - q) * ce + q)``.
    """
    q = torch.sigmoid(u)
    ce = F.softplus(u)
    w = q.pow(gamma) * scale if gamma != 0 else torch.full_like(q, 1.0) * scale
    loss = w * ce
    grad_u = w * (gamma * (1.0 - q) * ce + q) if gamma != 0 else w * q
    return loss, grad_u


class _Buffers:
    """Chunk-sized scratch buffers, allocated on first use and reused for every chunk of a call."""

    def __init__(self, elems: int, dtype: torch.dtype, device: torch.device) -> None:
        self._store: dict[int, Tensor] = {}
        self._elems, self._dtype, self._device = elems, dtype, device
        self.zero = torch.zeros((), dtype=dtype, device=device)
        self.one = torch.ones((), dtype=dtype, device=device)

    def get(self, i: int, rows: int, k: int) -> Tensor:
        buf = self._store.get(i)
        if buf is None:
            buf = torch.empty(self._elems, dtype=self._dtype, device=self._device)
            self._store[i] = buf
        return buf[: rows * k].view(rows, k)


def _core_chunk(
    u: Tensor,
    scale: Union[float, Tensor],
    gamma: float,
    bufs: _Buffers,
    loss_out: Optional[Tensor],
    grad_out: Optional[Tensor],
) -> tuple[Tensor, float]:
    """Per-element focal loss and d loss / d u on one chunk of sign-adjusted logits ``u`` [m, K].

    ``scale`` is alpha_t (a scalar or a tensor of u's shape). When ``loss_out`` is given the exact loss
    is written there and the factor returned is 1; otherwise the returned tensor (a scratch buffer)
    times the returned factor is the loss (used by the summing path to save one pass).
    ``grad_out`` (optional) receives d loss / d u. Buffers 0..2 of ``bufs`` are used.
    """
    m, k = u.shape
    if u.device.type == "cpu" and u.dtype == torch.float32 and u.numel() > 0 and float(u.max()) <= _EXP_PATH_MAX:
        # one exp for both: e = exp(u), q = e / (1 + e), ce = log1p(e); NaN or large u take the path below
        e = torch.exp(u, out=bufs.get(1, m, k))
        q = torch.div(e, torch.add(e, 1.0, out=bufs.get(0, m, k)), out=bufs.get(0, m, k))
        ce = e.log1p_()
    else:
        q = torch.sigmoid(u, out=bufs.get(0, m, k))  # 1 - p_t
        ce = F.softplus(u)  # -log p_t
    scalar = not isinstance(scale, Tensor)

    if gamma == 0.0:
        if loss_out is not None:
            lv, factor = torch.mul(ce, scale, out=loss_out), 1.0
        elif scalar:
            lv, factor = ce, float(scale)
        else:
            lv, factor = ce.mul_(scale), 1.0
        if grad_out is not None:
            if scalar and scale == 1.0:
                grad_out.copy_(q)
            else:
                torch.mul(q, scale, out=grad_out)
        return lv, factor

    # w = alpha_t * q ** gamma
    w = bufs.get(2, m, k)
    if gamma == 2.0:
        if scalar:
            torch.addcmul(bufs.zero, q, q, value=float(scale), out=w)
        else:
            torch.mul(q, q, out=w).mul_(scale)
    elif gamma == 1.0:
        torch.mul(q, scale, out=w)
    else:
        torch.pow(q, gamma, out=w)
        if not (scalar and scale == 1.0):
            w.mul_(scale)

    # dL/du = w * (gamma * (1 - q) * ce + q) = q * (w - gamma * L) + gamma * L
    if loss_out is None:
        lg = torch.addcmul(bufs.zero, w, ce, value=gamma, out=ce)  # gamma * L
        if grad_out is not None:
            torch.addcmul(lg, q, torch.sub(w, lg, out=w), out=grad_out)
        return lg, 1.0 / gamma
    lv = torch.mul(w, ce, out=loss_out)
    if grad_out is not None:
        torch.add(w, lv, alpha=-gamma, out=w)
        torch.mul(q, w, out=grad_out).add_(lv, alpha=gamma)
    return lv, 1.0


# --------------------------------------------------------------------------------------------------
# gradient buffer reused across calls (CPU)
_GRAD_CACHE = threading.local()


def _grad_buffer(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor for the gradient; on the CPU, last call's buffer when nothing else
    references its storage any more (autograd, ``.grad``, hooks and views all would), so a gradient
    still in use is never overwritten."""
    numel = math.prod(shape)
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    cache: dict = getattr(_GRAD_CACHE, "bufs", None) or {}
    _GRAD_CACHE.bufs = cache
    entry = cache.get(dtype)
    if entry is not None:
        buf, base = entry
        if buf.numel() >= numel and storage_use_count(buf) == base:
            return buf[:numel].view(shape)
        del cache[dtype]
        del buf, entry
    buf = torch.empty(numel, dtype=dtype, device=device)
    base = storage_use_count(buf)
    if base is not None:  # without the counter, never reuse
        cache[dtype] = (buf, base)
    return buf.view(shape)


def release_buffers() -> None:
    """Drop the gradient buffer the focal loss keeps between calls in this thread."""
    _GRAD_CACHE.bufs = {}


# --------------------------------------------------------------------------------------------------
# chunked kernel
def _chunk_rows(x2: Tensor) -> int:
    elems = _CPU_CHUNK_ELEMS if x2.device.type == "cpu" else _ACCEL_CHUNK_ELEMS
    k = max(x2.shape[1], 1)
    return max(1, min(x2.shape[0], elems // k))


def _bounds(sorted_rows: Tensor, starts: list[int]) -> list[int]:
    """Index into ``sorted_rows`` of the first row >= each chunk start (plus the end)."""
    s = torch.tensor(starts, dtype=sorted_rows.dtype, device=sorted_rows.device)
    return torch.searchsorted(sorted_rows, s).tolist()


def _focal_kernel(
    logits: Tensor,
    targets: Tensor,
    alpha: float,
    gamma: float,
    summed: bool,
    want_loss: bool,
    want_grad: bool,
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Focal loss (sum, or per element) and/or its gradient for binary dense targets or class codes.

    ``logits`` [..., K]; ``targets`` dense 0/1 of the same shape or int codes of shape [...].
    Returns (loss, grad): loss is a 0-dim tensor (``summed``) or [..., K] in the compute dtype;
    grad has the logits' shape and dtype. Either is None when not wanted.
    """
    cdtype = loss_dtype(logits.dtype)
    device = logits.device
    k = logits.shape[-1]
    x2 = logits.reshape(-1, k)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    r = x2.shape[0]
    dense = targets.shape == logits.shape
    c_pos, c_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)

    grad = _grad_buffer(logits.shape, logits.dtype, device) if want_grad else None
    g2 = grad.view(-1, k) if grad is not None else None
    loss_full = None
    if want_loss and not summed:
        loss_full = torch.empty(logits.shape, dtype=cdtype, device=device)
    l2 = loss_full.view(-1, k) if loss_full is not None else None
    acc = torch.zeros((), dtype=torch.float64, device=device)

    rows = _chunk_rows(x2)
    starts = list(range(0, r, rows))
    bufs = _Buffers(rows * k, cdtype, device)
    cast_x = x2.dtype != cdtype
    cast_g = want_grad and logits.dtype != cdtype

    if dense:
        y2 = targets.reshape(-1, k)
        cast_y = y2.dtype != cdtype
        balanced = alpha >= 0 and c_pos != c_neg
        for r0 in starts:
            r1 = min(r0 + rows, r)
            m = r1 - r0
            xc = bufs.get(3, m, k).copy_(x2[r0:r1]) if cast_x else x2[r0:r1]
            yc = bufs.get(4, m, k).copy_(y2[r0:r1]) if cast_y else y2[r0:r1]
            sign = torch.add(bufs.one, yc, alpha=-2.0, out=bufs.get(5, m, k))  # +1 neg, -1 pos
            u = torch.mul(xc, sign, out=bufs.get(6, m, k))
            scale: Union[float, Tensor] = c_neg
            if balanced:
                scale = torch.add(bufs.one * c_neg, yc, alpha=c_pos - c_neg, out=bufs.get(7, m, k))
            lo = l2[r0:r1] if l2 is not None else (None if summed else bufs.get(9, m, k))
            go = None
            if want_grad:
                assert g2 is not None
                go = bufs.get(8, m, k) if cast_g else g2[r0:r1]
            lv, factor = _core_chunk(u, scale, gamma, bufs, lo, go)
            if go is not None:
                go.mul_(sign)  # d/dx = d/du * du/dx, u = sign * x
                if cast_g:
                    assert g2 is not None
                    g2[r0:r1].copy_(go)
            if want_loss and summed:
                acc += lv.sum() * factor
        loss = acc.to(cdtype) if summed else loss_full
        return (loss if want_loss else None), grad

    # class codes: every element a negative, then patch positives and ignored rows
    t1 = targets.reshape(-1)
    pos_rows = torch.nonzero(t1 >= 0).squeeze(1)
    pos_cls = t1[pos_rows]
    ign_rows = torch.nonzero(t1 == -2).squeeze(1)
    x_pos = x2[pos_rows, pos_cls].to(cdtype)
    l_pos, gu_pos = _focal_terms(-x_pos, c_pos, gamma)
    g_pos = -gu_pos
    pb = _bounds(pos_rows, starts + [r])
    ib = _bounds(ign_rows, starts + [r])
    for ci, r0 in enumerate(starts):
        r1 = min(r0 + rows, r)
        m = r1 - r0
        xc = bufs.get(3, m, k).copy_(x2[r0:r1]) if cast_x else x2[r0:r1]
        # (per-element mode without a wanted loss still takes the same arithmetic, so a recomputed
        # gradient is bitwise the one computed in the forward)
        lo = l2[r0:r1] if l2 is not None else (None if summed else bufs.get(9, m, k))
        go = None
        if want_grad:
            assert g2 is not None
            go = bufs.get(4, m, k) if cast_g else g2[r0:r1]
        lv, factor = _core_chunk(xc, c_neg, gamma, bufs, lo, go)
        pa, pz = pb[ci], pb[ci + 1]
        ia, iz = ib[ci], ib[ci + 1]
        pidx = (pos_rows[pa:pz] - r0, pos_cls[pa:pz])
        iidx = ign_rows[ia:iz] - r0
        if want_loss:
            if lo is not None:
                lo.index_put_(pidx, l_pos[pa:pz])
            else:
                lv.index_put_(pidx, bufs.zero)  # positives are added once, exactly, below
            if iz > ia:
                lv.index_fill_(0, iidx, 0.0)
            if summed:
                acc += lv.sum() * factor
        if go is not None:
            go.index_put_(pidx, g_pos[pa:pz].to(go.dtype))
            if iz > ia:
                go.index_fill_(0, iidx, 0.0)
            if cast_g:
                assert g2 is not None
                g2[r0:r1].copy_(go)
    if not want_loss:
        return None, grad
    if summed:
        return (acc + l_pos.sum()).to(cdtype), grad
    return loss_full, grad


class _SigmoidFocalFn(torch.autograd.Function):
    """Focal loss with a hand-written backward (binary dense targets or class codes)."""

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        targets: Tensor,
        alpha: float,
        gamma: float,
        summed: bool,
        stash: bool,
        need_grad: bool,
    ) -> Tensor:
        loss, grad = _focal_kernel(logits, targets, alpha, gamma, summed, True, need_grad and stash)
        ctx.params = (alpha, gamma, summed)
        ctx.stash = grad
        if need_grad:
            ctx.save_for_backward(logits, targets)
        assert loss is not None
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad = ctx.stash
        ctx.stash = None  # handed over to autograd; a second backward recomputes
        if grad is None:
            logits, targets = ctx.saved_tensors
            alpha, gamma, summed = ctx.params
            _, grad = _focal_kernel(logits, targets, alpha, gamma, summed, False, True)
        assert grad is not None
        if not (grad_output.dim() == 0 and grad_output.device.type == "cpu" and float(grad_output) == 1.0):
            grad.mul_(grad_output)
        return grad, None, None, None, None, None, None


def fused_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float, gamma: float, summed: bool, *, stash_grad: bool = True
) -> Tensor:
    """Focal loss of checked, non-empty ``logits`` and binary ``targets`` (see the module docstring).
    ``stash_grad=False`` recomputes the gradient in the backward instead of keeping it from the forward."""
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    return _SigmoidFocalFn.apply(logits, targets, alpha, gamma, summed, stash_grad, need_grad)
