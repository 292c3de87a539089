"""What every export module shares: :class:`ExportError`, the metadata file name and atomic writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from retinanet.utils.io import atomic_write

__all__ = ["ExportError", "METADATA_FILE", "write_atomic"]

METADATA_FILE = "retinanet.json"


class ExportError(ValueError):
    """Export failed or its check found a difference; the message says why (and what to install)."""


def write_atomic(out: Path, write: Callable[[Any], None]) -> None:
    """Write ``out`` through a temporary file (no partial file on failure); ExportError on OSError."""
    try:
        atomic_write(out, write)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from e
