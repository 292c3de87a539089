"""COCO-style box evaluation: detections -> COCO results -> the 12 COCO numbers + per-class AP.

- :func:`detections_to_coco_results` turns per-image detection dicts (``boxes`` ``[n, 4]``
  ``(x1, y1, x2, y2)`` in ORIGINAL image pixels, ``scores`` ``[n]``, ``labels`` ``[n]`` contiguous
  ``0..K-1``) into COCO result entries ``{"image_id", "category_id", "bbox": [x, y, w, h],
  "score"}``; the arithmetic is done on whole arrays, once.
- :func:`evaluate_coco` runs pycocotools' ``COCOeval`` (or ``faster_coco_eval`` with
  ``backend="faster"``) and returns :class:`CocoMetrics`: ``AP, AP50, AP75, APs, APm, APl, AR1,
  AR10, AR100, ARs, ARm, ARl`` as fractions (``-1`` where undefined, as pycocotools) plus
  ``AP/<class name>`` per category, and ``.summary``, the text pycocotools would have printed
  (its prints go to this module's logger at DEBUG instead of stdout). Empty results are fine.
- :class:`CocoEvaluator` accumulates model outputs over batches, gathers them across DDP ranks
  (``torch.distributed.all_gather_object``; duplicated images from a padding sampler count once),
  evaluates, and writes the results json atomically. It works with any dataset exposing
  ``coco_gt()`` (a COCO dict, a json path or a pycocotools ``COCO``) and
  ``label_to_category_id`` (a dict or sequence mapping contiguous label -> category id).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from retinanet.training.checkpoint import atomic_write

__all__ = [
    "STAT_NAMES",
    "CocoMetrics",
    "CocoEvaluator",
    "detections_to_coco_results",
    "evaluate_coco",
]

logger = logging.getLogger(__name__)

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
_BACKENDS = ("pycocotools", "faster")


class CocoMetrics(dict):
    """``{name: float}`` with the 12 COCO numbers and ``AP/<class>``; ``.summary`` holds the text
    table pycocotools prints."""

    summary: str = ""


# --------------------------------------------------------------------------------------------
# detections -> COCO results
# --------------------------------------------------------------------------------------------


def _as_numpy(x: Any, dtype: Any, where: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        return x.numpy().astype(dtype, copy=False) if x.dtype != torch.bfloat16 else x.float().numpy().astype(dtype)
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where} must be a tensor or array of numbers, got {type(x).__name__}") from e


def _category_lut(label_to_category_id: Mapping[int, int] | Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
    """Lookup table ``lut[label] = category_id`` (``-1`` where a label has no category)."""
    if isinstance(label_to_category_id, Mapping):
        if not label_to_category_id:
            return np.full(0, -1, dtype=np.int64)
        keys = np.fromiter((int(k) for k in label_to_category_id), dtype=np.int64)
        if keys.min() < 0:
            raise ValueError(f"label_to_category_id has a negative label {int(keys.min())}")
        lut = np.full(int(keys.max()) + 1, -1, dtype=np.int64)
        lut[keys] = np.fromiter((int(v) for v in label_to_category_id.values()), dtype=np.int64)
        return lut
    return _as_numpy(label_to_category_id, np.int64, "label_to_category_id").reshape(-1)


def _detections_to_arrays(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    lut: np.ndarray,
    box_decimals: int | None,
    score_decimals: int | None,
    image_scales: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Flatten per-image detections into arrays.

    Returns ``image_ids`` int64 ``[I]``, ``counts`` int64 ``[I]`` (detections per image),
    ``bbox`` float64 ``[N, 4]`` (x, y, w, h), ``score`` float64 ``[N]``, ``category_id`` int64 ``[N]``.
    ``image_scales`` (float64 ``[I, 2]``, (sx, sy)) rescales boxes per image.
    """
    if len(detections) != len(image_ids):
        raise ValueError(
            f"got {len(detections)} detection dicts but {len(image_ids)} image ids; need one per image"
        )
    ids = np.asarray([int(i) for i in image_ids], dtype=np.int64)
    boxes, scores, labels, counts = [], [], [], []
    for i, det in enumerate(detections):
        if not isinstance(det, Mapping) or not {"boxes", "scores", "labels"} <= set(det):
            raise TypeError(
                f"detections[{i}] (image_id {int(ids[i])}) must be a dict with boxes, scores and labels"
            )
        b = _as_numpy(det["boxes"], np.float64, f"detections[{i}]['boxes']")
        s = _as_numpy(det["scores"], np.float64, f"detections[{i}]['scores']").reshape(-1)
        lab = _as_numpy(det["labels"], np.int64, f"detections[{i}]['labels']").reshape(-1)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4 or len(s) != len(b) or len(lab) != len(b):
            raise ValueError(
                f"detections[{i}] (image_id {int(ids[i])}): boxes must be [n, 4] with scores [n] and "
                f"labels [n]; got boxes {list(b.shape)}, scores {list(s.shape)}, labels {list(lab.shape)}"
            )
        boxes.append(b)
        scores.append(s)
        labels.append(lab)
        counts.append(len(b))
    counts_arr = np.asarray(counts, dtype=np.int64)
    n = int(counts_arr.sum())
    xyxy = np.concatenate(boxes) if n else np.zeros((0, 4))
    score = np.concatenate(scores) if n else np.zeros(0)
    label = np.concatenate(labels) if n else np.zeros(0, dtype=np.int64)

    if n:
        bad = (label < 0) | (label >= len(lut))
        cat = np.where(bad, -1, lut[np.clip(label, 0, max(len(lut) - 1, 0))]) if len(lut) else np.full(n, -1)
        if (cat < 0).any():
            j = int(np.flatnonzero(cat < 0)[0])
            img = int(np.repeat(ids, counts_arr)[j])
            raise ValueError(
                f"detection label {int(label[j])} (image_id {img}) has no COCO category id; "
                f"label_to_category_id covers labels 0..{len(lut) - 1}"
            )
        finite = np.isfinite(xyxy).all(axis=1) & np.isfinite(score)
        if not finite.all():
            j = int(np.flatnonzero(~finite)[0])
            img = int(np.repeat(ids, counts_arr)[j])
            raise ValueError(
                f"detection {j} of the batch (image_id {img}) has a non-finite box or score: "
                f"box {xyxy[j].tolist()}, score {float(score[j])}"
            )
    else:
        cat = np.zeros(0, dtype=np.int64)

    if image_scales is not None and n:
        per_det = np.repeat(image_scales, counts_arr, axis=0)  # [N, 2] (sx, sy)
        xyxy = xyxy * np.tile(per_det, 2)
    xywh = np.empty_like(xyxy)
    xywh[:, :2] = xyxy[:, :2]
    xywh[:, 2:] = xyxy[:, 2:] - xyxy[:, :2]
    if box_decimals is not None:
        xywh = np.round(xywh, box_decimals)
    if score_decimals is not None:
        score = np.round(score, score_decimals)
    return {"image_ids": ids, "counts": counts_arr, "bbox": xywh, "score": score, "category_id": cat.astype(np.int64)}


def _arrays_to_results(a: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    img = np.repeat(a["image_ids"], a["counts"]).tolist()
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s}
        for i, c, b, s in zip(img, a["category_id"].tolist(), a["bbox"].tolist(), a["score"].tolist())
    ]


def detections_to_coco_results(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int] | Sequence[int] | torch.Tensor | np.ndarray,
    *,
    box_decimals: int | None = 2,
    score_decimals: int | None = 6,
) -> list[dict[str, Any]]:
    """COCO result entries for per-image detections.

    ``detections[i]`` holds ``boxes`` ``[n, 4]`` (x1, y1, x2, y2, original image pixels),
    ``scores`` ``[n]`` and ``labels`` ``[n]`` (contiguous ``0..K-1``; tensors on any device or
    arrays) for image ``image_ids[i]``. ``label_to_category_id`` maps a label to its COCO category
    id (dict or sequence). Boxes become ``[x, y, w, h]`` rounded to ``box_decimals`` (0.01 px),
    scores are rounded to ``score_decimals``; ``None`` keeps full precision.
    Raises ``ValueError`` on mismatched lengths/shapes, unmapped labels or non-finite values.
    """
    arrays = _detections_to_arrays(detections, image_ids, _category_lut(label_to_category_id),
                                   box_decimals, score_decimals)
    return _arrays_to_results(arrays)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


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
    raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {_BACKENDS}")


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
        raise TypeError(
            f"coco_gt must be a COCO dict, a json path or a pycocotools COCO, got {type(coco_gt).__name__}"
        )
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
            anns.append({"image_id": r["image_id"], "category_id": r["category_id"], "bbox": [x, y, w, h],
                         "score": r["score"], "area": w * h, "id": j + 1, "iscrowd": 0})
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"COCO results[{j}] must be {{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}}, "
                f"got {r!r}"
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
            raise TypeError(
                f"coco_gt must be a COCO dict, a json path or a COCO object, got {type(coco_gt).__name__}"
            )
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
        (True, iou_all, "all", md[-1]), (True, "0.50", "all", md[-1]), (True, "0.75", "all", md[-1]),
        (True, iou_all, "small", md[-1]), (True, iou_all, "medium", md[-1]), (True, iou_all, "large", md[-1]),
        (False, iou_all, "all", md[0]), (False, iou_all, "all", md[1]), (False, iou_all, "all", md[-1]),
        (False, iou_all, "small", md[-1]), (False, iou_all, "medium", md[-1]), (False, iou_all, "large", md[-1]),
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


# --------------------------------------------------------------------------------------------
# accumulating evaluator
# --------------------------------------------------------------------------------------------


def _dist_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not chunks:
        return {"image_ids": np.zeros(0, np.int64), "counts": np.zeros(0, np.int64),
                "bbox": np.zeros((0, 4)), "score": np.zeros(0), "category_id": np.zeros(0, np.int64)}
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _dedupe_images(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the first occurrence of every image id (samplers pad ranks by repeating images)."""
    ids = a["image_ids"]
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(ids):
        return a
    keep_img = np.zeros(len(ids), dtype=bool)
    keep_img[first] = True
    keep_det = np.repeat(keep_img, a["counts"])
    return {"image_ids": ids[keep_img], "counts": a["counts"][keep_img], "bbox": a["bbox"][keep_det],
            "score": a["score"][keep_det], "category_id": a["category_id"][keep_det]}


class CocoEvaluator:
    """Accumulate detections over batches (and DDP ranks) and compute COCO box metrics.

    ::

        ev = CocoEvaluator(dataset)                  # dataset.coco_gt(), dataset.label_to_category_id
        for images, targets, image_sizes in loader:
            ev.update(model(images, image_sizes=image_sizes), targets, image_sizes)
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
        if backend not in _BACKENDS:
            raise ValueError(f"unknown COCO evaluation backend {backend!r}; choose one of {_BACKENDS}")
        self._dataset = dataset
        self._coco_gt = coco_gt
        self._lut = _category_lut(label_to_category_id)
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

    def update(
        self,
        outputs: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        image_sizes: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Add one batch: ``outputs[i]`` (``boxes`` [n, 4] xyxy, ``scores`` [n], ``labels`` [n])
        for the image of ``targets[i]`` (which carries ``image_id``).

        Boxes must be in original image pixels, unless ``image_sizes`` (the ``(h, w)`` the model
        saw) is given: then they are rescaled to ``targets[i]["orig_size"]`` ``(h, w)``.
        """
        if len(outputs) != len(targets):
            raise ValueError(f"update got {len(outputs)} outputs but {len(targets)} targets")
        ids = []
        for i, t in enumerate(targets):
            if "image_id" not in t:
                raise ValueError(f"targets[{i}] has no 'image_id'")
            ids.append(int(t["image_id"]))
        scales = None
        if image_sizes is not None:
            if len(image_sizes) != len(targets):
                raise ValueError(f"update got {len(image_sizes)} image_sizes for {len(targets)} targets")
            try:
                orig = np.asarray([[float(v) for v in t["orig_size"]] for t in targets], dtype=np.float64)
            except KeyError as e:
                raise ValueError("rescaling to original pixels needs targets[i]['orig_size'] = (h, w)") from e
            cur = np.asarray([[float(v) for v in s] for s in image_sizes], dtype=np.float64)
            if orig.shape != (len(targets), 2) or cur.shape != orig.shape or (cur <= 0).any():
                raise ValueError(f"image_sizes and orig_size must be (h, w) pairs > 0, got {cur.tolist()}")
            scales = (orig / cur)[:, ::-1]  # (sx, sy) = (w0 / w, h0 / h)
        self._chunks.append(
            _detections_to_arrays(outputs, ids, self._lut, self.box_decimals, self.score_decimals, scales)
        )
        self._merged = None
        self._gathered = False

    def gather(self) -> None:
        """Collect every rank's detections on every rank (a collective call under DDP; a no-op
        merge otherwise). Images seen on several ranks count once."""
        local = _concat(self._chunks)
        _, world = _dist_world()
        if world > 1:
            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, local)
            local = _concat([p for p in parts if p is not None])
        self._merged = _dedupe_images(local)
        self._chunks = [self._merged]
        self._gathered = True

    def _arrays(self) -> dict[str, np.ndarray]:
        _, world = _dist_world()
        if world > 1 and not self._gathered:
            raise RuntimeError(
                "CocoEvaluator: call gather() on every rank before evaluate()/results() under DDP"
            )
        if self._merged is None:
            self._merged = _dedupe_images(_concat(self._chunks))
        return self._merged

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images seen so far (after gather: on all ranks), each once."""
        return self._arrays()["image_ids"].tolist()

    def results(self) -> list[dict[str, Any]]:
        """The accumulated detections as COCO result entries."""
        return _arrays_to_results(self._arrays())

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
        metrics = evaluate_coco(self._gt(), _arrays_to_results(a), image_ids=a["image_ids"].tolist(),
                                backend=self.backend)
        self.summary = metrics.summary
        return metrics

    def write_results(self, path: str | os.PathLike[str]) -> Path:
        """Write the accumulated detections as a COCO results json, atomically; return the path.
        Local: under DDP call :meth:`gather` first and write on one rank."""
        data = json.dumps(self.results(), separators=(",", ":")).encode()
        try:
            return atomic_write(path, lambda f: f.write(data))
        except OSError as e:
            raise OSError(e.errno, f"could not write COCO results to {path}: {e.strerror or e}") from e
