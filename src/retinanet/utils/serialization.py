"""Reading and writing torch / safetensors files without ever executing pickled code.

The one place where checkpoints and weight files are read and written. A file holds a ``dict``
made only of tensors, numbers, strings, bytes, ``None``, ``torch.Size``, ``torch.dtype``,
``torch.device`` and (nested) dicts / lists / tuples / sets of them, so that it loads with
``torch.load(weights_only=True)``; a ``.safetensors`` file holds a flat ``{name: tensor}`` dict.

- :func:`save_file` checks that ``state`` is of that kind (``TypeError`` naming the first offending
  entry, before the disk is touched) and writes it atomically (:func:`retinanet.utils.io.atomic_write`);
  a failed write (disk full, permissions) becomes a :class:`CheckpointError` naming the file.
- :func:`load_file` reads ``.pth`` / ``.pt`` (any suffix but ``.safetensors``) with
  ``torch.load(weights_only=True)`` and ``.safetensors`` with the ``safetensors`` package, and turns
  every failure into a :class:`CheckpointError` that names the file and says what is wrong with it
  (empty, truncated, corrupt, not a dict) or an :class:`UnsafeCheckpointError` naming the pickled
  globals it refused to run.
"""

from __future__ import annotations

import errno
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from retinanet.utils.io import atomic_write

__all__ = ["CheckpointError", "UnsafeCheckpointError", "save_file", "load_file"]

_SAFE_LEAF_TYPES = (
    str,
    bytes,
    int,
    float,
    bool,
    complex,
    type(None),
    torch.Size,
    torch.dtype,
    torch.device,
    torch.Tensor,
    nn.Parameter,
)
_SAFE_CONTAINER_TYPES = (dict, OrderedDict, Counter, list, tuple, set)  # Counter: MultiStepLR
_MAX_LISTED = 10


class CheckpointError(ValueError):
    """A checkpoint could not be written or read; the message names the file and the reason."""

    @classmethod
    def from_write_error(cls, path: Path, error: OSError) -> "CheckpointError":
        """The error for an ``OSError`` raised while writing ``path`` (the old file is untouched)."""
        reason = error.strerror or str(error)
        if error.errno == errno.ENOSPC:
            reason = "no space left on device"
        return cls(f"could not write checkpoint {path}: {reason}; the previous file (if any) is untouched")


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled objects (code) that weights-only loading refuses to execute."""


# --------------------------------------------------------------------------------------------
# write
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


def _safetensors_writer(path: Path, state: Mapping[str, Any]) -> Callable[[IO[bytes]], None]:
    try:
        import safetensors.torch
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
        f.write(safetensors.torch.save(tensors))

    return writer


def save_file(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (``.safetensors``: a flat ``{name: tensor}`` dict);
    return the path.

    Raises ``TypeError`` before touching the disk if ``state`` holds anything that weights-only
    loading would refuse, and :class:`CheckpointError` naming ``path`` on any ``OSError``; the
    temporary file is then removed and the previous file at ``path`` is left untouched.
    """
    path = Path(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state for {path} must be a dict, got {type(state).__name__}")
    if path.suffix == ".safetensors":
        writer = _safetensors_writer(path, state)
    else:
        _check_weights_only_safe(dict(state), "", set())
        payload = dict(state)

        def writer(f: IO[bytes]) -> None:
            torch.save(payload, f)

    try:
        return atomic_write(path, writer)
    except OSError as e:
        raise CheckpointError.from_write_error(path, e) from e


# --------------------------------------------------------------------------------------------
# read
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
    """Why a zip-format file is damaged, or None if the archive itself is intact."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"it is truncated or corrupt ({e})"
    if bad is not None:
        return f"it is corrupt (bad CRC in member {bad})"
    return None


def _first_unsupported_global(msg: str) -> str:
    m = re.search(r"GLOBAL (\S+)", msg)
    return m.group(1) if m else "unsupported pickle content"


def _corrupt_message(path: Path, is_zip: bool, e: BaseException, kind: str) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:200]
    if is_zip:
        problem = _zip_problem(path) or "it could not be read"
        return f"{kind} {path} cannot be loaded: {problem}"
    return f"{kind} {path} cannot be loaded: it is truncated or not a {kind} ({type(e).__name__}: {first})"


def _load_safetensors(path: Path, map_location: Any, kind: str) -> dict[str, Any]:
    try:
        import safetensors.torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise CheckpointError(
            f"cannot read {path}: the safetensors package is not installed (pip install safetensors)"
        ) from e
    if not isinstance(map_location, (str, torch.device)):
        raise TypeError(
            f"map_location for the safetensors file {path} must be a device string or torch.device, "
            f"got {type(map_location).__name__}"
        )
    try:
        return dict(safetensors.torch.load_file(str(path), device=str(map_location)))
    except Exception as e:  # SafetensorError and friends
        raise CheckpointError(f"{kind} {path} cannot be loaded: it is truncated or not a safetensors file ({e})") from e


def load_file(path: str | os.PathLike[str], map_location: Any = "cpu", *, kind: str = "checkpoint") -> dict[str, Any]:
    """Load the dict stored in ``path`` without ever executing pickled code.

    ``.safetensors`` files come back as ``{name: tensor}``; any other suffix goes through
    ``torch.load(weights_only=True)`` and ``map_location``. ``kind`` names the file in messages
    (``"checkpoint"``, ``"weights file"``). Errors: ``FileNotFoundError`` if the file does not exist;
    :class:`UnsafeCheckpointError` if it holds pickled objects that are not plain data;
    :class:`CheckpointError` if it is empty, truncated, corrupt, not a torch file, or not a dict at
    the top level.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        return _load_safetensors(path, map_location, kind)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read {kind} {path}: {e.strerror or e}") from e
    if not head:
        raise CheckpointError(f"{kind} {path} is empty (0 bytes): truncated or not a {kind}")
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
        raise CheckpointError(_corrupt_message(path, is_zip, e, kind)) from e
    except Exception as e:  # torch raises RuntimeError / EOFError / OSError / KeyError / ...
        if is_zip and _zip_problem(path) is None:
            # the archive is intact, so the problem is elsewhere (e.g. map_location)
            raise CheckpointError(f"could not load {kind} {path}: {type(e).__name__}: {e}") from e
        raise CheckpointError(_corrupt_message(path, is_zip, e, kind)) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a {kind}: it holds a {type(obj).__name__}, expected a dict")
    return obj
