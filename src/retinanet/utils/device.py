"""Which ``torch.device`` a process runs on, from a config value such as ``"auto"`` or ``"cuda:1"``.

:func:`resolve_device` maps ``"auto"`` to this process's GPU (``LOCAL_RANK`` under torchrun) when CUDA
is available and to the CPU otherwise; an explicit ``"cuda"`` without an index also takes the GPU of
``LOCAL_RANK`` (one GPU per process).
"""

from __future__ import annotations

import os

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The device named by ``name`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ...);
    ``RuntimeError`` for a CUDA device on a machine without CUDA."""
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process under torchrun
    return dev
