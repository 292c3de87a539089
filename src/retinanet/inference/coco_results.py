"""Detections -> COCO result entries, through flat per-batch arrays.

Per-image detection dicts (``boxes`` ``[n, 4]`` ``(x1, y1, x2, y2)`` in original image pixels,
``scores`` ``[n]``, ``labels`` ``[n]`` contiguous ``0..K-1``; tensors on any device or arrays) become
one dict of arrays for a batch (:func:`detections_to_arrays`):

- ``image_ids`` int64 ``[I]`` and ``counts`` int64 ``[I]`` (detections per image);
- ``bbox`` float64 ``[N, 4]`` ``(x, y, w, h)``, ``score`` float64 ``[N]``, ``category_id`` int64 ``[N]``.

The arithmetic is done on whole arrays, once; :func:`concat_arrays` and :func:`dedupe_images` merge
batches and ranks, and :func:`arrays_to_results` writes the COCO entries ``{"image_id",
"category_id", "bbox": [x, y, w, h], "score"}``. :func:`detections_to_coco_results` does it all
for one list of detections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "category_lut",
    "detections_to_arrays",
    "concat_arrays",
    "dedupe_images",
    "arrays_to_results",
    "detections_to_coco_results",
]


def _as_numpy(x: Any, dtype: Any, where: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        return x.numpy().astype(dtype, copy=False) if x.dtype != torch.bfloat16 else x.float().numpy().astype(dtype)
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where} must be a tensor or array of numbers, got {type(x).__name__}") from e


def category_lut(label_to_category_id: Mapping[int, int] | Sequence[int] | torch.Tensor | np.ndarray) -> np.ndarray:
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


def detections_to_arrays(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    lut: np.ndarray,
    box_decimals: int | None,
    score_decimals: int | None,
) -> dict[str, np.ndarray]:
    """Flatten per-image detections into arrays.

    Returns ``image_ids`` int64 ``[I]``, ``counts`` int64 ``[I]`` (detections per image),
    ``bbox`` float64 ``[N, 4]`` (x, y, w, h), ``score`` float64 ``[N]``, ``category_id`` int64 ``[N]``.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"got {len(detections)} detection dicts but {len(image_ids)} image ids; need one per image")
    ids = np.asarray([int(i) for i in image_ids], dtype=np.int64)
    boxes, scores, labels, counts = [], [], [], []
    for i, det in enumerate(detections):
        if not isinstance(det, Mapping) or not {"boxes", "scores", "labels"} <= set(det):
            raise TypeError(f"detections[{i}] (image_id {int(ids[i])}) must be a dict with boxes, scores and labels")
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

    xywh = np.empty_like(xyxy)
    xywh[:, :2] = xyxy[:, :2]
    xywh[:, 2:] = xyxy[:, 2:] - xyxy[:, :2]
    if box_decimals is not None:
        xywh = np.round(xywh, box_decimals)
    if score_decimals is not None:
        score = np.round(score, score_decimals)
    return {"image_ids": ids, "counts": counts_arr, "bbox": xywh, "score": score, "category_id": cat.astype(np.int64)}


def arrays_to_results(a: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """COCO result entries ``{"image_id", "category_id", "bbox", "score"}`` of an arrays dict."""
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
    arrays = detections_to_arrays(
        detections, image_ids, category_lut(label_to_category_id), box_decimals, score_decimals
    )
    return arrays_to_results(arrays)


def concat_arrays(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One arrays dict of several (batches or ranks) in order; empty arrays for no chunks."""
    if not chunks:
        return {
            "image_ids": np.zeros(0, np.int64),
            "counts": np.zeros(0, np.int64),
            "bbox": np.zeros((0, 4)),
            "score": np.zeros(0),
            "category_id": np.zeros(0, np.int64),
        }
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def dedupe_images(a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep the first occurrence of every image id (samplers pad ranks by repeating images)."""
    ids = a["image_ids"]
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(ids):
        return a
    keep_img = np.zeros(len(ids), dtype=bool)
    keep_img[first] = True
    keep_det = np.repeat(keep_img, a["counts"])
    return {
        "image_ids": ids[keep_img],
        "counts": a["counts"][keep_img],
        "bbox": a["bbox"][keep_det],
        "score": a["score"][keep_det],
        "category_id": a["category_id"][keep_det],
    }
