"""Helpers shared by the benchmarks: timing, peak RSS, machine description, allocator mode."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from typing import Callable, Optional

import torch


def setup(threads: int, malloc: str) -> None:
    """Apply the allocator mode first (as the CLI does), then the thread counts."""
    from retinanet.utils.tuning import configure_runtime

    configure_runtime(malloc)
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def summarize(samples_s: list[float]) -> dict:
    ms = [s * 1e3 for s in samples_s]
    return {
        "median_ms": round(statistics.median(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "n": len(ms),
        "samples_ms": [round(v, 2) for v in ms],
    }


def time_fn(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> Optional[float]:
    kb = status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def release_free_memory() -> None:
    """Hand the allocator's free heap pages back to the OS (glibc ``malloc_trim(0)``; a no-op
    elsewhere), so that RSS measured next counts only what is really in use. Without it a
    measurement can read 0 MB: the measured code reuses pages freed earlier but still resident."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> Optional[float]:
    kb = status_kb("VmHWM")
    return None if kb is None else round(kb / 1024, 1)


def lifetime_peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        capability = None
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    except OSError:
        load = None
    return {
        "cpu_model": cpu,
        "os_cpu_count": os.cpu_count(),
        "avx2": " avx2" in flags,
        "avx512f": " avx512f" in flags,
        "torch": torch.__version__,
        "torch_cpu_capability": capability,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "loadavg_at_start": load,
    }
