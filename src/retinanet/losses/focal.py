"""Losses for RetinaNet: the focal loss (Lin et al. 2017), sigmoid cross-entropy, smooth L1, L1, GIoU.

Focal loss, binary form, for a logit ``x`` with sigmoid probability ``p`` and target ``y`` in {0, 1}::

    p_t     = p if y == 1 else 1 - p
    alpha_t = alpha if y == 1 else 1 - alpha          (alpha < 0: alpha_t = 1, no balancing)
    FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)

``gamma = 0`` is (alpha-balanced) sigmoid cross-entropy. Everything is computed from the logits in
log-sigmoid / softplus form (``-log(p_t) = softplus(-s * x)`` with ``s = +1`` for a positive and ``-1``
for a negative), so logits of +-1e4 give finite losses and gradients.

Shapes taken by :func:`sigmoid_focal_loss` (``K`` = number of classes):

* ``logits`` float ``[..., K]`` (e.g. ``[N, K]`` or ``[B, N, K]``); fp16 / bf16 are upcast to float32,
  float64 stays float64. The loss is float32 (float64 for float64 logits); the gradient comes back in
  the logits' dtype.
* ``targets`` either
    - dense, of the logits' shape: 0/1 values (float, bool or int). Non-binary values in [0, 1] (soft
      targets) are accepted and use fvcore's soft-target formula through a plain autograd path;
    - integer class codes of shape ``logits.shape[:-1]``: ``c >= 0`` = column ``c`` is the positive and
      all other columns are negatives, ``-1`` = background (all K columns negative), ``-2`` = ignored
      (no loss, zero gradient). The K-wide one-hot is never built.
* ``reduction``: ``"none"`` -> ``[..., K]`` (ignored rows are 0), ``"sum"`` -> scalar, ``"mean"`` ->
  sum / number of counted elements (all elements for dense targets, non-ignored rows * K for class
  codes; 0 when there is none).

The hot path (class codes, reduction ``"sum"``, e.g. ``[2, 120000, 80]``) is a custom
``torch.autograd.Function``: rows are processed in chunks of ~1 MB, so all temporaries are a few small
reused buffers; each element is first treated as a negative (one fused set of passes computes its loss and
its gradient), then the few positive elements and the ignored rows are patched by index. The gradient is
computed during the forward into one buffer of the logits' size, which the backward hands back (scaled
in place by the incoming gradient when that is not 1). On the CPU that buffer is kept between calls and
reused when no tensor references it any more (see :func:`release_buffers`), so a training step makes no
fresh logits-sized allocation. A second backward through the same graph (``retain_graph=True``,
gradcheck) recomputes the gradient from the saved logits.

Box losses take ``[..., 4]`` tensors: :func:`smooth_l1_loss` / :func:`l1_loss` on any matching shapes,
:func:`giou_loss` on elementwise pairs of ``(x1, y1, x2, y2)`` boxes.
"""

from __future__ import annotations

import math
import threading
from typing import Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_cross_entropy_loss",
    "sigmoid_ce_loss",
    "smooth_l1_loss",
    "l1_loss",
    "giou_loss",
    "release_buffers",
]

Reduction = Literal["none", "sum", "mean"]
_REDUCTIONS = ("none", "sum", "mean")

# Elements per chunk on the CPU: ~1 MB per float32 buffer, so the handful of buffers stays in cache
# and no fresh large allocation (a page-fault storm on this kind of VM) happens per call.
_CPU_CHUNK_ELEMS = 1 << 18
# Largest sign-adjusted logit for which the single-exp CPU path is used (exp(30) ~ 1e13, far from
# overflow); above it the chunk falls back to sigmoid + softplus, which are exact for any logit.
_EXP_PATH_MAX = 30.0
# On accelerators launch overhead dominates; use far bigger chunks.
_ACCEL_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------------------------------


def _check_reduction(fn: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_float(fn: str, name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # mean of nothing is 0 (not NaN) so empty batches do not poison a running loss.
    return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0


# --------------------------------------------------------------------------------------------------
# focal loss: element math
# --------------------------------------------------------------------------------------------------


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
    if (u.device.type == "cpu" and u.dtype == torch.float32 and u.numel() > 0
            and float(u.max()) <= _EXP_PATH_MAX):
        # one exp for both: e = exp(u), q = e / (1 + e), ce = log1p(e) (fewer transcendental passes
        # than sigmoid + softplus; same values up to float rounding). NaN or large u take the path below.
        e = torch.exp(u, out=bufs.get(1, m, k))
        q = torch.div(e, torch.add(e, 1.0, out=bufs.get(0, m, k)), out=bufs.get(0, m, k))
        ce = e.log1p_()
    else:
        q = torch.sigmoid(u, out=bufs.get(0, m, k))  # 1 - p_t
        ce = F.softplus(u) if not _HAS_SOFTPLUS_OUT else _softplus_out(u, bufs.get(1, m, k))  # -log p_t
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
            torch.addcmul(bufs.zero, q, q, value=scale, out=w)
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


def _softplus_out(x: Tensor, out: Tensor) -> Tensor:
    return torch._C._nn.softplus(x, 1.0, 20.0, out=out)


def _probe_softplus_out() -> bool:
    try:
        x = torch.zeros(2)
        return _softplus_out(x, torch.empty(2)).shape == x.shape
    except Exception:  # pragma: no cover - only on torch builds without the out= overload
        return False


_HAS_SOFTPLUS_OUT = _probe_softplus_out()


# --------------------------------------------------------------------------------------------------
# focal loss: gradient buffer reused across calls (CPU)
# --------------------------------------------------------------------------------------------------

_GRAD_CACHE = threading.local()


def _storage_refs(t: Tensor) -> int:
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


def _grad_buffer(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor for the gradient; on the CPU, reuses last call's when nobody holds it.

    A fresh logits-sized allocation costs a page fault per 4 KB page on a VM that hands freed memory
    back (~5x the cost of writing it). The buffer from the previous call is reused only when no tensor
    other than this cache references its storage (autograd, ``.grad``, hooks, views all hold a
    reference), so a gradient still in use is never overwritten.
    """
    numel = math.prod(shape)
    if device.type != "cpu" or not _HAS_USE_COUNT:
        return torch.empty(shape, dtype=dtype, device=device)
    cache: dict = getattr(_GRAD_CACHE, "bufs", None) or {}
    _GRAD_CACHE.bufs = cache
    entry = cache.get(dtype)
    if entry is not None:
        buf, base = entry
        if buf.numel() >= numel and _storage_refs(buf) == base:
            return buf[:numel].view(shape)
        del cache[dtype]
        del buf, entry
    buf = torch.empty(numel, dtype=dtype, device=device)
    cache[dtype] = (buf, _storage_refs(buf))
    return buf.view(shape)


def _probe_use_count() -> bool:
    try:
        t = torch.empty(4)
        base = _storage_refs(t)
        v = t[1:]
        ok = _storage_refs(t) == base + 1
        del v
        return ok and _storage_refs(t) == base
    except Exception:  # pragma: no cover - private API missing on this torch build
        return False


_HAS_USE_COUNT = _probe_use_count()


def release_buffers() -> None:
    """Drop the gradient buffer the focal loss keeps between calls in this thread."""
    _GRAD_CACHE.bufs = {}


# --------------------------------------------------------------------------------------------------
# focal loss: chunked kernel
# --------------------------------------------------------------------------------------------------


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
    cdtype = _compute_dtype(logits.dtype)
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
                go = bufs.get(8, m, k) if cast_g else g2[r0:r1]
            lv, factor = _core_chunk(u, scale, gamma, bufs, lo, go)
            if go is not None:
                go.mul_(sign)  # d/dx = d/du * du/dx, u = sign * x
                if cast_g:
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
                g2[r0:r1].copy_(go)
    if not want_loss:
        return None, grad
    if summed:
        return (acc + l_pos.sum()).to(cdtype), grad
    return loss_full, grad


class _SigmoidFocalFn(torch.autograd.Function):
    """Focal loss with a hand-written backward (binary dense targets or class codes)."""

    @staticmethod
    def forward(  # type: ignore[override]
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
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        grad = ctx.stash
        ctx.stash = None  # handed over to autograd; a second backward recomputes
        if grad is None:
            logits, targets = ctx.saved_tensors
            alpha, gamma, summed = ctx.params
            _, grad = _focal_kernel(logits, targets, alpha, gamma, summed, False, True)
        assert grad is not None
        if grad_output.dim() == 0 and grad_output.device.type == "cpu" and float(grad_output) == 1.0:
            pass
        else:
            grad.mul_(grad_output)
        return grad, None, None, None, None, None, None


def _soft_focal(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Per-element focal loss for soft targets in [0, 1] (plain autograd, fvcore's formula)."""
    cdtype = _compute_dtype(logits.dtype)
    x = logits.to(cdtype)
    y = targets.to(cdtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    one_minus_pt = p + y - 2.0 * p * y  # 1 - (p*y + (1-p)*(1-y))
    loss = ce if gamma == 0 else ce * one_minus_pt.clamp_min(1e-30).pow(gamma)
    if alpha >= 0:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return loss


def _dense_kind(fn: str, targets: Tensor, chunk: int) -> str:
    """'binary' if all values are 0/1, 'soft' if all in [0, 1]; raise otherwise (chunked scan)."""
    if targets.dtype == torch.bool:
        return "binary"
    flat = targets.reshape(-1)
    binary = True
    for s in range(0, flat.numel(), chunk):
        c = flat[s : s + chunk]
        lo, hi = torch.aminmax(c)
        if not (float(lo) >= 0.0 and float(hi) <= 1.0):
            bad = float(lo) if not float(lo) >= 0.0 else float(hi)
            raise ValueError(f"{fn}: dense targets must lie in [0, 1], found value {bad}")
        if binary and c.is_floating_point():
            binary = not bool(torch.any((c != 0) & (c != 1)))
    return "binary" if binary else "soft"


def _sigmoid_focal(
    logits: Tensor,
    targets: Tensor,
    alpha: float,
    gamma: float,
    reduction: str,
    fn: str,
    stash: bool = True,
) -> Tensor:
    _check_float(fn, "logits", logits)
    _check_reduction(fn, reduction)
    if not isinstance(targets, Tensor):
        raise TypeError(f"{fn}: targets must be a torch.Tensor, got {type(targets).__name__}")
    if logits.dim() < 1:
        raise ValueError(f"{fn}: logits must have shape [..., K], got a 0-dim tensor")
    alpha, gamma = float(alpha), float(gamma)
    if not (alpha <= 1.0) or math.isnan(alpha):
        raise ValueError(f"{fn}: alpha must be <= 1 (negative disables balancing), got {alpha}")
    if not (gamma >= 0.0) or math.isinf(gamma):
        raise ValueError(f"{fn}: gamma must be a finite number >= 0, got {gamma}")
    if targets.device != logits.device:
        raise ValueError(f"{fn}: targets are on {targets.device} but logits on {logits.device}")

    k = logits.shape[-1]
    cdtype = _compute_dtype(logits.dtype)
    if targets.shape == logits.shape:
        if targets.is_complex():
            raise TypeError(f"{fn}: targets must be real, got dtype {targets.dtype}")
        kind = _dense_kind(fn, targets, _CPU_CHUNK_ELEMS) if targets.numel() else "binary"
    elif targets.shape == logits.shape[:-1]:
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(
                f"{fn}: targets of shape {tuple(targets.shape)} (logits.shape[:-1]) are class codes and "
                f"must be an integer tensor, got dtype {targets.dtype}"
            )
        kind = "codes"
        if targets.numel():
            lo, hi = torch.aminmax(targets)
            if int(lo) < -2 or int(hi) >= k:
                bad = int(lo) if int(lo) < -2 else int(hi)
                raise ValueError(
                    f"{fn}: class targets must be in [-2, {k - 1}] (-1 background, -2 ignored) for "
                    f"K = {k} logit columns, found {bad}"
                )
    else:
        raise ValueError(
            f"{fn}: targets shape {tuple(targets.shape)} matches neither logits {tuple(logits.shape)} "
            f"(dense 0/1 targets) nor logits.shape[:-1] {tuple(logits.shape[:-1])} (class codes)"
        )

    if logits.numel() == 0:
        zeros = logits.to(cdtype) * 0.0
        return zeros if reduction == "none" else zeros.sum()
    if kind == "soft":
        return _reduce(_soft_focal(logits, targets, alpha, gamma), reduction)
    if kind == "codes" and targets.dtype != torch.int64:
        targets = targets.long()
    summed = reduction != "none"
    need_grad = logits.requires_grad and torch.is_grad_enabled()
    loss = _SigmoidFocalFn.apply(logits, targets, alpha, gamma, summed, stash, need_grad)
    if reduction == "mean":
        count = logits.numel() if kind != "codes" else int((targets != -2).sum()) * k
        loss = loss / max(count, 1)
    return loss


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "none",
) -> Tensor:
    """Focal loss ``-alpha_t (1 - p_t)**gamma log(p_t)`` from logits [..., K].

    ``targets``: dense 0/1 (or soft, in [0, 1]) of the logits' shape, or integer class codes of shape
    ``logits.shape[:-1]`` (``c >= 0`` foreground class, ``-1`` background, ``-2`` ignored).
    ``alpha < 0`` disables alpha-balancing; ``gamma = 0`` gives alpha-balanced cross-entropy.
    Returns float32 (float64 for float64 logits): ``[..., K]`` for ``"none"``, a scalar otherwise.
    """
    return _sigmoid_focal(logits, targets, alpha, gamma, reduction, "sigmoid_focal_loss")


def sigmoid_cross_entropy_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = -1.0,
    reduction: Reduction = "none",
) -> Tensor:
    """Sigmoid cross-entropy (``alpha < 0``) or alpha-balanced CE: the focal loss with ``gamma = 0``.

    Same target forms and shapes as :func:`sigmoid_focal_loss`.
    """
    return _sigmoid_focal(logits, targets, alpha, 0.0, reduction, "sigmoid_cross_entropy_loss")


sigmoid_ce_loss = sigmoid_cross_entropy_loss


def _check_pair(fn: str, a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    _check_float(fn, names[0], a)
    _check_float(fn, names[1], b)
    if a.shape != b.shape:
        raise ValueError(
            f"{fn}: {names[0]} shape {tuple(a.shape)} != {names[1]} shape {tuple(b.shape)}"
        )


def smooth_l1_loss(
    input: Tensor, target: Tensor, beta: float = 0.1, reduction: Reduction = "none"
) -> Tensor:
    """Smooth L1 (Huber / beta): ``0.5 d**2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``.

    ``input`` and ``target`` of the same shape (e.g. box deltas [N, 4]); ``beta < 1e-5`` is exact L1.
    """
    fn = "smooth_l1_loss"
    _check_pair(fn, input, target, ("input", "target"))
    _check_reduction(fn, reduction)
    beta = float(beta)
    if not (beta >= 0.0):
        raise ValueError(f"{fn}: beta must be >= 0, got {beta}")
    d = (input - target).abs()
    if beta < 1e-5:
        loss = d
    else:
        loss = torch.where(d < beta, (0.5 / beta) * d * d, d - 0.5 * beta)
    return _reduce(loss, reduction)


def l1_loss(input: Tensor, target: Tensor, reduction: Reduction = "none") -> Tensor:
    """Elementwise ``|input - target|`` for tensors of the same shape."""
    fn = "l1_loss"
    _check_pair(fn, input, target, ("input", "target"))
    _check_reduction(fn, reduction)
    return _reduce((input - target).abs(), reduction)


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
    _check_reduction(fn, reduction)
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
    return _reduce(1.0 - giou, reduction)
