"""Process-wide runtime settings for the command-line tools.

``configure_runtime("keep")`` asks glibc's allocator (through ``mallopt``) to keep freed memory in
the process instead of handing it back to the operating system: big blocks come from the heap
instead of fresh ``mmap`` regions, and the heap is never trimmed. On virtual machines that return
freed pages to the host (balloon free-page reporting), every fresh page of a large temporary
otherwise costs a host fault, which can make an allocation-heavy step several times slower.
``"default"`` leaves the C library as it is. Libraries importing ``retinanet`` are never changed;
only the CLI calls this. Nothing happens on non-glibc systems.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["configure_runtime"]

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
