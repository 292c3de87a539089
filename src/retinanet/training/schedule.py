"""The learning-rate schedule: a pure function of the iteration, so a resumed run needs only the
iteration to continue it.

``lr_at(iteration, base_lr, max_iter, warmup_iters, warmup_factor, steps, gamma, schedule) -> float``:
linear warmup from ``base_lr * warmup_factor`` over ``warmup_iters``, then ``"step"`` decay (times
``gamma`` at each fraction of ``max_iter`` in ``steps``, the paper's) or ``"cosine"`` decay to 0.
"""

from __future__ import annotations

import math

__all__ = ["lr_at"]


def lr_at(
    iteration: int,
    base_lr: float,
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float,
    steps: tuple[float, ...],
    gamma: float,
    schedule: str = "step",
) -> float:
    """Learning rate at ``iteration``: linear warmup, then ``"step"`` decay (times ``gamma`` at each
    fraction of ``max_iter`` in ``steps``, the paper's) or ``"cosine"`` decay from ``base_lr`` to 0 at
    ``max_iter`` (half a cosine period over the whole run, warmup included)."""
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    if schedule == "cosine":
        return base_lr * factor * 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max(max_iter, 1)))
    milestones = [round(s * max_iter) for s in steps]
    n = sum(1 for m in milestones if iteration >= m)
    return base_lr * factor * gamma**n
