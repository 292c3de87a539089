"""Loading a saved detector state dict into a model, with one readable message for a wrong architecture.

:func:`canonical_state_dict` ``(state, model_keys) -> {name: tensor}`` brings every layout we accept to
the model's key names: a bare ``{name: tensor}`` dict or a checkpoint dict with a ``"model"`` entry
(ours, and torchvision's reference scripts); the ``module.`` (DistributedDataParallel / DataParallel)
and ``_orig_mod.`` (``torch.compile``) prefixes; torchvision's old RetinaNet layout (the published v1
COCO file: FPN ``inner_blocks.{i}.weight`` for ``inner_blocks.{i}.0.weight``, head ``conv.{2i}.weight``
for ``conv.{i}.0.weight``, renamed as torchvision renames them on load); and BatchNorm
``num_batches_tracked`` counters, dropped where the model has frozen BatchNorm (no counter).

:func:`load_model_state` ``(model, state_dict, strict=True) -> LoadReport`` compares names and shapes
with ``model`` before loading anything. A mismatch names the first keys that differ and, from the
shapes in the file (:func:`describe_state`), the packaged preset whose architecture fits it.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from retinanet.utils.serialization import CheckpointError

__all__ = [
    "LoadReport",
    "StateDictMismatchError",
    "canonical_state_dict",
    "describe_state",
    "matching_presets",
    "load_model_state",
]

logger = logging.getLogger(__name__)

_MAX_LISTED = 10


class StateDictMismatchError(CheckpointError):
    """The state dict does not fit the model (missing / unexpected keys, shape mismatches)."""


@dataclass
class LoadReport:
    """What :func:`load_model_state` did not load (empty lists after a strict load)."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def _listed(keys: list[str]) -> str:
    """Up to 10 keys in full; more are grouped by the deepest module prefix that gives at most 10
    groups, so that every difference is named: ``backbone.body.layer3.4.* (10), head.x.conv.1.* (2)``."""
    if len(keys) <= _MAX_LISTED:
        return ", ".join(keys)
    parts = [k.split(".") for k in keys]
    best: "OrderedDict[str, list[str]] | None" = None
    for depth in range(1, max(len(p) for p in parts)):
        groups: OrderedDict[str, list[str]] = OrderedDict()
        for k, p in zip(keys, parts):
            groups.setdefault(".".join(p[:depth]) if len(p) > depth else k, []).append(k)
        if len(groups) > _MAX_LISTED:
            break
        best = groups
    if best is None:
        return ", ".join(keys[:_MAX_LISTED]) + f" ... (+{len(keys) - _MAX_LISTED} more)"
    return ", ".join(f"{prefix}.* ({len(v)})" if len(v) > 1 else v[0] for prefix, v in best.items())


def _strip_prefix(state: dict[str, Any], model_keys: set[str], prefix: str) -> dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in model_keys):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


# torchvision's old layout (FPN and head before its v2 of these modules) -> the current one
_OLD_LAYOUT = (
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), lambda m: f"{m[1]}.0.{m[2]}"),
    (
        re.compile(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$"),
        lambda m: f"{m[1]}.{int(m[2]) // 2}.0.{m[3]}" if int(m[2]) % 2 == 0 else m[0],
    ),
)


def _new_layout_key(key: str) -> str:
    """``key`` renamed from torchvision's old RetinaNet layout to the current one (else unchanged)."""
    for pattern, rename in _OLD_LAYOUT:
        m = pattern.match(key)
        if m:
            return rename(m)
    return key


def canonical_state_dict(state: Mapping[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """``state`` (see the module docstring for the layouts) with the key names of a model whose
    state-dict keys are ``model_keys``. Keys that fit no rule are kept as they are."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state).__name__}")
    sd = dict(state)
    if "model" in sd and isinstance(sd["model"], Mapping) and not isinstance(sd["model"], torch.Tensor):
        sd = dict(sd["model"])
    for prefix in ("module.", "_orig_mod."):
        sd = _strip_prefix(sd, model_keys, prefix)
    out: dict[str, Any] = {}
    for k, v in sd.items():
        if k not in model_keys:
            k = _new_layout_key(k) if _new_layout_key(k) in model_keys else k
            if k.endswith(".num_batches_tracked"):
                continue  # a BatchNorm counter the model's frozen BatchNorm does not keep
        out[k] = v
    return out


def describe_state(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture a detector state dict (our / torchvision's current key names) was saved from,
    read from its shapes: the ``model.*`` config values it needs (only those it shows)."""
    sd = {_new_layout_key(k): v for k, v in sd.items()}

    def shape(key: str) -> Optional[tuple[int, ...]]:
        v = sd.get(key)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    out: dict[str, Any] = {}
    reg, cls = shape("head.regression_head.bbox_reg.weight"), shape("head.classification_head.cls_logits.weight")
    if reg and cls and reg[0] % 4 == 0 and cls[0] % (reg[0] // 4) == 0:
        out["num_classes"] = cls[0] // (reg[0] // 4)
    if cls:
        out["fpn_channels"] = cls[1]
    convs = {int(m[1]) for k in sd for m in [re.match(r"head\.classification_head\.conv\.(\d+)\.", k)] if m}
    if convs:
        out["head_convs"] = max(convs) + 1
        out["head_norm"] = "GN" if "head.classification_head.conv.0.1.weight" in sd else None
    p6 = shape("backbone.fpn.extra_blocks.p6.weight")
    if p6 and cls:
        out["p6_from"] = "P5" if p6[1] == cls[1] else "C5"
    blocks = [sum(1 for k in sd if re.match(rf"backbone\.body\.layer{i}\.\d+\.conv1\.weight$", k)) for i in range(1, 5)]
    bottleneck = "backbone.body.layer1.0.conv3.weight" in sd
    names = {"2222F": "resnet18", "3463F": "resnet34", "3463T": "resnet50", "34233T": "resnet101"}
    names["38363T"] = "resnet152"
    key = "".join(map(str, blocks)) + "FT"[bottleneck]
    if key in names:
        name = names[key]
        if name == "resnet101" and shape("backbone.body.layer1.0.conv2.weight") == (256, 8, 3, 3):
            name = "resnext101_32x8d"
        out["backbone.name"] = name
    elif any(k.startswith("backbone.body.features.") for k in sd):
        out["backbone.name"] = "mobilenet_v2"
    return out


def matching_presets(found: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The packaged presets whose model fits ``found`` (:func:`describe_state`): ``(exact, all but
    the class count)``."""
    from retinanet.config import ConfigError, load_config
    from retinanet.config.loader import list_presets

    exact, arch = [], []
    for name in list_presets():
        try:
            m = load_config(name).model
        except ConfigError:
            continue
        have = {"backbone.name": m.backbone.name, "num_classes": m.num_classes, "fpn_channels": m.fpn_channels}
        have.update({"head_convs": m.head_convs, "head_norm": m.head_norm, "p6_from": m.p6_from})
        differ = [k for k, v in found.items() if have.get(k) != v]
        if not differ:
            exact.append(name)
        elif differ == ["num_classes"]:
            arch.append(name)
    return exact, arch


def _fitting_presets(found: dict[str, Any]) -> str:
    """`` This file fits the preset X.`` (or what the file was saved from) for an error message."""
    exact, arch = matching_presets(found)
    if exact:
        return f" This file fits the preset {' or '.join(exact)}."
    if arch:
        return f" This file fits the preset {' or '.join(arch)} with model.num_classes={found['num_classes']}."
    shown = ", ".join(f"model.{k}={v}" for k, v in found.items())
    return f" The file was saved from a model with {shown}." if shown else ""


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True) -> LoadReport:
    """Load ``state_dict`` into ``model`` after checking names and shapes.

    Accepts a bare state dict or a checkpoint dict with a ``"model"`` entry. Strips ``module.``
    (DDP / DataParallel) and ``_orig_mod.`` (torch.compile) prefixes when every key has one and
    the model's keys do not; a DDP-wrapped ``model`` is unwrapped. With ``strict=True`` any
    difference raises :class:`StateDictMismatchError`::

        missing keys (2): head.cls.weight, head.cls.bias; unexpected keys (1): fc.weight;
        shape mismatches: head.cls.weight: checkpoint [720, 256, 3, 3] vs model [819, 256, 3, 3]

    With ``strict=False`` the matching entries are loaded, the rest are skipped with a warning
    (e.g. fine-tuning with a different number of classes) and returned in the :class:`LoadReport`.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    own = model.state_dict()
    own_keys = set(own)
    sd = canonical_state_dict(state_dict, own_keys)

    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own_keys]
    mismatched = [
        k
        for k, v in sd.items()
        if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor) and v.shape != own[k].shape
    ]
    report = LoadReport(missing, unexpected, mismatched)
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
        if mismatched:
            shown = [
                f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}" for k in mismatched[:_MAX_LISTED]
            ]
            more = f" ... (+{len(mismatched) - _MAX_LISTED} more)" if len(mismatched) > _MAX_LISTED else ""
            parts.append("shape mismatches: " + ", ".join(shown) + more)
        msg = "; ".join(parts)
        if strict:
            raise StateDictMismatchError(
                f"state dict does not match {type(model).__name__} (wrong architecture, number of "
                f"classes or weights file?): {msg}.{_fitting_presets(describe_state(sd))}"
            )
        logger.warning("loading %s non-strictly, skipped: %s", type(model).__name__, msg)
    skip = set(mismatched)
    model.load_state_dict({k: v for k, v in sd.items() if k not in skip}, strict=strict)
    return report
