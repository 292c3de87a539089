"""The training augmentations a config may list (``data.augment``): their names, parameters and defaults.

``data.augment`` is a list of mappings, applied in order to each training image before it is resized::

    data:
      augment:
        - {name: photometric, p: 0.5, brightness: 32, contrast: [0.5, 1.5]}
        - {name: random_crop, p: 0.5, min_scale: 0.3, min_visible: 0.5}
        - {name: rot90}

:data:`AUGMENT_OPS` maps each op name to its parameters and their defaults; :func:`parse_augment`
checks one entry and returns its full parameter set, raising :class:`~retinanet.config.validation.ConfigError`
naming ``data.augment[i].<param>``. The ops themselves are :mod:`retinanet.data.augment` (this module
is the config layer's part: names and values only).
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Mapping

__all__ = ["AUGMENT_OPS", "parse_augment", "parse_augment_list"]


class _Bad(ValueError):
    pass


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _Bad("must be a finite number")
    return float(v)


def _prob(v: Any) -> float:
    x = _number(v)
    if not 0.0 <= x <= 1.0:
        raise _Bad("must be in [0, 1]")
    return x


def _nonneg(v: Any) -> float:
    x = _number(v)
    if x < 0:
        raise _Bad("must be >= 0")
    return x


def _between(lo: float, hi: float, open_lo: bool = False) -> Callable[[Any], float]:
    """A number in ``[lo, hi]`` (``(lo, hi]`` when ``open_lo``)."""

    def check(v: Any) -> float:
        x = _number(v)
        if (x <= lo if open_lo else x < lo) or x > hi:
            raise _Bad(f"must be in {'(' if open_lo else '['}{lo:g}, {hi:g}]")
        return x

    return check


def _pair(lo_min: float, hi_max: float = math.inf, open_lo: bool = False) -> Callable[[Any], tuple[float, float]]:
    """``[lo, hi]`` with ``lo_min <= lo <= hi <= hi_max`` (``lo > lo_min`` when ``open_lo``)."""

    def check(v: Any) -> tuple[float, float]:
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise _Bad("must be a list [lo, hi]")
        lo, hi = _number(v[0]), _number(v[1])
        bad_lo = lo <= lo_min if open_lo else lo < lo_min
        if bad_lo or hi > hi_max or lo > hi:
            rel = ">" if open_lo else ">="
            top = "" if math.isinf(hi_max) else f" <= {hi_max:g}"
            raise _Bad(f"must be [lo, hi] with lo {rel} {lo_min:g}, lo <= hi{top}")
        return lo, hi

    return check


def _int_at_least(n: int) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < n:
            raise _Bad(f"must be an integer >= {n}")
        return int(v)

    return check


def _optional_size(v: Any) -> int | None:
    if v is None:
        return None
    return _int_at_least(1)(v)


def _fill(v: Any) -> tuple[int, int, int] | None:
    if v is None:
        return None
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 3
        or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in v)
    ):
        raise _Bad("must be null (the model's pixel_mean) or [R, G, B] integers in 0..255")
    return int(v[0]), int(v[1]), int(v[2])


def _quarter_turns(v: Any) -> tuple[int, ...]:
    if (
        not isinstance(v, (list, tuple))
        or not v
        or any(isinstance(k, bool) or k not in (0, 1, 2, 3) for k in v)
        or len(set(v)) != len(v)
    ):
        raise _Bad("must be a non-empty list of distinct quarter turns from 0, 1, 2, 3")
    return tuple(int(k) for k in v)


def _ious(v: Any) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)):
        raise _Bad("must be a list of IoU thresholds in [0, 1] (empty: no IoU rule)")
    return tuple(_prob(x) for x in v)


_P = (_prob, 0.5)
#: op name -> {parameter: (check, default)}; a check returns the normalized value or raises
_SPECS: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "photometric": {
        "p": _P,
        "brightness": (_nonneg, 32.0),  # added delta drawn from [-brightness, brightness], 0..255 units
        "contrast": (_pair(0.0), (0.5, 1.5)),  # factor range (blend with the mean grey)
        "saturation": (_pair(0.0), (0.5, 1.5)),  # factor range (blend with the pixel's grey)
        "hue": (_between(0.0, 180.0), 18.0),  # hue rotation drawn from [-hue, hue] degrees
    },
    "random_crop": {
        "p": _P,
        "min_scale": (_between(0.0, 1.0, open_lo=True), 0.3),  # crop side / image side, per side
        "max_scale": (_between(0.0, 1.0, open_lo=True), 1.0),
        "max_aspect": (_between(1.0, math.inf), 2.0),  # bound on the crop's (h/w) / the image's (h/w)
        "min_ious": (_ious, ()),  # SSD: one drawn per image; some box must overlap the crop this much
        "min_visible": (_prob, 0.5),  # keep a box if (clipped area / its area) >= this
        "trials": (_int_at_least(1), 50),
    },
    "expand": {
        "p": _P,
        "ratio": (_pair(1.0), (1.0, 4.0)),  # canvas side / image side
        "fill": (_fill, None),
    },
    "lsj": {
        "p": (_prob, 1.0),
        "size": (_optional_size, None),  # output side (null: the largest data.min_size)
        "scale": (_pair(0.0, open_lo=True), (0.1, 2.0)),
        "min_visible": (_prob, 0.0),
        "fill": (_fill, None),
    },
    "vflip": {"p": _P},
    "hflip": {"p": _P},
    "rot90": {"p": (_prob, 1.0), "k": (_quarter_turns, (0, 1, 2, 3))},  # counter-clockwise quarter turns
    "mosaic": {
        "p": _P,
        "size": (_optional_size, None),  # output side (null: the largest data.min_size)
        "center": (_pair(0.0, 1.0), (0.25, 0.75)),  # where the four images meet, fraction of the side
        "min_visible": (_prob, 0.0),
        "fill": (_fill, None),
    },
}


#: op name -> {parameter: default}
AUGMENT_OPS: dict[str, dict[str, Any]] = {op: {k: d for k, (_, d) in ps.items()} for op, ps in _SPECS.items()}


def parse_augment(entry: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``(name, params)`` of one ``data.augment`` entry (``key``: its dotted key, e.g. ``data.augment[0]``);
    params are the op's defaults updated by the entry, lists made tuples. Raises ConfigError naming the
    key at fault and what is valid."""
    from retinanet.config.validation import ConfigError

    names = ", ".join(_SPECS)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{key}: must be a mapping {{name: OP, ...}} with OP one of {names} (got {entry!r})", key)
    name = entry.get("name")
    if name not in _SPECS:
        what = "missing" if name is None else f"unknown augmentation {name!r}"
        close = difflib.get_close_matches(str(name), list(_SPECS), n=1, cutoff=0.5) if name is not None else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}.name: {what}{hint}; valid names: {names}", f"{key}.name")
    spec = _SPECS[name]
    params = {p: default for p, (_, default) in spec.items()}
    for p, v in entry.items():
        if p == "name":
            continue
        if p not in spec:
            raise ConfigError(f"{key}.{p}: {name} has no parameter {p!r}; valid: {', '.join(spec)}", f"{key}.{p}")
        try:
            params[p] = spec[p][0](v)
        except _Bad as e:
            raise ConfigError(f"{key}.{p}: {e} (got {v!r})", f"{key}.{p}") from None
    if name == "random_crop" and params["min_scale"] > params["max_scale"]:
        raise ConfigError(
            f"{key}.min_scale: must be <= max_scale ({params['max_scale']:g}) (got {params['min_scale']!r})",
            f"{key}.min_scale",
        )
    return str(name), params


def parse_augment_list(entries: Any, key: str = "data.augment") -> list[tuple[str, dict[str, Any]]]:
    """:func:`parse_augment` of every entry of ``entries`` (a list; ``None`` is empty)."""
    from retinanet.config.validation import ConfigError

    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"{key}: must be a list of {{name: OP, ...}} mappings (got {entries!r})", key)
    return [parse_augment(e, f"{key}[{i}]") for i, e in enumerate(entries)]
