"""A training run's checkpoint folder: numbered checkpoints, the ``last_checkpoint`` pointer, pruning.

Numbered checkpoints are named ``model_0001000.pth`` (:func:`checkpoint_name`); ``model_final.pth``
sorts after every number. A checkpoint is a dict that :func:`retinanet.utils.serialization.load_file`
reads back, typically::

    {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
     "iteration": 1000, "rng": get_rng_state(), ...}

- :func:`save_checkpoint` writes it atomically (a kill or a full disk mid-write never destroys the
  previous checkpoint), then updates the ``last_checkpoint`` pointer file (detectron2's format: one
  line with the file name) and can prune the folder to the newest N.
- :func:`latest_checkpoint` picks the file to resume from; :func:`list_checkpoints` and
  :func:`prune_checkpoints` list and delete numbered checkpoints; :func:`remove_stale_temporaries`
  deletes the temporary files of writes that a killed process left behind.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from retinanet.utils.io import atomic_write_text
from retinanet.utils.serialization import CheckpointError, save_file

__all__ = [
    "LAST_CHECKPOINT_FILE",
    "checkpoint_name",
    "save_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "remove_stale_temporaries",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint"
_FINAL_ITERATION = float("inf")


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
    """Atomically save ``state`` to ``path`` (see :func:`retinanet.utils.serialization.save_file`:
    ``TypeError`` before the disk is touched for values that weights-only loading refuses, a
    :class:`CheckpointError` naming ``path`` for a failed write, the previous file untouched);
    return the path.

    ``update_last`` rewrites ``<dir>/last_checkpoint`` (atomically) to name this file;
    ``keep_last=N`` then deletes all but the newest N numbered checkpoints of the directory
    (see :func:`prune_checkpoints`).
    """
    path = Path(path)
    if keep_last is not None and int(keep_last) < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    save_file(path, state)
    if update_last:
        try:
            atomic_write_text(path.parent / LAST_CHECKPOINT_FILE, f"{path.name}\n")
        except OSError as e:
            raise CheckpointError.from_write_error(path, e) from e
    if keep_last is not None:
        prune_checkpoints(path.parent, keep_last)
    return path


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


def remove_stale_temporaries(directory: str | os.PathLike[str], prefix: str = "model") -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.<hex>.tmp``) of checkpoint and pointer writes
    whose process is gone; files of live processes (other writers) are left alone. Returns the
    deleted paths."""
    d = Path(directory)
    removed = []
    for p in list(d.glob(f".{prefix}_*.tmp")) + list(d.glob(f".{LAST_CHECKPOINT_FILE}.*.tmp")):
        parts = p.name.split(".")
        try:
            pid = int(parts[-3])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # that process is alive (another writer): leave its file alone
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            p.unlink()
            removed.append(p)
            logger.info("removed %s, left by an interrupted checkpoint write", p.name)
        except OSError:
            pass
    return removed
