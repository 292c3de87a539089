"""Ctrl-C and SIGTERM during training: finish the current step, write a checkpoint, stop.

:class:`StopRequest` is the flag the training loop polls after each step; :func:`install_stop_handlers`
makes SIGINT / SIGTERM set it (a second signal raises ``KeyboardInterrupt`` at once) and returns the
previous handlers for :func:`restore_handlers`. :func:`ignore_sigint` is the DataLoader workers'
``worker_init_fn``: Ctrl-C is the main process's business, and a worker killed by it would make the
main process fail on its next batch.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Any

__all__ = ["StopRequest", "install_stop_handlers", "restore_handlers", "ignore_sigint"]

log = logging.getLogger("retinanet.train")


@dataclass
class StopRequest:
    """Whether training should stop after the current step, and the signal that asked (0: none,
    e.g. a hook's request)."""

    requested: bool = False
    signum: int = 0


def install_stop_handlers(stop: StopRequest) -> dict[int, Any]:
    """Make SIGINT and SIGTERM set ``stop``; return the handlers they replaced (none when not
    called from the main thread, where handlers cannot be installed)."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        stop.requested, stop.signum = True, signum
        log.warning("stop requested (signal %d): finishing this step and writing a checkpoint", signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_stop_handlers` replaced."""
    for sig, h in previous.items():
        signal.signal(sig, h)


def ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore Ctrl-C (the main process handles it)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
