"""Reading an ablation plan (format: :mod:`retinanet.apps.ablate_plan`): YAML file -> validated :class:`Plan`.

``load_plan(path_or_name, overrides, axes, iterations, minutes, seeds, base)`` reads a plan file or a
packaged plan (``list_plans()``, ``retinanet/configs/ablations/``), resolves its base config, applies
``data``, ``set`` and the command line's overrides, replaces axis values (``--axis``), builds and
validates every cell's config and returns the :class:`Plan`. Every problem is a :class:`PlanError`
naming the plan file, the field (``axes[1]``, ``seeds``, ...) and the config key.
"""

from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from retinanet.apps.ablate_plan import (
    PLAN_DIR,
    PLAN_KEYS,
    RUNNER_KEYS,
    AxisGroup,
    Plan,
    PlanError,
    format_value,
    set_key,
)
from retinanet.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config

__all__ = ["load_plan", "list_plans", "plan_path"]

_GROUP_META = ("name", "label")


def _validated(d: dict[str, Any], where: str) -> None:
    try:
        config_from_dict(d)
    except ConfigError as e:
        raise PlanError(f"{where}: {e}", e.key) from None


def list_plans() -> list[str]:
    """Names of the packaged plans (``retinanet ablate NAME`` accepts them)."""
    return sorted(p.stem for p in PLAN_DIR.glob("*.yaml"))


def plan_path(name: str) -> Path:
    """A plan file, or the packaged plan of that name."""
    p = Path(name)
    if p.is_file():
        return p
    q = PLAN_DIR / f"{name}.yaml"
    if q.is_file():
        return q
    close = difflib.get_close_matches(name, list_plans(), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else f" Packaged plans: {', '.join(list_plans())}."
    raise PlanError(f"no plan file or packaged plan named '{name}'." + hint)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PlanError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise PlanError(f"{path}: cannot read: {e.strerror}") from None
    if not isinstance(data, dict):
        raise PlanError(f"{path}: a plan is a mapping of {', '.join(PLAN_KEYS)}")
    for k in data:
        if k not in PLAN_KEYS:
            close = difflib.get_close_matches(str(k), PLAN_KEYS, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else f" Plan fields: {', '.join(PLAN_KEYS)}."
            raise PlanError(f"{path}: unknown plan field '{k}'." + hint, str(k))
    return data


def _raw_groups(raw: Any, src: str) -> list[dict[str, Any]]:
    if isinstance(raw, dict):  # a mapping: one group per key
        raw = [{k: v} for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{src}: axes: expected a non-empty list of groups (mappings of config key -> values)", "axes")
    return [dict(g) if isinstance(g, dict) else g for g in raw]


def _groups(raw: list[Any], src: str, base: dict[str, Any]) -> list[AxisGroup]:
    groups = []
    for gi, g in enumerate(raw):
        where = f"{src}: axes[{gi}]"
        if not isinstance(g, dict):
            raise PlanError(f"{where}: expected a mapping of config key -> list of values, got {g!r}", "axes")
        keys = [k for k in g if k not in _GROUP_META]
        if not keys:
            raise PlanError(f"{where}: no config key to sweep", "axes")
        lengths = {}
        for k in keys:
            if not isinstance(k, str) or "." not in k:
                raise PlanError(f"{where}: '{k}' is not a dotted config key (section.key, e.g. model.focal_gamma)", k)
            if k in RUNNER_KEYS:
                raise PlanError(f"{where}: {k} is set by the runner (seeds, run folder, budget), not by an axis", k)
            if not isinstance(g[k], list) or not g[k]:
                raise PlanError(f"{where}: {k}: expected a non-empty list of values, got {g[k]!r}", k)
            lengths[k] = len(g[k])
        if len(set(lengths.values())) > 1:
            sizes = ", ".join(f"{k}: {n}" for k, n in lengths.items())
            raise PlanError(f"{where}: the keys of one group are zipped and need lists of one length ({sizes})")
        n = len(g[keys[0]])
        values = tuple(tuple(g[k][i] for k in keys) for i in range(n))
        for row in values:  # each entry alone on the base: names the key and the value at fault
            d = copy.deepcopy(base)
            for k, v in zip(keys, row):
                set_key(d, k, v)
            _validated(d, f"{where}: " + ", ".join(f"{k} = {format_value(v)}" for k, v in zip(keys, row)))
        labels = g.get("label")
        if labels is None:
            short = [k.split(".")[-1] for k in keys]
            labels = [
                ", ".join(f"{s}={format_value(v)}" for s, v in zip(short, row))
                if len(keys) > 1
                else format_value(row[0])
                for row in values
            ]
        elif not isinstance(labels, list) or len(labels) != n:
            raise PlanError(f"{where}: label: expected a list of {n} names, got {labels!r}", "label")
        name = g.get("name") or " / ".join(keys)
        groups.append(AxisGroup(tuple(keys), values, tuple(str(x) for x in labels), str(name)))
    seen: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for k in g.keys:
            if k in seen:
                raise PlanError(f"{src}: axes[{gi}]: {k} is already swept by axes[{seen[k]}]", k)
            seen[k] = gi
    return groups


def _replace_axis(raw: list[dict[str, Any]], item: str) -> None:
    """``KEY=[v1, v2]`` (YAML) replaces the values of an axis key in the raw groups; the keys of a zipped
    group must keep one length (give each with ``--axis``). The group's labels are dropped (rebuilt)."""
    if "=" not in item:
        raise PlanError(f"--axis '{item}' must look like section.key=[value, ...]")
    key, text = (s.strip() for s in item.split("=", 1))
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError:
        raise PlanError(f"--axis {key}: not a YAML list: {text!r}") from None
    if not isinstance(values, list) or not values:
        raise PlanError(f"--axis {key}: expected a non-empty list, e.g. {key}=[1, 2], got {text!r}")
    for g in raw:
        if key in g:
            g[key] = values
            g.pop("label", None)
            return
    keys = [k for g in raw for k in g if k not in _GROUP_META]
    raise PlanError(f"--axis {key}: not an axis of this plan (axes: {', '.join(map(str, keys))})")


def _seeds(raw: Any, src: str) -> tuple[int, ...]:
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 1:
        return tuple(range(raw))
    if isinstance(raw, list) and raw and all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        if len(set(raw)) != len(raw):
            raise PlanError(f"{src}: seeds: repeated seed in {raw}", "seeds")
        return tuple(raw)
    raise PlanError(f"{src}: seeds: expected a count >= 1 or a list of distinct integers, got {raw!r}", "seeds")


def load_plan(
    plan: str | Path,
    overrides: Sequence[str] = (),
    axes: Sequence[str] = (),
    iterations: Optional[int] = None,
    minutes: Optional[float] = None,
    seeds: Optional[Sequence[int]] = None,
    base: Optional[str | dict[str, Any]] = None,
) -> Plan:
    """Read and validate a plan (a file or a packaged plan's name). The command line may add config
    ``overrides`` (``section.key=value``, for every run), replace axis values (``axes``:
    ``KEY=[v, ...]``), the budget (``iterations`` or ``minutes``), the ``seeds`` and the ``base`` config
    (a preset, a YAML file or a nested config dict, instead of the plan's ``base``)."""
    path = plan_path(str(plan))
    src = str(path)
    raw = _read(path)
    base = base if base is not None else raw.get("base")
    if base is None:
        raise PlanError(f"{src}: base: name the config the runs start from (a preset or a YAML file)", "base")
    if isinstance(base, dict):
        cfg, base_name = copy.deepcopy(base), "(given config)"
    else:
        rel = path.parent / str(base)
        base_name = str(base)
        try:
            cfg = config_to_dict(load_config(str(rel) if rel.is_file() else str(base)))
        except ConfigError as e:
            raise PlanError(f"{src}: base: {e}", "base") from None
    if raw.get("data") is not None:
        if not isinstance(raw["data"], dict):
            raise PlanError(f"{src}: data: expected a mapping of data.* settings", "data")
        set_key(cfg, "data", raw["data"])
        _validated(cfg, f"{src}: data")
    settings = raw.get("set") or {}
    if not isinstance(settings, dict):
        raise PlanError(f"{src}: set: expected a mapping of dotted config key -> value", "set")
    for k, v in settings.items():
        if str(k) in RUNNER_KEYS:
            raise PlanError(f"{src}: set: {k} is set by the runner (seeds, run folder, budget)", str(k))
        set_key(cfg, str(k), v)
    _validated(cfg, f"{src}: set")
    overrides = list(overrides)
    for o in overrides:
        if o.split("=", 1)[0].strip() in RUNNER_KEYS:
            raise PlanError(f"override {o}: set by the runner; use --seeds, --out, --iterations or --minutes")
    try:
        cfg = config_to_dict(config_from_dict(apply_overrides(cfg, overrides)))
    except ConfigError as e:
        raise PlanError(f"override: {e}", e.key) from None
    raw_axes = _raw_groups(raw.get("axes"), src)
    for item in axes:
        _replace_axis(raw_axes, item)
    groups = _groups(raw_axes, f"{src} (with --axis {' '.join(axes)})" if axes else src, cfg)
    swept = {k for g in groups for k in g.keys}
    for o in overrides:
        if o.split("=", 1)[0].strip() in swept:
            raise PlanError(f"override {o}: the plan sweeps this key (replace its values with --axis)")
    if iterations is not None or minutes is not None:
        its, mins = iterations, minutes
    else:
        its, mins = raw.get("iterations"), raw.get("minutes")
    if (its is None) == (mins is None):
        raise PlanError(f"{src}: give the budget of one run as iterations or minutes (exactly one)", "iterations")
    if its is not None and (not isinstance(its, int) or isinstance(its, bool) or its < 1):
        raise PlanError(f"{src}: iterations: expected an integer >= 1, got {its!r}", "iterations")
    if mins is not None and (
        not isinstance(mins, (int, float)) or isinstance(mins, bool) or not math.isfinite(mins) or mins <= 0
    ):
        raise PlanError(f"{src}: minutes: expected a number > 0, got {mins!r}", "minutes")
    seed_list = _seeds(list(seeds) if seeds is not None else raw.get("seeds", 1), src)
    speed, speed_images = raw.get("speed", False), raw.get("speed_images", 50)
    if not isinstance(speed, bool):
        raise PlanError(f"{src}: speed: expected true or false, got {speed!r}", "speed")
    if not isinstance(speed_images, int) or isinstance(speed_images, bool) or speed_images < 1:
        raise PlanError(f"{src}: speed_images: expected an integer >= 1, got {speed_images!r}", "speed_images")
    n_cells = math.prod(len(g) for g in groups)
    p = Plan(
        src, str(raw.get("title") or path.stem), base_name, cfg, tuple(groups), seed_list, its,
        float(mins) if mins is not None else None, speed, speed_images,
        _paper(raw.get("paper"), n_cells, src) if not axes else (),  # another grid than the paper's: no figures
    )  # fmt: skip
    _check_validation_data(p)
    for cell in p.cells():  # every combination is a valid config
        p.cell_config(cell, seed_list[0], "ablation")
    return p


def _paper(raw: Any, n: int, src: str) -> tuple[Optional[dict[str, float]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) != n:
        raise PlanError(f"{src}: paper: expected a list of {n} entries (one per cell, null where unknown)", "paper")
    out: list[Optional[dict[str, float]]] = []
    for i, r in enumerate(raw):
        if isinstance(r, (int, float)) and not isinstance(r, bool):
            r = {"AP": r}
        if r is not None and not (isinstance(r, dict) and all(isinstance(v, (int, float)) for v in r.values())):
            raise PlanError(f"{src}: paper[{i}]: expected null, a number (AP) or a mapping metric -> number", "paper")
        out.append(None if r is None else {str(k): float(v) for k, v in r.items()})
    return tuple(out)


def _check_validation_data(p: Plan) -> None:
    d = p.config["data"]
    has_val = bool(d.get("val_annotations")) if d.get("format") == "coco" else bool(d.get("voc_root"))
    if not has_val:
        raise PlanError(
            f"{p.source}: the runs need a validation set to measure AP: set data.val_images and "
            "data.val_annotations (COCO) or data.voc_root (VOC) in the plan's data block or as overrides",
            "data",
        )
