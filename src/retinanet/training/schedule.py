"""The learning-rate schedule: a pure function of the iteration, so a resumed run needs only the
iteration to continue it.

``lr_at(iteration, base_lr, max_iter, warmup_iters, warmup_factor, steps, gamma, schedule) -> float``:
linear warmup from ``base_lr * warmup_factor`` over ``warmup_iters``, then ``"step"`` decay (times
``gamma`` at each fraction of ``max_iter`` in ``steps``, the paper's) or ``"cosine"`` decay to 0.
``effective_warmup(warmup_iters, warmup_fraction, max_iter) -> int``: the warmup a run of ``max_iter``
iterations gets, ``min(warmup_iters, round(warmup_fraction * max_iter))``, so a short run is not mostly
warmup. :func:`solver_lr` is the trainer's call: both, from a :class:`~retinanet.config.SolverConfig`.
"""

from __future__ import annotations

import math

from retinanet.config import SolverConfig

__all__ = ["lr_at", "effective_warmup", "solver_lr"]


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


def effective_warmup(warmup_iters: int, warmup_fraction: float, max_iter: int) -> int:
    """Warmup iterations of a run of ``max_iter``: ``warmup_iters`` or ``warmup_fraction`` of the run,
    whichever is smaller (``effective_warmup(1000, 0.1, 90000) == 1000``; ``(500, 0.1, 1030) == 103``)."""
    return max(0, min(int(warmup_iters), round(warmup_fraction * max_iter)))


def solver_lr(s: SolverConfig, iteration: int, max_iter: int) -> float:
    """The learning rate of ``s``'s recipe at ``iteration`` of a run of ``max_iter`` iterations (the
    batch-scaled ``s.lr()``, the effective warmup, steps or cosine)."""
    warmup = effective_warmup(s.warmup_iters, s.warmup_fraction, max_iter)
    return lr_at(iteration, s.lr(), max_iter, warmup, s.warmup_factor, s.steps, s.gamma, s.schedule)
