"""Atomic file writes: a reader sees either the old file or the complete new one, never a part.

:func:`atomic_write` ``(path, write)`` hands ``write`` a binary file object on a temporary file in
the destination folder, then flushes, fsyncs and renames it over ``path``; :func:`atomic_write_text`
and :func:`atomic_write_json` write a ``str`` (UTF-8) or a JSON document the same way. Every file the
project writes for a user (checkpoints, configs, metrics, results) goes through these.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_json"]


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(f)``, all or nothing; return ``path`` as a :class:`Path`.

    ``write(f)`` receives a binary file object opened on a temporary file in the same directory
    (``.<name>.<pid>.<hex>.tmp``); it is flushed, fsynced and renamed over ``path``. On any
    exception (``OSError`` such as ENOSPC, ``KeyboardInterrupt``, an error inside ``write``) the
    temporary file is removed, ``path`` is untouched and the exception propagates. The parent
    directory is created if needed.
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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``; return the path."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = None, separators: tuple[str, str] | None = None
) -> Path:
    """Atomically write ``json.dumps(obj, indent=indent, separators=separators)`` to ``path``.

    The document is encoded before the file is opened, so an object that is not JSON-serializable
    raises ``TypeError`` without touching the disk.
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent, separators=separators))
