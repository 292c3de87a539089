"""Checkpoints: atomic save, safe load, readable state-dict errors, RNG state, keep-last-N.

A checkpoint is a ``dict`` made only of tensors, numbers, strings, bytes, ``None``, ``torch.Size``,
``torch.dtype``, ``torch.device`` and (nested) dicts / lists / tuples / sets of them, so that it
loads with ``torch.load(weights_only=True)``, which never executes pickled code. Typical content::

    {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
     "scheduler": scheduler.state_dict(), "iteration": 1000, "rng": get_rng_state()}

- :func:`save_checkpoint` writes to a temporary file in the destination directory, flushes and
  fsyncs it, then ``os.replace``-s it over the destination: a kill or a full disk mid-write never
  destroys the previous checkpoint. In a directory it also updates the ``last_checkpoint`` pointer
  file (detectron2's format: one line with the file name) and can prune to the newest N.
- :func:`load_checkpoint` loads ``.pth``/``.pt`` (weights_only) and ``.safetensors`` (model weights
  only, needs the ``safetensors`` package) and turns every failure into a :class:`CheckpointError`
  that names the file and says what is wrong with it (truncated, not a checkpoint, or unsafe).
- :func:`load_model_state` compares names and shapes first and reports a wrong architecture in one
  readable message; it strips the ``module.`` prefix that DistributedDataParallel adds.
- :func:`get_rng_state` / :func:`set_rng_state` capture and restore python ``random``, numpy's
  global RNG, torch CPU and every CUDA device, as plain tensors / numbers.

Numbered checkpoints are named ``model_0001000.pth`` (:func:`checkpoint_name`); ``model_final.pth``
sorts after every number.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import pickletools
import random
import re
import secrets
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "StateDictMismatchError",
    "LoadReport",
    "atomic_write",
    "checkpoint_name",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "get_rng_state",
    "set_rng_state",
    "LAST_CHECKPOINT_FILE",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"
_FINAL_ITERATION = float("inf")
_SAFE_LEAF_TYPES = (
    str, bytes, int, float, bool, complex, type(None), torch.Size, torch.dtype, torch.device,
    torch.Tensor, nn.Parameter,
)
_SAFE_CONTAINER_TYPES = (dict, OrderedDict, Counter, list, tuple, set)  # Counter: MultiStepLR
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint could not be written or read; the message names the file and the reason."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled objects (code) that weights-only loading refuses to execute."""


class StateDictMismatchError(CheckpointError):
    """The state dict does not fit the model (missing / unexpected keys, shape mismatches)."""


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: some platforms / filesystems cannot fsync a dir)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers see either the old or the complete new content, never a part.

    ``write(f)`` receives a binary file object opened on a temporary file in the same directory
    (``.<name>.<pid>.<hex>.tmp``); it is flushed, fsynced and renamed over ``path``. On any
    exception (``OSError`` such as ENOSPC, ``KeyboardInterrupt``, an error inside ``write``) the
    temporary file is removed, ``path`` is untouched and the exception propagates. The parent
    directory is created if needed. Returns ``path`` as a :class:`Path`.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with 0o666 applies the umask like a plain open() would (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


# --------------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------------


def _check_weights_only_safe(obj: Any, where: str, seen: set[int]) -> None:
    """Raise TypeError naming the first value that ``torch.load(weights_only=True)`` would refuse."""
    t = type(obj)
    if t in _SAFE_LEAF_TYPES:
        return
    if t not in _SAFE_CONTAINER_TYPES:
        hint = ""
        if isinstance(obj, (np.ndarray, np.generic)):
            hint = " (convert numpy values with torch.from_numpy(x) or x.item())"
        elif isinstance(obj, torch.Tensor):
            hint = " (convert tensor subclasses to a plain tensor with torch.Tensor(x) / x.detach())"
        raise TypeError(
            f"checkpoint state {where} is a {t.__module__}.{t.__qualname__}, which cannot be loaded "
            "with torch.load(weights_only=True); a checkpoint may hold only tensors, numbers, "
            f"strings, bytes, None and dicts/lists/tuples/sets of them{hint}"
        )
    if id(obj) in seen:
        raise TypeError(f"checkpoint state {where} contains itself (a reference cycle)")
    seen.add(id(obj))
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_weights_only_safe(k, f"{where} key {k!r}", seen)
            _check_weights_only_safe(v, f"{where}[{k!r}]", seen)
    else:
        for i, v in enumerate(obj):
            _check_weights_only_safe(v, f"{where}[{i}]", seen)
    seen.discard(id(obj))


def checkpoint_name(iteration: int, prefix: str = "model") -> str:
    """File name of a numbered checkpoint: ``checkpoint_name(1000) == "model_0001000.pth"``."""
    if int(iteration) < 0:
        raise ValueError(f"checkpoint iteration must be >= 0, got {iteration}")
    return f"{prefix}_{int(iteration):07d}.pth"


def save_checkpoint(
    path: str | os.PathLike[str],
    state: Mapping[str, Any],
    *,
    update_last: bool = True,
    keep_last: int | None = None,
) -> Path:
    """Atomically save ``state`` to ``path``; return the path.

    ``state`` must be a dict of weights-only-loadable values (see the module docstring); anything
    else raises ``TypeError`` naming the offending entry, before the disk is touched. A
    ``.safetensors`` path writes a flat ``{name: tensor}`` dict in that format instead.

    ``update_last`` rewrites ``<dir>/last_checkpoint`` (atomically) to name this file;
    ``keep_last=N`` then deletes all but the newest N numbered checkpoints of the directory
    (see :func:`prune_checkpoints`). Any ``OSError`` (disk full, permission denied, ...) becomes a
    :class:`CheckpointError` naming ``path``; the temporary file is removed and the previous file
    at ``path`` is left untouched.
    """
    path = Path(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state for {path} must be a dict, got {type(state).__name__}")
    if keep_last is not None and int(keep_last) < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")

    if path.suffix == ".safetensors":
        writer = _safetensors_writer(path, state)
    else:
        _check_weights_only_safe(dict(state), "", set())
        payload = dict(state)

        def writer(f: IO[bytes]) -> None:
            torch.save(payload, f)

    try:
        atomic_write(path, writer)
        if update_last:
            atomic_write(path.parent / LAST_CHECKPOINT_FILE, lambda f: f.write(f"{path.name}\n".encode()))
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            reason = "no space left on device"
        raise CheckpointError(
            f"could not write checkpoint {path}: {reason}; the previous file (if any) is untouched"
        ) from e
    if keep_last is not None:
        prune_checkpoints(path.parent, keep_last)
    return path


def _safetensors_writer(path: Path, state: Mapping[str, Any]) -> Callable[[IO[bytes]], None]:
    try:
        from safetensors.torch import save as st_save
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            f"cannot write {path}: the safetensors package is not installed (pip install safetensors)"
        ) from e
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(
            f"a .safetensors file holds only {{name: tensor}}; {path} state has other entries: "
            f"{', '.join(map(repr, bad[:_MAX_LISTED]))}"
        )
    tensors = {k: v.detach().contiguous() for k, v in state.items()}

    def writer(f: IO[bytes]) -> None:
        f.write(st_save(tensors))

    return writer


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------


def _pickle_globals(path: Path, limit: int = 8) -> list[str]:
    """Globals referenced by a plain pickle file, found by parsing opcodes (nothing is executed)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings = (strings + [str(arg)])[-2:]
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                    found.append(".".join(strings))
                elif op.name == "STOP":
                    break
                if len(found) >= limit:
                    break
    except Exception:  # truncated / not a pickle: report what was found so far
        pass
    return list(dict.fromkeys(found))


def _unsafe_globals(path: Path, is_zip: bool) -> list[str]:
    if is_zip:
        finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
        if finder is not None:
            try:
                return list(finder(str(path)))
            except Exception:
                return []
        return []
    allowed = ("torch.", "collections.OrderedDict", "builtins.set")
    return [g for g in _pickle_globals(path) if not g.startswith(allowed)]


def _zip_problem(path: Path) -> str | None:
    """Why a zip-format checkpoint is damaged, or None if the archive itself is intact."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"it is truncated or corrupt ({e})"
    if bad is not None:
        return f"it is corrupt (bad CRC in member {bad})"
    return None


def _map_location_str(map_location: Any, path: Path) -> str:
    if isinstance(map_location, (str, torch.device)):
        return str(map_location)
    raise TypeError(
        f"map_location for the safetensors file {path} must be a device string or torch.device, "
        f"got {type(map_location).__name__}"
    )


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict without ever executing pickled code.

    ``.pth``/``.pt`` (and any other suffix) go through ``torch.load(weights_only=True)``;
    ``.safetensors`` files (model weights only) through the ``safetensors`` package and come back
    as ``{name: tensor}``. Errors: ``FileNotFoundError`` if the file does not exist;
    :class:`UnsafeCheckpointError` if it holds pickled objects that are not plain data (it refuses
    to execute code from it); :class:`CheckpointError` if it is empty, truncated, corrupt, not a
    checkpoint, or not a dict at the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    if not head:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): truncated or not a checkpoint")
    is_zip = head == b"PK\x03\x04"

    try:
        with warnings.catch_warnings():
            # plain pickles of protocol > 2 make torch warn before it refuses or loads them
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path, is_zip)
        if unsafe or "Unsupported global" in str(e):
            listed = ", ".join(unsafe[:_MAX_LISTED]) or _first_unsupported_global(str(e))
            raise UnsafeCheckpointError(
                f"refusing to execute code from {path}: it contains pickled objects that are not "
                f"plain tensors/containers ({listed}). Load it with torch.load(..., "
                "weights_only=False) only if you trust where it came from, then re-save the "
                "plain state dicts."
            ) from e
        raise CheckpointError(_corrupt_message(path, is_zip, e)) from e
    except Exception as e:  # torch raises RuntimeError / EOFError / OSError / KeyError / ...
        if is_zip and _zip_problem(path) is None:
            # the archive is intact, so the problem is elsewhere (e.g. map_location)
            raise CheckpointError(f"could not load checkpoint {path}: {type(e).__name__}: {e}") from e
        raise CheckpointError(_corrupt_message(path, is_zip, e)) from e
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path} is not a checkpoint: it holds a {type(obj).__name__}, expected a dict"
        )
    return obj


def _first_unsupported_global(msg: str) -> str:
    m = re.search(r"GLOBAL (\S+)", msg)
    return m.group(1) if m else "unsupported pickle content"


def _corrupt_message(path: Path, is_zip: bool, e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    if is_zip:
        problem = _zip_problem(path) or "it could not be read"
        return f"checkpoint {path} cannot be loaded: {problem}"
    return (
        f"checkpoint {path} cannot be loaded: it is truncated or not a checkpoint "
        f"({type(e).__name__}: {first})"
    )


def _load_safetensors(path: Path, map_location: Any) -> dict[str, Any]:
    try:
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            f"cannot read {path}: the safetensors package is not installed (pip install safetensors)"
        ) from e
    device = _map_location_str(map_location, path)
    try:
        return dict(load_file(str(path), device=device))
    except Exception as e:  # SafetensorError and friends
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded: it is truncated or not a safetensors file ({e})"
        ) from e


# --------------------------------------------------------------------------------------------
# model state
# --------------------------------------------------------------------------------------------


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
    if state and all(k.startswith(prefix) for k in state) and not any(
        k.startswith(prefix) for k in model_keys
    ):
        return {k[len(prefix):]: v for k, v in state.items()}
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
        k for k, v in sd.items()
        if k in own and isinstance(v, torch.Tensor) and isinstance(own[k], torch.Tensor)
        and v.shape != own[k].shape
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
                f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
                for k in mismatched[:_MAX_LISTED]
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


# --------------------------------------------------------------------------------------------
# finding and pruning checkpoints
# --------------------------------------------------------------------------------------------


def _iteration_of(name: str, prefix: str) -> float | None:
    if name == f"{prefix}_final.pth":
        return _FINAL_ITERATION
    m = re.fullmatch(rf"{re.escape(prefix)}_(\d+)\.(?:pth|pt)", name)
    return float(int(m.group(1))) if m else None


def list_checkpoints(directory: str | os.PathLike[str], prefix: str = "model") -> list[Path]:
    """Numbered checkpoints (``<prefix>_<iteration>.pth``, and ``<prefix>_final.pth`` last) of
    ``directory``, oldest first; ``[]`` if the directory does not exist."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        it = _iteration_of(p.name, prefix)
        if it is not None and p.is_file():
            found.append((it, p.name, p))
    return [p for _, _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike[str], prefix: str = "model") -> Path | None:
    """The checkpoint to resume from, or None.

    The file named by ``<dir>/last_checkpoint`` if it exists, unless a numbered checkpoint with
    a higher iteration exists (the pointer lags when a run was killed between writing a
    checkpoint and the pointer); otherwise the highest-numbered checkpoint. A ``model_final.pth``
    does not override a pointer to a numbered checkpoint: it is then the end of an earlier, shorter
    run that was resumed with a longer schedule.
    """
    d = Path(directory)
    numbered = list_checkpoints(d, prefix)
    newest = numbered[-1] if numbered else None
    pointer = d / LAST_CHECKPOINT_FILE
    if pointer.is_file():
        try:
            name = pointer.read_text().strip()
        except OSError:
            name = ""
        target = d / name if name else None
        if target is not None and target.is_file():
            if newest is None:
                return target
            it = _iteration_of(target.name, prefix)
            if it is None:
                return target
            if it != _FINAL_ITERATION:
                finite = [p for p in numbered if _iteration_of(p.name, prefix) != _FINAL_ITERATION]
                if not finite:
                    return target
                newest = finite[-1]
            newest_it = _iteration_of(newest.name, prefix)
            if newest_it is None or it >= newest_it:
                return target
        elif name:
            logger.warning("%s names %s, which does not exist; using the newest numbered file", pointer, name)
    return newest


def prune_checkpoints(directory: str | os.PathLike[str], keep_last: int, prefix: str = "model") -> list[Path]:
    """Delete all but the newest ``keep_last`` numbered checkpoints; return the deleted paths.

    Never deletes ``<prefix>_final.pth``, the file ``last_checkpoint`` names, or any other file.
    """
    if int(keep_last) < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    d = Path(directory)
    numbered = [p for p in list_checkpoints(d, prefix) if _iteration_of(p.name, prefix) != _FINAL_ITERATION]
    pointer = d / LAST_CHECKPOINT_FILE
    protected = pointer.read_text().strip() if pointer.is_file() else ""
    removed = []
    for p in numbered[: max(len(numbered) - int(keep_last), 0)]:
        if p.name == protected:
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("could not delete old checkpoint %s: %s", p, e)
    return removed


# --------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """RNG states of python ``random``, numpy's global RNG, torch CPU and every CUDA device.

    Everything is a tensor, number, string or list, so it survives ``weights_only`` loading::

        {"python": {"version": int, "state": LongTensor[625], "gauss_next": float | None},
         "numpy": {"bit_generator": "MT19937", "keys": LongTensor[624], "pos": int,
                   "has_gauss": int, "cached_gaussian": float},
         "torch": ByteTensor, "cuda": [ByteTensor per device]  # "cuda" only with CUDA}
    """
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
        "numpy": {"bit_generator": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured; absent sections are left alone.

    Tensors may come back on any device (``map_location``); CUDA states are restored for
    ``min(saved, visible)`` devices, with a warning when the counts differ.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"rng state must be a dict from get_rng_state(), got {type(state).__name__}")
    unknown = set(state) - {"python", "numpy", "torch", "cuda"}
    if unknown:
        raise ValueError(f"rng state has unknown sections {sorted(unknown)}; expected python, numpy, torch, cuda")
    if "python" in state:
        py = state["python"]
        internal = tuple(int(x) for x in torch.as_tensor(py["state"]).tolist())
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
    if "numpy" in state:
        npst = state["numpy"]
        keys = torch.as_tensor(npst["keys"]).cpu().numpy().astype(np.uint32)
        np.random.set_state((npst["bit_generator"], keys, int(npst["pos"]), int(npst["has_gauss"]),
                             float(npst["cached_gaussian"])))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))
    if "cuda" in state and state["cuda"] is not None:
        saved = list(state["cuda"])
        if not torch.cuda.is_available():
            logger.warning("checkpoint has CUDA RNG state for %d device(s) but CUDA is not available", len(saved))
            return
        n = torch.cuda.device_count()
        if n != len(saved):
            logger.warning("checkpoint has CUDA RNG state for %d device(s), %d visible; restoring %d",
                           len(saved), n, min(n, len(saved)))
        for i in range(min(n, len(saved))):
            torch.cuda.set_rng_state(torch.as_tensor(saved[i]).cpu().to(torch.uint8), device=i)
