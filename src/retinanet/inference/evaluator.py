"""The accumulating COCO evaluator: model outputs over batches and DDP ranks -> COCO metrics.

:class:`CocoEvaluator` turns each batch of outputs into result arrays
(:mod:`retinanet.inference.coco_results`), gathers them across DDP ranks
(``torch.distributed.all_gather_object``; duplicated images from a padding sampler count once),
evaluates them with :func:`~retinanet.inference.coco_eval.evaluate_coco`, and writes the results
json atomically. It works with any dataset exposing ``coco_gt()`` (a COCO dict, a json path or a
pycocotools ``COCO``) and ``label_to_category_id`` (a dict or sequence mapping contiguous label ->
category id).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retinanet.inference.coco_eval import BACKENDS, CocoMetrics, evaluate_coco
from retinanet.inference.coco_results import (
    arrays_to_results,
    category_lut,
    concat_arrays,
    dedupe_images,
    detections_to_arrays,
)
from retinanet.utils import distributed
from retinanet.utils.io import atomic_write_json

__all__ = ["CocoEvaluator"]


class CocoEvaluator:
    """Accumulate detections over batches (and DDP ranks) and compute COCO box metrics.

    ::

        ev = CocoEvaluator(dataset)                  # dataset.coco_gt(), dataset.label_to_category_id
        for images, targets in loader:              # the model maps boxes to the original sizes
            ev.update(model(images, output_sizes=[t["orig_size"] for t in targets]), targets)
        ev.gather()                                  # collective: every rank calls it
        if rank == 0:
            metrics = ev.evaluate(); ev.write_results("out/coco_results.json")

    Only the images seen by :meth:`update` are evaluated (a partial pass gives the AP of that
    subset, not a penalty for the images never run).
    """

    def __init__(
        self,
        dataset: Any = None,
        *,
        coco_gt: Any = None,
        label_to_category_id: Mapping[int, int] | Sequence[int] | None = None,
        backend: str = "pycocotools",
        box_decimals: int | None = 2,
        score_decimals: int | None = 6,
    ) -> None:
        if dataset is not None:
            for attr in ("coco_gt", "label_to_category_id"):
                if not hasattr(dataset, attr):
                    raise TypeError(
                        f"CocoEvaluator needs a dataset exposing coco_gt() and label_to_category_id; "
                        f"{type(dataset).__name__} has no {attr!r}"
                    )
            if label_to_category_id is None:
                label_to_category_id = dataset.label_to_category_id
        if label_to_category_id is None:
            raise ValueError("CocoEvaluator needs a dataset or label_to_category_id")
        if coco_gt is None and dataset is None:
            raise ValueError("CocoEvaluator needs a dataset or coco_gt")
        if backend not in BACKENDS:
            raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")
        self._dataset = dataset
        self._coco_gt = coco_gt
        self._lut = category_lut(label_to_category_id)
        self.backend = backend
        self.box_decimals = box_decimals
        self.score_decimals = score_decimals
        self.summary = ""
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated detections."""
        self._chunks: list[dict[str, np.ndarray]] = []
        self._merged: dict[str, np.ndarray] | None = None
        self._gathered = False

    def update(self, outputs: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch: ``outputs[i]`` (``boxes`` [n, 4] xyxy in original image pixels, ``scores``
        [n], ``labels`` [n]) for the image of ``targets[i]`` (which carries ``image_id``)."""
        if len(outputs) != len(targets):
            raise ValueError(f"update got {len(outputs)} outputs but {len(targets)} targets")
        ids = []
        for i, t in enumerate(targets):
            if "image_id" not in t:
                raise ValueError(f"targets[{i}] has no 'image_id'")
            ids.append(int(t["image_id"]))
        self._chunks.append(detections_to_arrays(outputs, ids, self._lut, self.box_decimals, self.score_decimals))
        self._merged = None
        self._gathered = False

    def gather(self) -> None:
        """Collect every rank's detections on every rank (a collective call under DDP; a no-op
        merge otherwise). Images seen on several ranks count once."""
        local = concat_arrays(self._chunks)
        if distributed.world_size() > 1:
            parts = distributed.all_gather_object(local)
            local = concat_arrays([p for p in parts if p is not None])
        self._merged = dedupe_images(local)
        self._chunks = [self._merged]
        self._gathered = True

    def _arrays(self) -> dict[str, np.ndarray]:
        if distributed.world_size() > 1 and not self._gathered:
            raise RuntimeError("CocoEvaluator: call gather() on every rank before evaluate()/results() under DDP")
        if self._merged is None:
            self._merged = dedupe_images(concat_arrays(self._chunks))
        return self._merged

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images seen so far (after gather: on all ranks), each once."""
        return self._arrays()["image_ids"].tolist()

    def results(self) -> list[dict[str, Any]]:
        """The accumulated detections as COCO result entries."""
        return arrays_to_results(self._arrays())

    def _gt(self) -> Any:
        if self._coco_gt is None:
            self._coco_gt = self._dataset.coco_gt()
        return self._coco_gt

    def evaluate(self) -> CocoMetrics:
        """COCO metrics of the accumulated detections over the images seen (see :func:`evaluate_coco`).
        Local: under DDP call :meth:`gather` on every rank first, then this on rank 0."""
        a = self._arrays()
        if len(a["image_ids"]) == 0:
            raise ValueError("CocoEvaluator.evaluate: no images were added with update()")
        metrics = evaluate_coco(
            self._gt(), arrays_to_results(a), image_ids=a["image_ids"].tolist(), backend=self.backend
        )
        self.summary = metrics.summary
        return metrics

    def write_results(self, path: str | os.PathLike[str]) -> Path:
        """Write the accumulated detections as a COCO results json, atomically; return the path.
        Local: under DDP call :meth:`gather` first and write on one rank."""
        results = self.results()
        try:
            return atomic_write_json(path, results, separators=(",", ":"))
        except OSError as e:
            raise OSError(e.errno, f"could not write COCO results to {path}: {e.strerror or e}") from e
