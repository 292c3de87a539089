"""Evaluation during training: COCO metrics of the validation set, the best so far, metrics.jsonl.

``evaluate_during_training(model, val_set, cfg, device, out, iteration, rank, world, progress, log_to,
best)`` evaluates ``model`` (the trained weights, or the EMA copy; an inference-only BN-folded copy is
made, wrapped in the test-time augmentation of ``cfg.test.tta`` when it has one, as ``retinanet eval``
does, so every evaluation of a run is measured the same way) on ``val_set`` (sharded over ``world``
processes) and writes the detections to
``<out>/detections_<iteration>.json``. On rank 0 it updates ``best``
(:class:`~retinanet.training.best.BestMetric`), writes one log line and the row
``{"iter", "bbox/<metric>": value, ..., "best/<best metric>": value, "best/iter": iteration}`` to
``log_to``. Returns the metrics (``AP``, ``AP50``, ... and ``AP/<class>``; an empty dict on the other
ranks) and whether ``best`` improved (False on the other ranks). A collective: every rank calls it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from retinanet.config import Config
from retinanet.data.build import build_eval_loader
from retinanet.inference.loop import evaluate, inference_model
from retinanet.training.best import BestMetric
from retinanet.training.metrics import MetricsLog
from retinanet.utils import distributed

__all__ = ["evaluate_during_training"]

log = logging.getLogger("retinanet.train")


def evaluate_during_training(
    model: nn.Module,
    val_set: Any,
    cfg: Config,
    device: torch.device,
    out: Path,
    iteration: int,
    rank: int,
    world: int,
    progress: bool,
    log_to: Optional[MetricsLog],
    best: BestMetric,
) -> tuple[dict[str, float], bool]:
    """See the module docstring."""
    loader = build_eval_loader(val_set, cfg, rank=rank, world_size=world)
    m = cfg.model
    metrics = evaluate(
        inference_model(model, cfg),
        loader,
        val_set,
        device,
        results_path=out / f"detections_{iteration:07d}.json",
        progress=progress,
        label_to_category_id=list(range(m.num_classes)) if m.label_space == "coco_category_ids" else None,
    )
    improved = False
    if distributed.is_main() and metrics:
        improved = best.update(metrics, iteration)
        if log_to is not None:
            row: dict[str, Any] = {"iter": iteration, **{f"bbox/{k}": v for k, v in metrics.items()}}
            if best.value is not None:
                row.update({f"best/{best.metric}": best.value, "best/iter": best.iteration})
            log_to.write(row)
        log.info(
            "iteration %d: AP %.4f AP50 %.4f AP75 %.4f",
            iteration,
            metrics.get("AP", -1),
            metrics.get("AP50", -1),
            metrics.get("AP75", -1),
        )
    return metrics, improved
