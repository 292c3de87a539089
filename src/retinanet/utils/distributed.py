"""Process-group helpers for DistributedDataParallel launched by ``torchrun``.

``torchrun --nproc_per_node N -m retinanet train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them everything runs as a single process (rank 0 of 1). The backend is gloo
on CPU and nccl on CUDA; the rendezvous is ``env://`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
``WORLD_SIZE``), so a launcher other than torchrun only has to set those four variables.

Collectives that every rank must reach together: :func:`barrier`, :func:`all_reduce_mean`,
:func:`max_over_ranks` / :func:`any_rank` (e.g. a stop request from a signal that reached only some
processes) and :func:`raise_if_any_failed` (an error on one rank, e.g. rank 0 failing to write a
checkpoint, raised on every rank instead of leaving the others blocked in the next collective).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "all_reduce_mean",
    "all_gather_object",
    "max_over_ranks",
    "any_rank",
    "raise_if_any_failed",
    "RankFailed",
    "env_rank",
    "cleanup",
]


class RankFailed(RuntimeError):
    """Another process of the group failed; raised on the processes that did not."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def env_rank() -> int:
    """This process's rank from the launcher's environment (valid before the group is joined)."""
    if is_distributed():
        return rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def init_distributed(device: torch.device) -> bool:
    """Join the process group described by torchrun's environment; return True if distributed."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (a copy; the input is unchanged)."""
    out = values.detach().clone()
    if is_distributed():
        dist.all_reduce(out)
        out /= world_size()
    return out


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def max_over_ranks(value: int) -> int:
    """The largest of every rank's ``value`` (a collective under DDP; ``value`` itself otherwise)."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on at least one (a collective under DDP)."""
    return max_over_ranks(1 if flag else 0) > 0


def raise_if_any_failed(error: BaseException | None) -> None:
    """Collective error check: re-raise ``error`` on the rank that had it, and raise
    :class:`RankFailed` naming the failing rank and its message on every other rank. A no-op when
    no rank failed; outside DDP it just raises ``error`` if given."""
    if not is_distributed():
        if error is not None:
            raise error
        return
    msg = None if error is None else f"{type(error).__name__}: {error}"
    msgs = all_gather_object(msg)
    if error is not None:
        raise error
    for r, m in enumerate(msgs):
        if m is not None:
            raise RankFailed(f"process {r} of {len(msgs)} failed: {m}")


def cleanup(synchronize: bool = False) -> None:
    """Leave the process group, after freeing what still holds it.

    Objects that hold the group (a DistributedDataParallel wrapper and its reducer) can sit in a
    reference cycle (the frames of a lazy ``import torch._dynamo`` inside the optimizer's
    constructor keep the caller's frame, and so the Trainer, alive). Left to the interpreter's exit,
    they are destroyed during finalization, after the group, and gloo aborts the process
    ("terminate called without an active exception": rank 1 of a 2-process run, 1 run in 4 here).
    So a garbage collection runs first. ``synchronize=True`` (work ended normally on every rank)
    also waits for all ranks before tearing down; after an error that barrier is skipped, since the
    other ranks may never reach it."""
    if is_distributed():
        import gc

        gc.collect()
        try:
            if synchronize:
                dist.barrier()
        finally:
            dist.destroy_process_group()
