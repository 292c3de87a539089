"""Inference over a data loader and COCO evaluation of its detections.

``predict_batches(model, loader, device)`` yields, per image, its target dict and its detections in the
pixels of the original file (the model maps them back to ``target["orig_size"]``). ``evaluate(...)``
runs that over this process's share of a dataset, gathers every process's detections on rank 0, writes
them as a COCO results json and returns the COCO metrics (AP, AP50, AP75, APs, APm, APl, AR1, AR10,
AR100, ARs, ARm, ARl, per-class AP). Other ranks return an empty dict.

The model is run as given (eval mode for the loop, its training mode restored after).
``inference_model(model, cfg)`` is the form evaluation and prediction run: the BN-folded copy
(``fuse_for_inference``; its wide 3x3 convs in Winograd form where ``model.winograd``) inside the
``test.tta`` and ``test.amp`` wrappers.
"""

from __future__ import annotations

import logging
from collections.abc import Sized
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, cast

import torch
from torch import nn
from torch.utils.data import DataLoader

from retinanet.config import Config
from retinanet.inference.evaluator import CocoEvaluator
from retinanet.inference.precision import with_amp
from retinanet.inference.tta import with_tta
from retinanet.utils import distributed

__all__ = ["predict_batches", "evaluate", "inference_model"]

log = logging.getLogger("retinanet.eval")


def inference_model(model: nn.Module, cfg: Config, inplace: bool = False) -> nn.Module:
    """``model`` (a RetinaNet) as evaluation and prediction run it: BN folded (the wide 3x3 convs in
    Winograd form where the model's switch is on), then the ``test.tta`` and ``test.amp`` wrappers."""
    fused = model.fuse_for_inference(inplace=inplace)  # type: ignore[operator]
    return with_amp(with_tta(fused, cfg), cfg)


def predict_batches(
    model: nn.Module, loader: DataLoader, device: torch.device, progress: bool = False, desc: str = "eval"
) -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """Run ``model`` in eval mode over ``loader``; yield ``(target, detections)`` per image with boxes
    in the original image's pixels (float32, on the CPU)."""
    was_training = model.training
    model.eval()
    bar = None
    if progress and distributed.is_main():
        from tqdm import tqdm

        bar = tqdm(
            total=len(cast(Sized, loader.sampler)) if hasattr(loader, "sampler") else None,
            desc=desc,
            unit="img",
            dynamic_ncols=True,
        )
    try:
        with torch.inference_mode():
            for batch in loader:
                images = [im.to(device, non_blocking=True) for im in batch.images]
                outputs = model(images, output_sizes=[t["orig_size"] for t in batch.targets])
                for target, det in zip(batch.targets, outputs):
                    yield target, {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in det.items()}
                if bar is not None:
                    bar.update(len(batch.targets))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    dataset: Any,
    device: torch.device,
    results_path: Optional[Path] = None,
    progress: bool = False,
    label_to_category_id: Optional[Sequence[int]] = None,
) -> dict[str, float]:
    """COCO evaluation of ``model`` on ``dataset`` (which provides ``coco_gt()`` and
    ``label_to_category_id``); detections are written to ``results_path`` when given.
    ``label_to_category_id`` replaces the dataset's when the model's outputs are not the dataset's
    classes (``model.label_space: coco_category_ids``); detections of category ids the dataset does
    not have are then left out (COCO evaluation has no ground truth for them)."""
    evaluator = CocoEvaluator(dataset, label_to_category_id=label_to_category_id)
    keep: Optional[torch.Tensor] = None
    if label_to_category_id is not None:  # outputs of categories the dataset lacks are left out
        known = set(int(c) for c in dataset.label_to_category_id)
        keep = torch.tensor([int(c) in known for c in label_to_category_id])
    for target, det in predict_batches(model, loader, device, progress=progress):
        if keep is not None:
            sel = keep.to(det["labels"].device)[det["labels"]]
            det = {k: v[sel] for k, v in det.items()}
        evaluator.update([det], [target])
    evaluator.gather()
    if not distributed.is_main():
        return {}
    if results_path is not None:
        evaluator.write_results(results_path)
    return evaluator.evaluate()
