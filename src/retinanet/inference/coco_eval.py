"""COCO box evaluation: COCO results against a COCO ground truth -> the 12 COCO numbers + per-class AP.

:func:`evaluate_coco` runs pycocotools' ``COCOeval`` (or ``faster_coco_eval`` with
``backend="faster"``) and returns :class:`CocoMetrics`: ``AP, AP50, AP75, APs, APm, APl, AR1,
AR10, AR100, ARs, ARm, ARl`` as fractions (``-1`` where undefined, as pycocotools) plus
``AP/<class name>`` per category, and ``.summary``, the text pycocotools would have printed
(its prints go to this module's logger at DEBUG instead of stdout). Empty results are fine.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["STAT_NAMES", "BACKENDS", "CocoMetrics", "evaluate_coco"]

logger = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
BACKENDS = ("pycocotools", "faster")  # values of evaluate_coco(backend=...)


class CocoMetrics(dict):
    """``{name: float}`` with the 12 COCO numbers and ``AP/<class>``; ``.summary`` holds the text
    table pycocotools prints."""

    summary: str = ""


def _backend_classes(backend: str) -> tuple[type, type]:
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as e:
            raise ImportError(
                "backend='faster' needs the faster_coco_eval package (pip install faster-coco-eval); "
                "use backend='pycocotools' otherwise"
            ) from e
        return COCO, COCOeval_faster
    raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {BACKENDS}")


def _read_json(path: str | os.PathLike[str], what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{what} file {path} does not exist") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from e


def _gt_dataset(coco_gt: Any) -> dict[str, Any]:
    """A private copy of a COCO ground-truth dict, validated (missing ``area``/``id`` filled)."""
    source = "coco_gt"
    if isinstance(coco_gt, (str, os.PathLike)):
        source = str(coco_gt)
        coco_gt = _read_json(coco_gt, "COCO ground truth")
    if not isinstance(coco_gt, Mapping):
        raise TypeError(f"coco_gt must be a COCO dict, a json path or a pycocotools COCO, got {type(coco_gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco_gt.get(key), list):
            raise ValueError(f"COCO ground truth {source} has no list field {key!r}")
    anns = []
    for j, ann in enumerate(coco_gt["annotations"]):
        missing = {"image_id", "category_id", "bbox"} - set(ann)
        if missing:
            raise ValueError(f"COCO ground truth {source}: annotations[{j}] lacks {sorted(missing)}")
        a = dict(ann)  # COCOeval writes an 'ignore' flag into gt annotations: keep the caller's clean
        if "area" not in a:
            a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])
        a.setdefault("id", j + 1)
        anns.append(a)
    ds = dict(coco_gt)
    ds["annotations"] = anns
    return ds


def _build_coco(coco_cls: type, dataset: dict[str, Any]) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _results_dataset(gt: Any, results: Any) -> dict[str, Any]:
    """The detection 'dataset' pycocotools' loadRes would build (bbox results), without its
    crash on an empty list and without mutating the caller's entries."""
    if isinstance(results, (str, os.PathLike)):
        results = _read_json(results, "COCO results")
    if not isinstance(results, list):
        raise TypeError(f"COCO results must be a list of dicts or a json path, got {type(results).__name__}")
    anns = []
    for j, r in enumerate(results):
        try:
            x, y, w, h = r["bbox"]
            anns.append(
                {
                    "image_id": r["image_id"],
                    "category_id": r["category_id"],
                    "bbox": [x, y, w, h],
                    "score": r["score"],
                    "area": w * h,
                    "id": j + 1,
                    "iscrowd": 0,
                }
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"COCO results[{j}] must be {{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}}, got {r!r}"
            ) from e
    img_ids = set(gt.getImgIds())
    unknown = {a["image_id"] for a in anns} - img_ids
    if unknown:
        raise ValueError(
            f"COCO results refer to {len(unknown)} image id(s) not in the ground truth, e.g. {sorted(unknown)[:5]}"
        )
    cat_ids = set(gt.getCatIds())
    unknown = {a["category_id"] for a in anns} - cat_ids
    if unknown:
        raise ValueError(
            f"COCO results use category id(s) {sorted(unknown)[:5]} that the ground truth does not have "
            f"(it has {sorted(cat_ids)[:20]})"
        )
    return {
        "info": copy.deepcopy(gt.dataset.get("info", {})),
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset["categories"]),
        "annotations": anns,
    }


def evaluate_coco(
    coco_gt: Any,
    results: list[dict[str, Any]] | str | os.PathLike[str],
    *,
    image_ids: Sequence[int] | None = None,
    backend: str = "pycocotools",
) -> CocoMetrics:
    """COCO box AP/AR of ``results`` against ``coco_gt``.

    ``coco_gt``: a COCO dict, a path to its json, or a pycocotools/faster_coco_eval ``COCO``.
    ``results``: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` or a json
    path. ``image_ids`` restricts the evaluation to those images (e.g. the ones actually run);
    default all images of the ground truth. Returns :class:`CocoMetrics` with the 12 standard
    numbers (same values as ``COCOeval.stats``; ``-1`` where the ground truth has nothing to
    measure), ``AP/<category name>`` (AP@[.5:.95], all areas, 100 dets; ``-1`` for a category
    without ground truth) and ``.summary``. Empty results give 0 for every defined number.
    """
    coco_cls, eval_cls = _backend_classes(backend)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if isinstance(coco_gt, (Mapping, str, os.PathLike)):
            gt = _build_coco(coco_cls, _gt_dataset(coco_gt))
        elif hasattr(coco_gt, "getImgIds") and hasattr(coco_gt, "dataset"):
            gt = coco_gt
        else:
            raise TypeError(f"coco_gt must be a COCO dict, a json path or a COCO object, got {type(coco_gt).__name__}")
        dt = _build_coco(coco_cls, _results_dataset(gt, results))
        ev = eval_cls(gt, dt, "bbox")
        if image_ids is not None:
            wanted = sorted({int(i) for i in image_ids})
            unknown = set(wanted) - set(gt.getImgIds())
            if unknown:
                raise ValueError(f"image_ids not in the ground truth, e.g. {sorted(unknown)[:5]}")
            ev.params.imgIds = wanted
        ev.evaluate()
        ev.accumulate()
        chatter = sink.getvalue()
        sink.seek(0)
        sink.truncate()
        ev.summarize()
        summary = sink.getvalue()
    if chatter.strip():
        logger.debug("%s", chatter.rstrip())
    logger.debug("COCO bbox evaluation:\n%s", summary.rstrip())

    metrics = CocoMetrics({name: float(v) for name, v in zip(STAT_NAMES, np.asarray(ev.stats).tolist())})
    # faster_coco_eval logs instead of printing: rebuild the same table from the numbers then
    metrics.summary = summary if summary.strip() else _format_summary(metrics, ev.params)
    metrics.update(_per_class_ap(ev, gt))
    return metrics


def _format_summary(metrics: Mapping[str, float], params: Any) -> str:
    """The 12-line AP/AR table in pycocotools' layout."""
    iou_all = f"{params.iouThrs[0]:0.2f}:{params.iouThrs[-1]:0.2f}"
    md = list(params.maxDets)
    rows = [  # (AP?, IoU, area, maxDets) in STAT_NAMES order
        (True, iou_all, "all", md[-1]),
        (True, "0.50", "all", md[-1]),
        (True, "0.75", "all", md[-1]),
        (True, iou_all, "small", md[-1]),
        (True, iou_all, "medium", md[-1]),
        (True, iou_all, "large", md[-1]),
        (False, iou_all, "all", md[0]),
        (False, iou_all, "all", md[1]),
        (False, iou_all, "all", md[-1]),
        (False, iou_all, "small", md[-1]),
        (False, iou_all, "medium", md[-1]),
        (False, iou_all, "large", md[-1]),
    ]
    lines = []
    for name, (is_ap, iou, area, dets) in zip(STAT_NAMES, rows):
        title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={dets:>3d} ] = {metrics[name]:0.3f}"
        )
    return "\n".join(lines) + "\n"


def _per_class_ap(ev: Any, gt: Any) -> dict[str, float]:
    """AP@[.5:.95] per category from ``eval['precision']`` [T, R, K, A, M] at area 'all' and
    the largest maxDets, averaging entries > -1 (``-1`` if none), as COCOeval.summarize does."""
    precision = np.asarray(ev.eval["precision"])
    p = ev.params
    a = list(p.areaRngLbl).index("all")
    m = len(p.maxDets) - 1
    prec = precision[:, :, :, a, m]  # [T, R, K]
    valid = prec > -1
    n = valid.sum(axis=(0, 1))
    ap = np.where(n > 0, np.where(valid, prec, 0.0).sum(axis=(0, 1)) / np.maximum(n, 1), -1.0)
    out: dict[str, float] = {}
    for k, cat_id in enumerate(p.catIds):
        cat = gt.cats.get(cat_id, {})
        name = str(cat.get("name", cat_id))
        key = f"AP/{name}"
        if key in out:  # duplicate names: disambiguate with the id
            key = f"AP/{name} ({cat_id})"
        out[key] = float(ap[k])
    return out
