"""Loading a saved state dict into a model, with one readable message for a wrong architecture.

:func:`load_model_state` ``(model, state_dict, strict=True) -> LoadReport`` takes a bare
``{name: tensor}`` dict or a checkpoint dict with a ``"model"`` entry (as read by
:func:`retinanet.utils.serialization.load_file`), compares names and shapes with ``model`` before
loading anything, and strips the ``module.`` (DistributedDataParallel / DataParallel) and
``_orig_mod.`` (``torch.compile``) prefixes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from retinanet.utils.serialization import CheckpointError

__all__ = ["LoadReport", "StateDictMismatchError", "load_model_state"]

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
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
    sd = dict(state_dict)
    if "model" in sd and isinstance(sd["model"], Mapping) and not isinstance(sd["model"], torch.Tensor):
        sd = dict(sd["model"])

    own = model.state_dict()
    own_keys = set(own)
    for prefix in ("module.", "_orig_mod."):
        sd = _strip_prefix(sd, own_keys, prefix)

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
                f"classes or weights file?): {msg}"
            )
        logger.warning("loading %s non-strictly, skipped: %s", type(model).__name__, msg)
    skip = set(mismatched)
    model.load_state_dict({k: v for k, v in sd.items() if k not in skip}, strict=strict)
    return report
