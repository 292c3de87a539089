"""Inference over a data loader and COCO-style evaluation.

``predict_batches(model, loader, device)`` yields, per image, its target dict and its detections
mapped back to the original file's pixels. ``evaluate(...)`` runs that over this process's share of a
dataset, gathers every process's detections on rank 0, writes them as a COCO results json and
returns the 12 COCO numbers (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl) plus
per-class AP. Other ranks return an empty dict.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn

from retinanet.data.transforms import map_boxes_to_original
from retinanet.utils import distributed as du
from retinanet.inference.evaluator import CocoEvaluator

__all__ = ["predict_batches", "evaluate", "inference_model"]

log = logging.getLogger("retinanet.eval")


def inference_model(model: nn.Module, fuse: bool = True) -> nn.Module:
    """The module to run for inference: with ``fuse``, a RetinaNet (also inside DDP) is replaced by its
    BN-folded, conv-fused copy (:meth:`RetinaNet.fuse_for_inference`, same detections up to float
    rounding, faster on CPU); anything else is returned as it is."""
    inner = getattr(model, "module", model)
    if fuse and hasattr(inner, "fuse_for_inference") and not getattr(inner, "fused", False):
        return inner.fuse_for_inference()
    return model


def predict_batches(model: nn.Module, loader, device: torch.device,
                    progress: bool = False, desc: str = "eval", fuse: bool = True) -> Iterator[tuple[dict, dict]]:
    """Run ``model`` in eval mode over ``loader``; yield ``(target, detections)`` per image with the
    boxes in the original image's coordinates. ``fuse``: run a fused copy (see :func:`inference_model`);
    ``model`` itself is left as it was."""
    was_training = model.training
    model.eval()
    net = inference_model(model, fuse)
    bar = None
    if progress and du.is_main():
        from tqdm import tqdm
        bar = tqdm(total=len(loader.sampler) if hasattr(loader, "sampler") else None, desc=desc, unit="img",
                   dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for batch in loader:
                images = batch.images.to(device, non_blocking=True)
                outputs = net(images, image_sizes=batch.image_sizes)
                for target, det in zip(batch.targets, outputs):
                    boxes = map_boxes_to_original(det["boxes"].float().cpu(), target)
                    yield target, {"boxes": boxes, "scores": det["scores"].float().cpu(),
                                   "labels": det["labels"].cpu()}
                if bar is not None:
                    bar.update(len(batch.targets))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)


def evaluate(model: nn.Module, loader, dataset, device: torch.device,
             results_path: Optional[Path] = None, progress: bool = False, fuse: bool = True) -> dict[str, float]:
    """COCO evaluation of ``model`` on ``dataset`` (which provides ``coco_gt()`` and
    ``label_to_category_id``); detections are written to ``results_path`` when given."""
    evaluator = CocoEvaluator(dataset)
    for target, det in predict_batches(model, loader, device, progress=progress, fuse=fuse):
        evaluator.update([det], [target])
    evaluator.gather()
    if not du.is_main():
        return {}
    if results_path is not None:
        evaluator.write_results(results_path)
    metrics = evaluator.evaluate()
    return metrics
