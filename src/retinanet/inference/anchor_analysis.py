"""Anchor coverage of a dataset under a config (``retinanet analyze anchors``) and the train-start warning.

:func:`training_boxes` takes a dataset's annotation arrays (no image is decoded) to the training input:
each box is scaled as ``ResizeShortestSide`` scales it (``get_output_size`` of the size recorded in the
annotations, ``data.min_size`` / ``data.max_size`` / ``data.resize_rounding``, float32, clipped) for
*every* ``data.min_size`` (training draws them uniformly, so the pooled figures are what training sees
on average), and sits alone on its image padded to ``data.size_divisibility``. Flips and ``data.augment``
ops are not simulated. ``split="val"`` uses ``data.test_min_size``.

:func:`analyze_anchors` returns a JSON-ready report (every figure): with ``fg = model.fg_iou_threshold``
and ``bg = model.bg_iou_threshold``, the share of boxes whose best anchor IoU is >= fg (``fg_coverage``)
and >= bg (``ignore_coverage``), the mean positive anchors per box (IoU >= fg, plus the low-quality
matches), overall, by COCO size (area in training-input pixels: < 32^2, < 96^2, larger), by aspect ratio
``h / w`` and by ``min_size``; the boxes below fg (``unmatched``: file, annotation id, box, best IoU);
and a suggested anchor setting (:func:`suggest_anchors`). Per-box IoU: :mod:`retinanet.ops.anchor_coverage`.
:func:`format_report` is the text; :func:`warn_if_poor_anchor_coverage` the check at the start of training.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from retinanet.config import Config
from retinanet.config.schema import AnchorConfig
from retinanet.data.dataset import DetectionDataset
from retinanet.data.transforms import get_output_size
from retinanet.modeling.preprocess import padded_size
from retinanet.ops.anchor_coverage import anchor_coverage
from retinanet.ops.anchors import AnchorGenerator
from retinanet.utils import distributed

__all__ = [
    "TrainingBoxes",
    "training_boxes",
    "analyze_anchors",
    "analyze_dataset",
    "suggest_anchors",
    "format_report",
    "warn_if_poor_anchor_coverage",
    "MIN_COVERAGE",
]

logger = logging.getLogger("retinanet.train")

#: the train-start warning fires below this share of boxes reaching the foreground IoU
MIN_COVERAGE = 0.9
SIZE_BINS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, math.inf))
RATIO_BINS = (
    ("h/w < 1/3", 0.0, 1 / 3),
    ("h/w 1/3-2/3", 1 / 3, 2 / 3),
    ("h/w 2/3-3/2", 2 / 3, 3 / 2),
    ("h/w 3/2-3", 3 / 2, 3.0),
    ("h/w >= 3", 3.0, math.inf),
)
# the suggestion's search grid: every size times a multiplier, a scale set, a ratio set (+ the data's ratios)
SIZE_MULTIPLIERS = (0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0)
SCALE_SETS = ((1.0,), (1.0, 2**0.5), (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (1.0, 2**0.25, 2**0.5, 2**0.75))
RATIO_SETS = ((1.0,), (0.5, 1.0, 2.0), (1 / 3, 1.0, 3.0))


@dataclass
class TrainingBoxes:
    """Boxes at the training input: ``boxes`` float32 ``[n, 4]``, ``input_sizes`` int64 ``[n, 2]`` (the padded
    ``(Hp, Wp)``), ``min_size`` ``[n]``, ``image`` ``[n]`` (dataset index), ``ann_id`` ``[n]`` (-1: unknown)."""

    boxes: np.ndarray
    input_sizes: np.ndarray
    min_size: np.ndarray
    image: np.ndarray
    ann_id: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def subset(self, idx: np.ndarray) -> "TrainingBoxes":
        return TrainingBoxes(*(a[idx] for a in (self.boxes, self.input_sizes, self.min_size, self.image, self.ann_id)))


def _train_ann_ids(ds: DetectionDataset, counts: np.ndarray) -> np.ndarray:
    """Annotation ids of the training boxes in ``get_annotations`` order (-1 where they cannot be told)."""
    ids, img, crowd = (getattr(ds, k, None) for k in ("_gt_ann_ids", "_gt_image", "_gt_crowd"))
    if ids is not None and img is not None and crowd is not None:
        train = np.ones(len(crowd), bool) if getattr(ds, "use_difficult", False) else ~np.asarray(crowd, bool)
        order = np.argsort(img[train], kind="stable")
        if np.array_equal(np.bincount(img[train], minlength=len(counts)), counts):
            return np.asarray(ids, np.int64)[train][order]
    return np.full(int(counts.sum()), -1, np.int64)


def training_boxes(
    ds: DetectionDataset,
    min_sizes: Sequence[int],
    max_size: Optional[int],
    size_divisibility: int,
    rounding: str = "round",
    images: Optional[Sequence[int]] = None,
) -> TrainingBoxes:
    """The boxes of ``ds`` at every shorter side in ``min_sizes``; ``images``: only these (annotation ids
    are then -1)."""
    idx = np.arange(len(ds)) if images is None else np.asarray(images, np.int64).reshape(-1)
    per = [ds.get_annotations(int(i))[0].reshape(-1, 4) for i in idx.tolist()]
    lens = np.array([len(b) for b in per], np.int64)
    raw = np.concatenate(per) if per else np.zeros((0, 4), np.float32)
    pos = np.repeat(np.arange(len(idx)), lens)  # box -> position in idx
    ann_id = _train_ann_ids(ds, lens) if images is None else np.full(len(raw), -1, np.int64)
    infos = [ds.image_info(int(i)) for i in idx.tolist()]
    hw = np.array([(info.height, info.width) for info in infos], np.int64).reshape(-1, 2)
    parts = []
    for short in min_sizes:
        out = {k: get_output_size(k[0], k[1], int(short), max_size, rounding) for k in set(map(tuple, hw.tolist()))}
        new = np.array([out[k] for k in map(tuple, hw.tolist())], np.int64).reshape(-1, 2)
        pad = np.array(
            [[padded_size(h, size_divisibility), padded_size(w, size_divisibility)] for h, w in new.tolist()]
        )
        nb, ob = new[pos], hw[pos]
        sx, sy = nb[:, 1] / ob[:, 1], nb[:, 0] / ob[:, 0]  # as ResizeShortestSide: float64 factors, float32 boxes
        b = (raw.astype(np.float64) * np.stack([sx, sy, sx, sy], 1)).astype(np.float32)
        b[:, 0::2] = np.clip(b[:, 0::2], 0, nb[:, 1:2].astype(np.float32))
        b[:, 1::2] = np.clip(b[:, 1::2], 0, nb[:, 0:1].astype(np.float32))
        sizes = pad.reshape(-1, 2)[pos].astype(np.int64)
        parts.append(TrainingBoxes(b, sizes, np.full(len(b), int(short), np.int64), idx[pos], ann_id))
    return TrainingBoxes(*(np.concatenate([getattr(p, k) for p in parts]) for k in TrainingBoxes.__dataclass_fields__))


def _generator(a: AnchorConfig, **change: Any) -> AnchorGenerator:
    kw: dict[str, Any] = dict(sizes=a.sizes, strides=a.strides, scales=a.scales, ratios=a.ratios, offset=a.offset)
    kw.update(change)
    return AnchorGenerator(**kw, round_sizes=a.round_sizes, strides_from_input=a.strides_from_input, cache_size=0)


def _coverage(tb: TrainingBoxes, gen: AnchorGenerator, cfg: Config, count: bool = True) -> dict[str, np.ndarray]:
    m = cfg.model
    cov = anchor_coverage(
        torch.from_numpy(tb.boxes),
        torch.from_numpy(tb.input_sizes),
        gen,
        m.fg_iou_threshold,
        m.allow_low_quality_matches,
        count=count,
    )
    return {"best": cov.best_iou.numpy(), "fg": cov.num_fg.numpy(), "pos": cov.num_positive.numpy()}


def _summary(c: dict[str, np.ndarray], cfg: Config, mask: Optional[np.ndarray] = None) -> dict[str, Any]:
    best, fg, pos = (c[k] if mask is None else c[k][mask] for k in ("best", "fg", "pos"))
    n = len(best)
    f = lambda x: float(np.mean(x)) if n else 0.0  # noqa: E731
    return {
        "boxes": n,
        "fg_coverage": f(best >= np.float32(cfg.model.fg_iou_threshold)),
        "ignore_coverage": f(best >= np.float32(cfg.model.bg_iou_threshold)),
        "mean_positives": f(pos),
        "mean_anchors_above_fg": f(fg),
        "mean_best_iou": f(best),
    }


def analyze_dataset(tb: TrainingBoxes, cfg: Config, gen: Optional[AnchorGenerator] = None) -> dict[str, Any]:
    """Coverage figures of ``tb`` under ``cfg.model`` (anchors ``gen``, default the config's), plus the
    per-box arrays under ``"_per_box"``."""
    c = _coverage(tb, gen or _generator(cfg.model.anchors), cfg)
    w = tb.boxes[:, 2].astype(np.float64) - tb.boxes[:, 0]
    h = tb.boxes[:, 3].astype(np.float64) - tb.boxes[:, 1]
    area, ratio = w * h, h / np.maximum(w, 1e-12)
    return {
        "overall": _summary(c, cfg),
        "by_size": {k: _summary(c, cfg, (area >= lo) & (area < hi)) for k, lo, hi in SIZE_BINS},
        "by_aspect_ratio": {k: _summary(c, cfg, (ratio >= lo) & (ratio < hi)) for k, lo, hi in RATIO_BINS},
        "by_min_size": {str(s): _summary(c, cfg, tb.min_size == s) for s in np.unique(tb.min_size).tolist()},
        "_per_box": c,
    }


def suggest_anchors(tb: TrainingBoxes, cfg: Config, max_boxes: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The anchor setting of the search grid with the highest fg coverage on (a sample of ``max_boxes`` of)
    ``tb``: sizes (the config's times ``SIZE_MULTIPLIERS``) x ``SCALE_SETS`` x ``RATIO_SETS`` and the data's
    15/50/85 % aspect-ratio quantiles, plus the current setting; strides kept. Of the candidates within 0.1
    point of the best coverage, the one with the most positive anchors per box wins (all measured on the
    sample); the winner is then measured on all of ``tb``. ``overrides`` are the ``retinanet train`` arguments."""
    a = cfg.model.anchors
    rng = np.random.default_rng(seed)
    sample = tb.subset(np.sort(rng.choice(len(tb), max_boxes, replace=False))) if len(tb) > max_boxes else tb
    ratio_sets = list(RATIO_SETS)
    if len(sample):
        r = (sample.boxes[:, 3] - sample.boxes[:, 1]) / np.maximum(sample.boxes[:, 2] - sample.boxes[:, 0], 1e-6)
        q = (
            tuple(sorted({round(float(v), 2) for v in np.quantile(r[r > 0], [0.15, 0.5, 0.85])}))
            if (r > 0).any()
            else ()
        )
        if q and q not in ratio_sets:
            ratio_sets.append(q)
    grid: list[tuple[float, tuple[float, ...], tuple[float, ...]]]
    grid = [(mult, sc, ra) for mult in SIZE_MULTIPLIERS for sc in SCALE_SETS for ra in ratio_sets]
    if (1.0, tuple(a.scales), tuple(a.ratios)) not in grid:  # the current setting competes too
        grid.append((1.0, tuple(a.scales), tuple(a.ratios)))
    scored = []
    for mult, sc, ra in grid:
        gen = _generator(a, sizes=tuple(round(s * mult, 2) for s in a.sizes), scales=sc, ratios=ra)
        best = _coverage(sample, gen, cfg, count=False)["best"]
        scored.append(
            (float(np.mean(best >= np.float32(cfg.model.fg_iou_threshold))) if len(best) else 0.0, mult, sc, ra)
        )
    top = max(s[0] for s in scored)
    finalists = [s for s in scored if s[0] >= top - 1e-3]
    ranked = []
    for _, mult, sc, ra in finalists:
        gen = _generator(a, sizes=tuple(round(s * mult, 2) for s in a.sizes), scales=sc, ratios=ra)
        ranked.append((float(np.mean(_coverage(sample, gen, cfg)["pos"])) if len(sample) else 0.0, mult, sc, ra))
    _, mult, sc, ra = max(ranked, key=lambda t: t[0])  # the first of equals: the grid's order
    sizes = [round(s * mult, 2) for s in a.sizes]
    full = analyze_dataset(tb, cfg, _generator(a, sizes=tuple(sizes), scales=sc, ratios=ra))
    full.pop("_per_box")
    scales, ratios = [round(v, 4) for v in sc], [round(v, 4) for v in ra]
    return {
        "anchors": {"sizes": sizes, "scales": scales, "ratios": ratios, "size_multiplier": mult},
        "overrides": [f"model.anchors.{k}={v}" for k, v in (("sizes", sizes), ("scales", scales), ("ratios", ratios))],
        "candidates_searched": len(grid),
        "search_sample_boxes": len(sample),
        **full,
    }


def analyze_anchors(
    cfg: Config,
    split: str = "train",
    max_boxes: int = 250_000,
    suggest: bool = True,
    seed: int = 0,
    dataset: Optional[DetectionDataset] = None,
) -> dict[str, Any]:
    """The whole report for the ``split`` set of ``cfg`` (see the module docstring). More than ``max_boxes``
    box evaluations (boxes x min sizes): a seeded sample of that many (0: all)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    if dataset is None:
        from retinanet.data.build import build_dataset

        dataset = build_dataset(cfg, train=split == "train")
    d, m = cfg.data, cfg.model
    min_sizes = list(d.min_size) if split == "train" else [d.test_min_size]
    tb = training_boxes(dataset, min_sizes, d.max_size, d.size_divisibility, d.resize_rounding)
    total = len(tb)
    if max_boxes and total > max_boxes:
        tb = tb.subset(np.sort(np.random.default_rng(seed).choice(total, max_boxes, replace=False)))
    res = analyze_dataset(tb, cfg)
    c = res.pop("_per_box")
    fg = np.float32(m.fg_iou_threshold)
    bad = np.flatnonzero(c["best"] < fg)
    bad = bad[np.argsort(c["best"][bad], kind="stable")]
    unmatched = []
    for j in bad.tolist():
        info = dataset.image_info(int(tb.image[j]))
        x1, y1, x2, y2 = (round(float(v), 2) for v in tb.boxes[j])
        unmatched.append(
            {
                "file_name": info.file_name,
                "image_id": info.image_id,
                "annotation_id": int(tb.ann_id[j]),
                "min_size": int(tb.min_size[j]),
                "box": [x1, y1, x2, y2],
                "width": round(x2 - x1, 2),
                "height": round(y2 - y1, 2),
                "best_iou": round(float(c["best"][j]), 4),
            }
        )
    report: dict[str, Any] = {
        "split": split,
        "images": len(dataset),
        "boxes": total // max(len(min_sizes), 1),
        "box_evaluations": total,
        "sampled": len(tb) < total,
        "min_sizes": min_sizes,
        "max_size": d.max_size,
        "size_divisibility": d.size_divisibility,
        "augment_not_simulated": [op.get("name") for op in d.augment] if split == "train" else [],
        "anchors": dataclasses.asdict(m.anchors),
        "fg_iou_threshold": m.fg_iou_threshold,
        "bg_iou_threshold": m.bg_iou_threshold,
        "allow_low_quality_matches": m.allow_low_quality_matches,
        **res,
        "num_unmatched": len(unmatched),
        "unmatched": unmatched,
    }
    if suggest:
        report["suggestion"] = suggest_anchors(tb, cfg, seed=seed)
    return report


def _row(name: str, s: dict[str, Any]) -> str:
    return (
        f"  {name:14s} {s['boxes']:8d}   {100 * s['fg_coverage']:6.1f}%   {100 * s['ignore_coverage']:6.1f}%"
        f"   {s['mean_positives']:8.2f}   {s['mean_best_iou']:6.3f}"
    )


def format_report(r: dict[str, Any], max_listed: int = 20) -> str:
    """The report as text: the coverage table, the unmatched boxes (at most ``max_listed``), the suggestion."""
    fg, bg, a = r["fg_iou_threshold"], r["bg_iou_threshold"], r["anchors"]
    lines = [
        f"anchor coverage of the {r['split']} set: {r['images']} images, {r['boxes']} boxes x "
        f"{len(r['min_sizes'])} min sizes" + (f" (a sample of {r['overall']['boxes']})" if r["sampled"] else ""),
        f"  input: shorter side {r['min_sizes']} (each), longer side <= {r['max_size']}, padded to multiples of "
        f"{r['size_divisibility']}; anchors: sizes {list(a['sizes'])}, scales {[round(v, 3) for v in a['scales']]}, "
        f"ratios (h/w) {[round(v, 3) for v in a['ratios']]}, strides {list(a['strides'])}",
    ]
    if r["augment_not_simulated"]:
        lines.append(f"  (data.augment ops not simulated: {r['augment_not_simulated']})")
    lines.append(f"  {'':14s} {'boxes':>8s}   {'IoU>=' + str(fg):>7s}   {'IoU>=' + str(bg):>7s}   positives   best IoU")
    lines.append(_row("all", r["overall"]))
    tables = [r["by_size"], r["by_aspect_ratio"]] + ([r["by_min_size"]] if len(r["by_min_size"]) > 1 else [])
    for g in tables:
        lines.extend(_row(k if g is not r["by_min_size"] else f"min_size {k}", s) for k, s in g.items() if s["boxes"])
    n = r["num_unmatched"]
    if n:
        lq = (
            "allow_low_quality_matches still makes its best anchor(s) positive, at that low IoU"
            if r["allow_low_quality_matches"]
            else "with allow_low_quality_matches off it gets no positive anchor at all"
        )
        groups: dict[Any, list[dict[str, Any]]] = {}
        for k, u in enumerate(r["unmatched"]):  # one line per annotation, at its lowest IoU
            key = (u["file_name"], u["annotation_id"]) if u["annotation_id"] >= 0 else k
            groups.setdefault(key, []).append(u)
        per = len(r["min_sizes"])
        lines.append(
            f"{n} of {r['overall']['boxes']} boxes x min sizes ({100 * n / max(r['overall']['boxes'], 1):.1f}%; "
            f"{len(groups)} annotations) reach no anchor at IoU >= {fg}; for each, {lq}"
        )
        more = f" (first {max_listed} of {len(groups)}; all in --json)" if len(groups) > max_listed else ""
        lines.append(f"  lowest best IoU first{more}:")
        for us in list(groups.values())[:max_listed]:
            u = us[0]
            at = f" (below at {len(us)} of {per} min sizes)" if per > 1 else ""
            lines.append(
                f"    {u['file_name']}  annotation {u['annotation_id']}: {u['width']:g}x{u['height']:g} px at "
                f"min_size {u['min_size']}, best IoU {u['best_iou']:.3f}{at}"
            )
    s = r.get("suggestion")
    if s:
        now, new = r["overall"], s["overall"]
        lines.append(
            f"suggested anchors (best of {s['candidates_searched']} settings): {' '.join(s['overrides'])}\n"
            f"  IoU>={fg}: {100 * new['fg_coverage']:.1f}% of boxes (now {100 * now['fg_coverage']:.1f}%), "
            f"positives per box {new['mean_positives']:.2f} (now {now['mean_positives']:.2f})"
            + (
                "; the current anchors are within 1 point: keep them"
                if new["fg_coverage"] - now["fg_coverage"] < 0.01
                else ""
            )
        )
    return "\n".join(lines)


def warn_if_poor_anchor_coverage(
    dataset: DetectionDataset, cfg: Config, min_coverage: float = MIN_COVERAGE, max_boxes: int = 3000, seed: int = 0
) -> Optional[dict[str, Any]]:
    """On the main process: measure the coverage of (a seeded sample of at most ``max_boxes`` boxes of)
    ``dataset`` and log a WARNING on ``retinanet.train`` with the summary when fewer than ``min_coverage``
    of the boxes reach ``model.fg_iou_threshold``. Returns the figures (None elsewhere or without boxes);
    never raises (a failed check is logged)."""
    if not distributed.is_main():
        return None
    try:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(dataset))[: max(1, max_boxes)]  # at least one box per picked image, mostly
        d = cfg.data
        tb = training_boxes(
            dataset, list(d.min_size), d.max_size, d.size_divisibility, d.resize_rounding, order.tolist()
        )
        if len(tb) == 0:
            return None
        if len(tb) > max_boxes:
            tb = tb.subset(np.sort(rng.choice(len(tb), max_boxes, replace=False)))
        res = analyze_dataset(tb, cfg)
        res.pop("_per_box")
    except Exception as e:  # a diagnostic must not stop training
        logger.warning("anchor coverage check failed: %s: %s", type(e).__name__, e)
        return None
    s = res["overall"]
    if s["fg_coverage"] < min_coverage:
        small = {k: f"{100 * v['fg_coverage']:.0f}%" for k, v in res["by_size"].items() if v["boxes"]}
        logger.warning(
            "poor anchor coverage: only %.1f%% of %d sampled training boxes reach IoU >= %s with any anchor "
            "(%.1f%% reach %s; by size %s; %.2f positive anchors per box): the model can hardly learn the others. "
            "Run `retinanet analyze anchors CONFIG` for the unmatched boxes and a better model.anchors setting.",
            100 * s["fg_coverage"],
            s["boxes"],
            cfg.model.fg_iou_threshold,
            100 * s["ignore_coverage"],
            cfg.model.bg_iou_threshold,
            small,
            s["mean_positives"],
        )
    return res
