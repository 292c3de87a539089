"""Capturing and restoring every random number generator a training run draws from.

:func:`get_rng_state` returns the states of python ``random``, numpy's global RNG, torch CPU and
every CUDA device as plain tensors / numbers (so a checkpoint holding them loads with
``torch.load(weights_only=True)``); :func:`set_rng_state` restores them, for an exact resume.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state"]

logger = logging.getLogger(__name__)


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
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
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
        np.random.set_state(
            (npst["bit_generator"], keys, int(npst["pos"]), int(npst["has_gauss"]), float(npst["cached_gaussian"]))
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))
    if "cuda" in state and state["cuda"] is not None:
        saved = list(state["cuda"])
        if not torch.cuda.is_available():
            logger.warning("checkpoint has CUDA RNG state for %d device(s) but CUDA is not available", len(saved))
            return
        n = torch.cuda.device_count()
        if n != len(saved):
            logger.warning(
                "checkpoint has CUDA RNG state for %d device(s), %d visible; restoring %d",
                len(saved),
                n,
                min(n, len(saved)),
            )
        for i in range(min(n, len(saved))):
            torch.cuda.set_rng_state(torch.as_tensor(saved[i]).cpu().to(torch.uint8), device=i)
