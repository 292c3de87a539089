"""A wall-clock budget for training: the number of steps fitted to the measured time per step.

:class:`TimeBudget` is a trainer hook (called with the trainer after every iteration). At measurement
points it takes the wall time per step of the last window (data loading, logging and checkpoints
included; evaluations during training excluded and counted separately) and sets ``trainer.max_iter``
to what fits in the time left, never above ``cap`` (the configured ``solver.max_iter`` or
``solver.epochs``' iterations). The learning-rate schedule is a function of ``(iteration, max_iter)``
(warmup fraction, lr steps, cosine), so the whole schedule follows. Once the first lr step is behind
(fraction ``solver.steps[0]`` of ``max_iter``) nothing changes any more, so the schedule keeps its
shape, and :func:`fit_iterations` never lets that step fall behind the current iteration.

Time left = ``budget_s - (clock() - t0) - reserve_s - last evaluation``; each remaining step costs the
step time plus its share of the evaluations every ``train.eval_period`` steps (their measured duration).
Under DDP the ranks agree on the smallest fit. ``train.time_budget`` (the trainer) and ``retinanet demo``
(the whole demo in 10 minutes) both use it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional

from retinanet.config.validation import parse_duration
from retinanet.utils import distributed

__all__ = ["TimeBudget", "fit_iterations"]

log = logging.getLogger("retinanet.train")


def fit_iterations(iteration: int, step_s: float, left_s: float, cap: int, first_step: float) -> int:
    """The total number of training steps that fits: the ``iteration`` done so far plus what
    ``left_s`` seconds buy at ``step_s`` per step, at most ``cap``, and never so few that the first
    learning-rate step (at fraction ``first_step`` of the total) would already be behind us."""
    n = iteration + (int(left_s / step_s) if step_s > 0 else cap)
    floor = math.ceil(iteration / first_step) + 1 if 0 < first_step < 1 else iteration + 1
    return max(min(n, cap), min(floor, cap))


class TimeBudget:
    """Trainer hook that keeps a run within ``budget_s`` seconds from ``t0`` (a ``clock()`` reading).

    Measurement points: ``skip`` iterations after the run's first (or resumed) iteration, then every
    ``every`` iterations from there; the first point only starts the window. ``cap`` is the most steps
    the run may have (default: ``trainer.max_iter`` at the first call). ``clock`` defaults to
    ``time.perf_counter``; tests pass a fake one. The trainer's attributes read: ``iteration``,
    ``max_iter``, ``cfg.solver.steps``, ``cfg.train.eval_period`` and, when present,
    ``eval_seconds`` (total spent in evaluations during training) and ``last_eval_seconds``."""

    def __init__(
        self,
        t0: float,
        budget_s: float,
        reserve_s: float = 0.0,
        every: int = 100,
        skip: Optional[int] = None,
        cap: Optional[int] = None,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self.t0, self.budget_s, self.reserve_s, self.every = t0, budget_s, reserve_s, every
        self.skip = every if skip is None else skip
        self.cap = cap
        self._clock = clock
        self._start: Optional[int] = None  # the iteration before this run's first step
        self._mark: Optional[tuple[int, float, float]] = None  # (iteration, time, eval seconds) of the window start
        #: seconds per step of the last measurement (None before the first)
        self.step_s: Optional[float] = None
        self.asked = "the configured number"  # what set the cap, for the log

    @classmethod
    def for_training(cls, cfg: Any, t0: float, cap: int, clock: Optional[Callable[[], float]] = None) -> "TimeBudget":
        """The budget of ``cfg.train.time_budget`` for a run of at most ``cap`` steps (the window of
        the first measurement starts at its 10th step; then one every 50 steps)."""
        budget = cls(t0, parse_duration(cfg.train.time_budget), every=50, skip=10, cap=cap, clock=clock)
        s = cfg.solver
        budget.asked = f"solver.epochs={s.epochs:g}" if s.epochs is not None else f"solver.max_iter={s.max_iter}"
        log.info(
            "train.time_budget %.0f s: the number of steps (at most %d, %s) is fitted to the measured step time",
            budget.budget_s,
            cap,
            budget.asked,
        )
        return budget

    def report(self, max_iter: int) -> None:
        """Log which set the number of steps of a finished run: the budget or the configured number."""
        cap = self.cap if self.cap is not None else max_iter
        if max_iter < cap:
            what = f"trained {max_iter} of the {cap} steps {self.asked} asks for: the budget set the number"
        else:
            what = f"the {cap} steps {self.asked} asks for fit in the budget"
        log.info("time budget: %s; %.0f s of %.0f s spent", what, self.spent_s(), self.budget_s)

    def now(self) -> float:
        return self._clock() if self._clock is not None else time.perf_counter()

    def spent_s(self) -> float:
        """Seconds of the budget used so far."""
        return self.now() - self.t0

    def __call__(self, trainer: Any) -> None:
        it, now = trainer.iteration, self.now()
        if self.cap is None:
            self.cap = trainer.max_iter
        if self._start is None:
            self._start = it - 1
        since = it - self._start - self.skip
        if since < 0 or since % self.every:
            return
        eval_total = float(getattr(trainer, "eval_seconds", 0.0))
        mark, self._mark = self._mark, (it, now, eval_total)
        steps = trainer.cfg.solver.steps
        first = steps[0] if steps else 1.0
        if mark is None or it >= first * trainer.max_iter:
            return
        step_s = self.step_s = max(now - mark[1] - (eval_total - mark[2]), 0.0) / max(it - mark[0], 1)
        per_step, left = step_s, self.budget_s - (now - self.t0) - self.reserve_s
        last_eval = getattr(trainer, "last_eval_seconds", None)
        if last_eval:
            left -= last_eval  # the final evaluation
            period = trainer.cfg.train.eval_period
            per_step += last_eval / period if period else 0.0
        n = fit_iterations(it, per_step, left, self.cap, first)
        n = -distributed.max_over_ranks(-n)  # every rank: the same, smallest, fit
        if n != trainer.max_iter:
            log.info(
                "time budget: %.0f ms per step here, %d steps fit in %.0f s (was %d, at most %d)",
                step_s * 1e3,
                n,
                self.budget_s,
                trainer.max_iter,
                self.cap,
            )
            trainer.max_iter = n
