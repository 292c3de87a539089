"""Machine-specific tuning, in one place: the C allocator mode of the command-line tools and the
private PyTorch call of the focal-loss kernel, each behind a small function with a plain fallback.
Their measured effect is in BENCHMARKS.md ("Machine-specific tuning").

``configure_runtime("keep")`` asks glibc's allocator (through ``mallopt``) to keep freed memory in
the process instead of handing it back to the operating system: big blocks come from the heap
instead of fresh ``mmap`` regions, and the heap is never trimmed. On virtual machines that return
freed pages to the host (balloon free-page reporting), every fresh page of a large temporary
otherwise costs a host fault, which can make an allocation-heavy step several times slower.
``"default"`` leaves the C library as it is. Libraries importing ``retinanet`` are never changed;
only the CLI calls this. Nothing happens on non-glibc systems.

``storage_use_count(t)`` reads how many references share a tensor's storage (torch's private
counter; ``None`` where the build lacks it), so a buffer can be reused only when nothing else holds it.

torch is imported on first use, so that the CLI can set the allocator mode before torch allocates.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["configure_runtime", "storage_use_count"]

log = logging.getLogger("retinanet.runtime")

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def configure_runtime(malloc: str = "keep") -> bool:
    """Apply the allocator mode; return True if the C library accepted it."""
    if malloc == "default":
        return True
    if malloc != "keep":
        raise ValueError(f"malloc mode must be 'keep' or 'default', got {malloc!r}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("mallopt not available; allocator left as it is")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_MAX, 0))  # no mmap'ed blocks: freed memory goes back to the heap
    ok &= bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))  # never trim the heap
    ok &= bool(mallopt(_M_TOP_PAD, 256 << 20))  # grow the heap in 256 MiB steps
    return ok


def _use_count(t: Tensor) -> int:
    import torch

    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


@functools.lru_cache(maxsize=None)
def _has_storage_use_count() -> bool:
    import torch

    try:
        t = torch.empty(4)
        base = _use_count(t)
        view = t[1:]
        ok = _use_count(t) == base + 1
        del view
        return ok and _use_count(t) == base
    except Exception:  # pragma: no cover - private API missing on this torch build
        return False


def storage_use_count(t: Tensor) -> Optional[int]:
    """How many references (tensors, views, autograd's saved tensors, ``.grad``) share ``t``'s storage,
    or None where this torch build cannot tell (then no buffer may be reused)."""
    return _use_count(t) if _has_storage_use_count() else None
