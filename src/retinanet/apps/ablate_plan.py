"""Ablation plans for ``retinanet ablate``: a YAML file -> :class:`Plan` -> cells -> one :class:`Config` per run.

A plan (packaged ones: ``retinanet/configs/ablations/*.yaml``, the paper's Table 1 a-e)::

    title: "Table 1a: alpha-balanced CE"
    base: retinanet_R50_FPN_1x          # preset or YAML file (relative to the plan) the runs start from
    data: {train_images: ..., ...}      # data.* settings merged over the base's (the user's data)
    set: {data.min_size: [600]}         # more dotted config settings for every run
    iterations: 90000                   # the budget of one run: iterations, or minutes (train.time_budget)
    seeds: [0, 1, 2]                    # or a count: 3 -> [0, 1, 2]
    speed: false                        # also measure inference ms per image on the validation set
    axes:                               # the grid: the product over groups; keys of one group are zipped
      - model.focal_alpha: [0.25, 0.75]
      - {name: "gamma / alpha", label: ["g0 a.75", "g2 a.25"],
         model.focal_gamma: [0, 2], model.focal_alpha: [0.75, 0.25]}
    paper: [null, {AP: 34.0}]           # optional: the paper's figures per cell (percent), in cell order

Cells are the Cartesian product of the groups, the first group outermost; each cell is run once per
seed. Every key of an axis or of ``set`` is a dotted config key (``model.anchors.scales``). Every
cell's config is built and validated when the plan is loaded
(:func:`retinanet.apps.ablate_load.load_plan`), so a misspelt key or an impossible value is a
:class:`PlanError` naming the plan file, the field and the key. ``train.seed``, ``train.output_dir``,
``solver.max_iter`` and ``train.time_budget`` belong to the runner (seeds, the run folder, the
budget) and cannot be swept or set. A run keeps one periodic checkpoint (``train.keep_checkpoints``
1), written at least 5 times per run with an ``iterations`` budget, so that a killed run loses little.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from retinanet.config import Config, ConfigError, config_from_dict

__all__ = ["PLAN_DIR", "PLAN_KEYS", "RUNNER_KEYS", "PlanError", "AxisGroup", "Cell", "Plan", "format_value", "set_key"]

#: the packaged plans
PLAN_DIR = Path(__file__).resolve().parent.parent / "configs" / "ablations"
PLAN_KEYS = ("title", "base", "data", "set", "iterations", "minutes", "seeds", "axes", "speed", "speed_images", "paper")
#: config keys the runner sets itself (per seed, per run folder, from the budget)
RUNNER_KEYS = ("train.seed", "train.output_dir", "solver.max_iter", "solver.epochs", "train.time_budget")


class PlanError(ConfigError):
    """A plan file, or an option that changes it, is invalid; the message names the file and the field."""


@dataclass(frozen=True)
class AxisGroup:
    """One axis of the grid: ``keys`` swept together; entry i sets ``keys[j]`` to ``values[i][j]``."""

    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    labels: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: ``positions[g]`` is its entry in group g; ``values`` its config settings."""

    index: int
    positions: tuple[int, ...]
    values: dict[str, Any]
    labels: tuple[str, ...]  # per group
    slug: str  # the run folder's name: readable part + hash of ``values``
    paper: Optional[dict[str, float]] = None

    @property
    def label(self) -> str:
        return "; ".join(self.labels)


@dataclass
class Plan:
    """A loaded plan; ``config`` is the base config (nested dict) with ``data``, ``set`` and the command
    line's overrides applied. ``source`` names where it came from in errors and reports."""

    source: str
    title: str
    base: str
    config: dict[str, Any]
    groups: tuple[AxisGroup, ...]
    seeds: tuple[int, ...]
    iterations: Optional[int] = None
    minutes: Optional[float] = None
    speed: bool = False
    speed_images: int = 50
    paper: tuple[Optional[dict[str, float]], ...] = ()
    _cells: list[Cell] = field(default_factory=list, repr=False)

    def cells(self) -> list[Cell]:
        """Every cell, first group outermost."""
        if not self._cells:
            for index, pos in enumerate(itertools.product(*(range(len(g)) for g in self.groups))):
                values: dict[str, Any] = {}
                for g, i in zip(self.groups, pos):
                    values.update(zip(g.keys, g.values[i]))
                labels = tuple(g.labels[i] for g, i in zip(self.groups, pos))
                ref = self.paper[index] if self.paper else None
                self._cells.append(Cell(index, pos, values, labels, _slug(labels, values), ref))
        return self._cells

    def summary(self) -> dict[str, Any]:
        """The plan as run (``plan.json``, and the head of ``results.json``)."""
        budget = {"iterations": self.iterations} if self.iterations is not None else {"minutes": self.minutes}
        return {
            "title": self.title, "source": self.source, "base": self.base, "budget": budget,
            "seeds": list(self.seeds), "speed": self.speed,
            "axes": [{"name": g.name, "keys": list(g.keys), "labels": list(g.labels)} for g in self.groups],
            "cells": [{"cell": c.index, "label": c.label, "values": c.values, "slug": c.slug} for c in self.cells()],
        }  # fmt: skip

    def budget_text(self) -> str:
        return f"{self.iterations} iterations" if self.iterations is not None else f"{self.minutes:g} minutes"

    def cell_config(self, cell: Cell, seed: int, output_dir: str | Path) -> Config:
        """The validated config of one run (:class:`PlanError` naming the cell if it is impossible)."""
        d = copy.deepcopy(self.config)
        for key, value in cell.values.items():
            set_key(d, key, value)
        set_key(d, "train.seed", seed)
        set_key(d, "train.output_dir", str(output_dir))
        set_key(d, "train.keep_checkpoints", 1)  # a killed run needs its newest checkpoint only
        if self.iterations is not None:
            set_key(d, "solver.max_iter", self.iterations)
            set_key(d, "solver.epochs", None)
            period = int(d.get("train", {}).get("checkpoint_period", self.iterations))
            set_key(d, "train.checkpoint_period", max(1, min(period, math.ceil(self.iterations / 5))))
        else:
            assert self.minutes is not None
            set_key(d, "train.time_budget", self.minutes * 60.0)
        try:
            return config_from_dict(d)
        except ConfigError as e:
            raise PlanError(f"{self.source}: cell {cell.index} ({cell.label}): {e}", e.key) from None


# --------------------------------------------------------------------------------------------------
def format_value(v: Any) -> str:
    """Short text of an axis value: ``0.25``, ``[1, 1.26, 1.59]``, ``null``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


_GREEK = {"α": "alpha", "γ": "gamma", "π": "pi"}


def _slug(labels: Sequence[str], values: dict[str, Any]) -> str:
    text = "__".join(labels)
    for greek, latin in _GREEK.items():  # the paper's symbols in labels stay readable in folder names
        text = text.replace(greek, latin)
    text = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")[:60] or "cell"
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{text}-{digest}"


def set_key(d: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict (a mapping value is merged into an existing section)."""
    *parents, last = dotted.split(".")
    node = d
    for p in parents:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = node[p] = {}
        node = nxt
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = {**node[last], **copy.deepcopy(value)}
    else:
        node[last] = copy.deepcopy(value)
