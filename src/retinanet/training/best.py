"""The best evaluation of a training run, for ``model_best.pth``.

``BestMetric("AP")`` follows one metric of the evaluations during training (``train.best_metric``;
every COCO metric is higher-is-better). :meth:`BestMetric.update` takes an evaluation's metrics and
says whether it beat the best so far (strictly; ``-1``, pycocotools' "undefined", never counts). Its
:meth:`state_dict` ``{"metric", "value", "iteration"}`` is stored in every checkpoint, so a resumed run
keeps the best so far and never replaces a better ``model_best.pth`` with a worse one.
:func:`best_checkpoint_state` is what ``model_best.pth`` holds: the checkpoint minus what only resuming
needs (optimizer, scaler, RNG states), plus the ``"best"`` record. :func:`report_best` logs the best and
the final value at the end of a run.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Optional

__all__ = ["BEST_CHECKPOINT", "BestMetric", "best_checkpoint_state", "report_best"]

log = logging.getLogger("retinanet.train")

BEST_CHECKPOINT = "model_best.pth"

_RESUME_ONLY = ("optimizer", "scaler", "rng")


class BestMetric:
    """The best value of ``metric`` so far and the iteration it was reached at."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.value: Optional[float] = None
        self.iteration: Optional[int] = None

    def update(self, metrics: Mapping[str, float], iteration: int) -> bool:
        """Record ``metrics`` of ``iteration``; True when the metric improved on the best so far."""
        v = metrics.get(self.metric)
        if v is None or not math.isfinite(v) or v < 0:
            return False
        if self.value is not None and v <= self.value:
            return False
        self.value, self.iteration = float(v), int(iteration)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "iteration": self.iteration}

    def load_state_dict(self, state: Optional[Mapping[str, Any]]) -> None:
        """Restore the best so far; a record of another metric (``train.best_metric`` changed) is dropped."""
        if not state or state.get("value") is None:
            return
        if state.get("metric") != self.metric:
            log.warning(
                "the checkpoint's best %s is not train.best_metric %s: %s is kept from this run's evaluations",
                state.get("metric"),
                self.metric,
                BEST_CHECKPOINT,
            )
            return
        self.value = float(state["value"])
        self.iteration = int(state["iteration"])


def best_checkpoint_state(state: Mapping[str, Any], best: BestMetric) -> dict[str, Any]:
    """``model_best.pth``'s content: ``state`` (a trainer checkpoint) without the resume-only entries."""
    return {**{k: v for k, v in state.items() if k not in _RESUME_ONLY}, "best": best.state_dict()}


def report_best(best: BestMetric, final_metrics: Mapping[str, float], iteration: int) -> None:
    """The end of a finished run of ``iteration`` steps: the best and the final value in the log."""
    if best.value is None or best.iteration is None:
        return
    final = final_metrics.get(best.metric, float("nan"))
    log.info(
        "best %s %.4f at iteration %d (%s); final %.4f at iteration %d",
        best.metric,
        best.value,
        best.iteration,
        BEST_CHECKPOINT,
        final,
        iteration,
    )
