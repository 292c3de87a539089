"""Start training from a whole trained detector (``model.weights``): load what fits, keep classes by name.

:func:`load_detector_weights` ``(model, path, class_names, prior) -> FinetuneReport`` reads ``path`` with
:func:`retinanet.utils.serialization.load_file` (never runs pickled code). The file is one of

- a checkpoint of ours (a dict with ``"model"`` and ``"config"``; ``"class_names"`` when trained with
  ``model.label_space="dataset"``; its ``"ema"`` weights when it was trained with ``solver.ema``),
- torchvision's RetinaNet state dict, bare or as ``{"model": state}``, current or old key layout
  (:func:`retinanet.modeling.state_dict.canonical_state_dict` renames the keys).

Every tensor whose name and shape fit the model is loaded. Others are skipped and reported (a
different FPN width, head depth, ...), not an error, unless no backbone tensor fits at all (the wrong
file), or the file has no detector tensors (an ImageNet backbone file belongs in
``model.backbone.weights``): :class:`DetectorWeightsError` naming the file.

The classification output ``head.classification_head.cls_logits`` (weight ``[A*K, C, 3, 3]``, bias
``[A*K]``, channel ``a*K + k`` = anchor ``a``, class ``k``, see :mod:`retinanet.modeling.head`) is loaded
as it is when the source has the same ``K`` and the same class names (or no names). Otherwise (another
``K``, or the same ``K`` with other names) it is re-initialized as the head initializes it (prior
probability bias) and, for every target class whose name is a source class name (exact after strip,
case-insensitive), the source rows of that class are copied for every anchor. Source names: the
stored ``class_names`` of our ``"dataset"`` checkpoints; COCO names by category id
(:func:`retinanet.data.categories.label_table`) for ``"coco_category_ids"`` checkpoints and for files
without our config that have 91 classes (torchvision's COCO detectors); other files have none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from retinanet.data.categories import UNUSED_NAME, label_table
from retinanet.modeling.head import init_cls_logits
from retinanet.modeling.state_dict import canonical_state_dict, describe_state
from retinanet.modeling.weights import WeightsError
from retinanet.utils.serialization import load_file

__all__ = ["CLS_WEIGHT", "CLS_BIAS", "DetectorWeightsError", "FinetuneReport", "load_detector_weights"]

log = logging.getLogger("retinanet.model")

CLS_WEIGHT = "head.classification_head.cls_logits.weight"
CLS_BIAS = "head.classification_head.cls_logits.bias"
_SHOW = 10  # keys listed per log line


class DetectorWeightsError(WeightsError):
    """``model.weights`` names a file that is not a detector, or one nothing of whose backbone fits."""


@dataclass(frozen=True)
class FinetuneReport:
    """What :func:`load_detector_weights` did.

    ``loaded``: model keys set from the file as they are. ``reinitialized``: keys set to a fresh
    initialization (the classification output). ``copied``: ``(class name, source index, target
    index)`` per target class whose classification rows come from the source. ``skipped``: ``(key,
    file shape, model shape)`` of tensors whose shape differs. ``missing``: model keys the file lacks
    (kept as initialized); ``unexpected``: file keys the model lacks (ignored).
    """

    path: str
    source: str  # "checkpoint" (ours) | "state_dict"
    source_label_space: Optional[str]  # "dataset" | "coco_category_ids" | None (unknown)
    source_num_classes: Optional[int]
    loaded: tuple[str, ...]
    reinitialized: tuple[str, ...]
    copied: tuple[tuple[str, int, int], ...]
    skipped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def _norm(name: str) -> str:
    return str(name).strip().casefold()


def _listed(keys: Sequence[str]) -> str:
    more = f", ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _source_names(
    raw: Mapping[str, Any], k_src: Optional[int], path: Path
) -> tuple[str, Optional[str], Optional[list[str]]]:
    """``(source kind, label space, class names or None)`` of the file's detector."""
    cfg = raw.get("config")
    if isinstance(raw.get("model"), Mapping) and isinstance(cfg, Mapping):
        space = str((cfg.get("model") or {}).get("label_space", "dataset"))
        stored = raw.get("class_names") or None
        if k_src is None or (space == "dataset" and not stored):
            return "checkpoint", space, None
        ids = raw.get("label_to_category_id") or None
        return "checkpoint", space, label_table(space, k_src, stored, ids, source=str(path))[0]
    if k_src == 91:  # torchvision's COCO detectors: output i is COCO category id i
        return "state_dict", "coco_category_ids", label_table("coco_category_ids", 91)[0]
    return "state_dict", None, None


def _check_source_statistics(raw: Mapping[str, Any], model: nn.Module) -> None:
    """Warn when our checkpoint was trained with other input statistics than ``model`` normalizes with."""
    cfg = raw.get("config")
    m = cfg.get("model") if isinstance(cfg, Mapping) else None
    if not isinstance(m, Mapping):
        return
    for name in ("pixel_mean", "pixel_std"):
        mine, theirs = getattr(model, name, None), m.get(name)
        if isinstance(mine, Tensor) and theirs is not None:
            t = torch.tensor([float(v) for v in theirs])
            if t.numel() == mine.numel() and not torch.allclose(t, mine.detach().cpu().flatten()):
                log.warning(
                    "model.weights: the source was trained with model.%s=%s, this model uses %s",
                    name,
                    [float(v) for v in theirs],
                    [round(float(v), 6) for v in mine.flatten()],
                )


def load_detector_weights(
    model: nn.Module,
    path: Union[str, os.PathLike],
    class_names: Optional[Sequence[str]] = None,
    prior: float = 0.01,
) -> FinetuneReport:
    """Load the detector file ``path`` into ``model`` (a :class:`~retinanet.modeling.retinanet.RetinaNet`)
    for fine-tuning on the classes ``class_names`` (``model``'s output order; see the module
    docstring). ``prior`` is the foreground prior of the re-initialized classification bias."""
    path = Path(path)
    raw = load_file(path, kind="model.weights file")
    own = model.state_dict()
    weights = raw
    if isinstance(raw.get("ema"), Mapping) and ((raw.get("config") or {}).get("solver") or {}).get("ema"):
        weights = {"model": raw["ema"]}  # a checkpoint trained with solver.ema: its EMA weights, as predict uses
        log.info("model.weights=%s: using its EMA weights (solver.ema)", path)
    sd = {k: v for k, v in canonical_state_dict(weights, set(own)).items() if isinstance(v, Tensor)}
    if not any(k.startswith("head.") for k in sd):
        shown = _listed(sorted(sd)) or "no tensors"
        raise DetectorWeightsError(
            f"model.weights={path} is not a detector file: it has no head.* tensors (it has {shown}). "
            f"For an ImageNet / backbone weights file use model.backbone.weights={path}"
        )
    head = model.get_submodule("head.classification_head")
    k_dst, anchors = int(getattr(head, "num_classes")), int(getattr(head, "num_anchors"))
    if class_names is not None and len(class_names) != k_dst:
        raise ValueError(f"load_detector_weights: {len(class_names)} class names for a model with {k_dst} classes")
    k_src = describe_state(sd).get("num_classes")
    kind, space, src_names = _source_names(raw, k_src, path)
    _check_source_statistics(raw, model)

    fits = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    skipped = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in sd.items() if k in own and k not in fits]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if not any(k.startswith("backbone.body.") for k in fits):
        found = describe_state(sd)
        saved = ", ".join(f"model.{k}={v}" for k, v in found.items()) or "an unknown architecture"
        raise DetectorWeightsError(
            f"model.weights={path}: none of its backbone tensors fit this model (model.backbone.name="
            f"{getattr(model.get_submodule('backbone.body'), 'name', '?')}); the file was saved from {saved}. "
            "Wrong file, or set the model.* values of the detector it holds"
        )

    same_names = (
        src_names is None or class_names is None or [_norm(n) for n in src_names] == list(map(_norm, class_names))
    )
    as_is = CLS_WEIGHT in fits and CLS_BIAS in fits and k_src == k_dst and same_names
    reinitialized: tuple[str, ...] = ()
    copied: list[tuple[str, int, int]] = []
    if not as_is:
        fits.pop(CLS_WEIGHT, None)
        fits.pop(CLS_BIAS, None)
        skipped = [s for s in skipped if s[0] not in (CLS_WEIGHT, CLS_BIAS)]
    model.load_state_dict(fits, strict=False)
    if not as_is:
        reinitialized = (CLS_WEIGHT, CLS_BIAS)
        copied = _reinit_and_copy(head, sd, k_src, anchors, prior, src_names, class_names)

    report = FinetuneReport(
        path=str(path),
        source=kind,
        source_label_space=space,
        source_num_classes=k_src,
        loaded=tuple(fits),
        reinitialized=reinitialized,
        copied=tuple(copied),
        skipped=tuple(skipped),
        missing=tuple(k for k in missing if k not in reinitialized),
        unexpected=tuple(unexpected),
    )
    _log_report(report, k_dst, class_names, src_names, prior)
    return report


def _reinit_and_copy(
    head: nn.Module,
    sd: Mapping[str, Tensor],
    k_src: Optional[int],
    anchors: int,
    prior: float,
    src_names: Optional[Sequence[str]],
    class_names: Optional[Sequence[str]],
) -> list[tuple[str, int, int]]:
    """Re-initialize ``head.cls_logits`` (the head's own init) and copy the rows of classes found by name."""
    conv = head.get_submodule("cls_logits")
    assert isinstance(conv, nn.Conv2d) and conv.bias is not None
    k_dst = conv.out_channels // anchors
    fresh = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
    init_cls_logits(fresh, prior)
    assert fresh.bias is not None
    w_src, b_src = sd.get(CLS_WEIGHT), sd.get(CLS_BIAS)
    copied: list[tuple[str, int, int]] = []
    rows_fit = (
        k_src is not None
        and w_src is not None
        and b_src is not None
        and tuple(w_src.shape) == (anchors * k_src, *conv.weight.shape[1:])
        and tuple(b_src.shape) == (anchors * k_src,)
    )
    if not rows_fit and w_src is not None and src_names is not None and class_names is not None:
        log.warning(
            "model.weights: the source %s has shape %s, not [%d * K, %d, 3, 3]: no classification rows copied",
            CLS_WEIGHT,
            list(w_src.shape),
            anchors,
            conv.in_channels,
        )
    if rows_fit and src_names is not None and class_names is not None:
        index: dict[str, int] = {}
        for i, n in enumerate(src_names):
            if n != UNUSED_NAME:
                index.setdefault(_norm(n), i)
        copied = [(str(n), index[_norm(n)], j) for j, n in enumerate(class_names) if _norm(n) in index]
    with torch.no_grad():
        weight = fresh.weight.detach().clone()
        bias = fresh.bias.detach().clone()
        if copied:
            assert w_src is not None and b_src is not None and k_src is not None
            src = torch.tensor([a * k_src + i for a in range(anchors) for _, i, _ in copied])
            dst = torch.tensor([a * k_dst + j for a in range(anchors) for _, _, j in copied])
            weight[dst] = w_src[src].to(weight.dtype)
            bias[dst] = b_src[src].to(bias.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return copied


def _log_report(
    r: FinetuneReport,
    k_dst: int,
    class_names: Optional[Sequence[str]],
    src_names: Optional[Sequence[str]],
    prior: float,
) -> None:
    space = r.source_label_space or "unknown label space"
    log.info(
        "model.weights: loaded %d tensors from %s (%s, %s classes, %s)",
        len(r.loaded),
        r.path,
        "our checkpoint" if r.source == "checkpoint" else "state dict",
        r.source_num_classes if r.source_num_classes is not None else "?",
        space,
    )
    if r.reinitialized:
        why = (
            f"{r.source_num_classes} source classes, {k_dst} here"
            if r.source_num_classes != k_dst
            else "same class count, other class names"
        )
        log.info("model.weights: re-initialized %s (prior %g; %s)", ", ".join(r.reinitialized), prior, why)
        if r.copied:
            log.info(
                "model.weights: copied classification rows by class name (source index -> class): %s",
                ", ".join(f"{n} ({i} -> {j})" for n, i, j in r.copied),
            )
        new = [n for j, n in enumerate(class_names or []) if j not in {c[2] for c in r.copied}]
        if src_names is None:
            log.info("model.weights: the source has no class names: every class starts from the prior")
        elif class_names is None:
            log.info("model.weights: no class names given for this model: every class starts from the prior")
        elif new:
            log.info("model.weights: classes that start from the prior (no source rows): %s", _listed(new))
    else:
        log.info("model.weights: classification layer loaded as it is (same %d classes)", k_dst)
    if r.skipped:
        log.warning(
            "model.weights: skipped %d tensors whose shape differs (file vs model): %s",
            len(r.skipped),
            _listed([f"{k} {list(a)} vs {list(b)}" for k, a, b in r.skipped]),
        )
    if r.missing:
        log.warning(
            "model.weights: %d model tensors not in the file (kept as initialized): %s",
            len(r.missing),
            _listed(list(r.missing)),
        )
    if r.unexpected:
        log.warning(
            "model.weights: %d file tensors this model does not have (ignored): %s",
            len(r.unexpected),
            _listed(list(r.unexpected)),
        )
