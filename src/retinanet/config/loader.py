"""Loading a :class:`~retinanet.config.schema.Config`: YAML files, presets, overrides, validation.

``load_config(path, overrides)`` reads a YAML file (which may name a ``base`` file or packaged preset
to start from), applies ``key.sub=value`` overrides (values parsed as YAML), converts the nested dict
to the dataclasses (lists become tuples where declared, ``1e-4`` strings become numbers) and
validates everything, raising :class:`ConfigError` with the offending key, and the closest valid
key when a name is misspelt. ``config_to_dict`` and ``save_config`` go the other way.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from retinanet.config.schema import Config
from retinanet.config.validation import ConfigError, validate

__all__ = [
    "ConfigError",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "validate",
    "preset_path",
    "list_presets",
    "save_config",
]

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


# --------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checking


_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # exponent without a dot: 1e-4


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples where declared."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}", key)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}", key)
        return _from_dict(tp, value, key)
    if origin in (tuple, list):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and origin is tuple:
            value = [value]  # a single value where a tuple is expected, e.g. min_size: 800
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key)
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}", key)
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = [_coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else list(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}", key)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key)
        return value
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 or 1e6 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}", key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", key)
        return value
    return value


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(valid)}."


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        full = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            raise ConfigError(f"unknown config key '{full}'." + _suggest(str(k), names), full)
        kwargs[k] = _coerce(v, hints[k], full)
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    """Build and validate a :class:`Config` from a nested dict (unknown keys are errors)."""
    data = dict(data or {})
    data.pop("base", None)
    cfg = _from_dict(Config, data)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """Nested plain dict (tuples as lists) of a config dataclass, ready for YAML or JSON."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


# --------------------------------------------------------------------------------------------------
# files, presets and overrides


def list_presets() -> list[str]:
    """Names of the packaged presets (``retinanet train NAME`` accepts them)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Resolve a preset name or a file path to a YAML file that exists."""
    p = Path(name)
    if p.is_file():
        return p
    q = PRESET_DIR / f"{name}.yaml"
    if q.is_file():
        return q
    if p.suffix in (".yaml", ".yml") or "/" in name:
        raise ConfigError(f"config file not found: {name}")
    raise ConfigError(f"no config file or preset named '{name}'." + _suggest(name, list_presets()))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as e:  # one line: where, what (PyYAML's own text spans several)
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(x for x in (e.context, e.problem) if x) or type(e).__name__
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'base' files form a cycle")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base:
        bp = Path(base) if Path(base).is_absolute() else path.parent / base
        if not bp.is_file():
            try:
                bp = preset_path(str(base))
            except ConfigError as e:
                raise ConfigError(f"{path}: base: {e}", "base") from None
        data = _merge(_load_yaml_chain(bp, seen + (path,)), data)
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {} if nxt is None else nxt
                if not isinstance(nxt, dict):
                    raise ConfigError(f"override '{key}': '{p}' is not a section")
                node[p] = nxt = dict(nxt)
            else:
                node[p] = nxt = dict(nxt)
            node = nxt
        node[parts[-1]] = value
    return data


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML file or preset name (or the defaults when ``path`` is None) and apply overrides.

    A :class:`ConfigError` about a key set in the file starts with the file's path (``cfg.yaml:
    solver.base_lr: must be a positive number (got -0.1)``); one about an override names the key.
    """
    file = preset_path(path) if path else None
    data = _load_yaml_chain(file) if file is not None else {}
    overrides = list(overrides or [])
    data = apply_overrides(data, overrides)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        if file is None or _from_override(e.key, overrides):
            raise
        raise ConfigError(f"{file}: {e}", e.key) from None


def _from_override(key: Optional[str], overrides: list[str]) -> bool:
    if not key:
        return False
    for item in overrides:
        k = item.split("=", 1)[0].strip()
        if key == k or key.startswith(k + ".") or key.startswith(k + "[") or k.startswith(key + "."):
            return True
    return False


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the full resolved config as YAML (what a run actually used)."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
