"""The focal loss (Lin et al. 2017) and sigmoid cross-entropy, from logits.

Binary form, for a logit ``x`` with sigmoid probability ``p`` and target ``y`` in {0, 1}::

    p_t     = p if y == 1 else 1 - p
    alpha_t = alpha if y == 1 else 1 - alpha          (alpha < 0: alpha_t = 1, no balancing)
    FL(p_t) = -alpha_t * (1 - p_t) ** gamma * log(p_t)

``gamma = 0`` is (alpha-balanced) sigmoid cross-entropy. Everything is computed from the logits in
log-sigmoid / softplus form (``-log(p_t) = softplus(-s * x)`` with ``s = +1`` for a positive and ``-1``
for a negative), so logits of +-1e4 give finite losses and gradients.

Shapes (``K`` = number of classes):

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

Binary targets run the fused kernel of :mod:`retinanet.ops.focal_kernel` (chunked, with a hand-written
backward and a gradient buffer reused across calls on the CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from retinanet.losses.common import Reduction, check_float, check_reduction, reduce_loss
from retinanet.ops.focal_kernel import fused_focal_loss, loss_dtype

__all__ = ["sigmoid_focal_loss", "sigmoid_cross_entropy_loss"]

_TARGET_SCAN_CHUNK = 1 << 18  # dense targets are checked in chunks of this many elements


def _soft_focal(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Per-element focal loss for soft targets in [0, 1] (plain autograd, fvcore's formula)."""
    cdtype = loss_dtype(logits.dtype)
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


def _target_kind(fn: str, logits: Tensor, targets: Tensor) -> str:
    """'binary' or 'soft' for dense targets, 'codes' for class codes; raise on anything else."""
    k = logits.shape[-1]
    if targets.shape == logits.shape:
        if targets.is_complex():
            raise TypeError(f"{fn}: targets must be real, got dtype {targets.dtype}")
        return _dense_kind(fn, targets, _TARGET_SCAN_CHUNK) if targets.numel() else "binary"
    if targets.shape == logits.shape[:-1]:
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(
                f"{fn}: targets of shape {tuple(targets.shape)} (logits.shape[:-1]) are class codes and "
                f"must be an integer tensor, got dtype {targets.dtype}"
            )
        if targets.numel():
            lo, hi = torch.aminmax(targets)
            if int(lo) < -2 or int(hi) >= k:
                bad = int(lo) if int(lo) < -2 else int(hi)
                raise ValueError(
                    f"{fn}: class targets must be in [-2, {k - 1}] (-1 background, -2 ignored) for "
                    f"K = {k} logit columns, found {bad}"
                )
        return "codes"
    raise ValueError(
        f"{fn}: targets shape {tuple(targets.shape)} matches neither logits {tuple(logits.shape)} "
        f"(dense 0/1 targets) nor logits.shape[:-1] {tuple(logits.shape[:-1])} (class codes)"
    )


def _sigmoid_focal(
    logits: Tensor,
    targets: Tensor,
    alpha: float,
    gamma: float,
    reduction: str,
    fn: str,
) -> Tensor:
    """The checked focal loss behind both public functions (``fn``: the name used in errors)."""
    check_float(fn, "logits", logits)
    check_reduction(fn, reduction)
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
    kind = _target_kind(fn, logits, targets)
    if logits.numel() == 0:
        zeros = logits.to(loss_dtype(logits.dtype)) * 0.0
        return zeros if reduction == "none" else zeros.sum()
    if kind == "soft":
        return reduce_loss(_soft_focal(logits, targets, alpha, gamma), reduction)
    if kind == "codes" and targets.dtype != torch.int64:
        targets = targets.long()
    loss = fused_focal_loss(logits, targets, alpha, gamma, summed=reduction != "none")
    if reduction == "mean":
        count = logits.numel() if kind != "codes" else int((targets != -2).sum()) * k
        loss = loss / max(count, 1)
    return loss


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
