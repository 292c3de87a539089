"""Argument checks and the reduction shared by the losses.

``reduce_loss(loss, reduction)``: ``"none"`` returns the per-element tensor, ``"sum"`` a scalar,
``"mean"`` a scalar that is 0 (not NaN) for an empty tensor.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

__all__ = ["Reduction", "REDUCTIONS", "check_reduction", "check_float", "reduce_loss"]

Reduction = Literal["none", "sum", "mean"]
REDUCTIONS = ("none", "sum", "mean")


def check_reduction(fn: str, reduction: str) -> None:
    """Raise ``ValueError`` (naming the loss ``fn``) unless ``reduction`` is one of :data:`REDUCTIONS`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_float(fn: str, name: str, t: object) -> Tensor:
    """``t`` if it is a floating-point tensor, else a ``TypeError`` naming the loss and the argument."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to a per-element loss."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    # mean of nothing is 0 (not NaN) so empty batches do not poison a running loss.
    return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
