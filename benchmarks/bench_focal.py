"""Benchmark of the focal loss: naive torch formula vs retinanet.losses.sigmoid_focal_loss (CPU).

Logits [B, N, K] (default the RetinaNet hot shape 2 x 120000 x 80, ~prior-initialised values), class
codes with ``--pos-frac`` positives (rest background). Variants, all reduction "sum":

  naive        torchvision's formula in plain torch ops with dense one-hot float targets
  ours_dense   sigmoid_focal_loss with the same dense one-hot targets
  ours_int     sigmoid_focal_loss with integer class codes [B, N] (the detector's hot path)
  ours_int_recompute  the same kernel called directly (no argument checks), the gradient recomputed in
                      backward instead of stashed (for reference)

For each: median / min ms of the forward (grad enabled, as in training) and of forward + backward,
and the peak extra resident memory of one forward + backward (RSS high-water mark, reset through
/proc/self/clear_refs). For our variants the steady state reuses the gradient buffer kept from the
previous call; ``peak_extra_cold_mb`` is the first call after dropping it (includes the gradient).

    python benchmarks/bench_focal.py --shape 2,120000,80 --pos-frac 0.01 --runs 5 --warmup 1 --out f.json
    (--malloc keep: glibc keeps freed memory, as the CLI sets it; default: the machine as it is)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from retinanet.losses import sigmoid_focal_loss
from retinanet.ops.focal_kernel import fused_focal_loss, release_buffers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import release_free_memory, reset_peak_rss, status_kb  # noqa: E402


def naive_focal_sum(x: torch.Tensor, y: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """The reference: sigmoid, BCE with logits, p_t, (1 - p_t)^gamma, alpha_t, sum."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * ((1 - p_t) ** gamma)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return (alpha_t * loss).sum()


def peak_extra_mb(fn: Callable[[], None]) -> Optional[float]:
    """Peak RSS above the starting RSS while running ``fn`` (None where /proc cannot tell)."""
    gc.collect()
    release_free_memory()
    if not reset_peak_rss():
        return None
    base = status_kb("VmRSS")
    fn()
    hwm = status_kb("VmHWM")
    if base is None or hwm is None:
        return None
    return max(hwm - base, 0) / 1024.0


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="2,120000,80", help="B,N,K of the logits")
    ap.add_argument("--pos-frac", type=float, default=0.01, help="fraction of anchors that are positive")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--malloc",
        choices=["default", "keep"],
        default="default",
        help="allocator mode (retinanet.utils.tuning.configure_runtime); the CLI uses keep",
    )
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)

    from retinanet.utils.tuning import configure_runtime

    configure_runtime(args.malloc)
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    if len(shape) < 2:
        raise SystemExit(f"bench_focal: --shape needs at least N,K, got {args.shape!r}")
    k = shape[-1]
    g = torch.Generator().manual_seed(args.seed)
    x = (torch.randn(shape, generator=g) - 4.6).requires_grad_()  # ~ prior pi = 0.01
    codes = torch.full(shape[:-1], -1, dtype=torch.long)
    pos = torch.rand(shape[:-1], generator=g) < args.pos_frac
    codes[pos] = torch.randint(0, k, (int(pos.sum()),), generator=g)
    dense = torch.zeros(shape)
    dense[pos] = F.one_hot(codes[pos], k).float()

    variants: dict[str, Callable[[], torch.Tensor]] = {
        "naive": lambda: naive_focal_sum(x, dense),
        "ours_dense": lambda: sigmoid_focal_loss(x, dense, reduction="sum"),
        "ours_int": lambda: sigmoid_focal_loss(x, codes, reduction="sum"),
        "ours_int_recompute": lambda: fused_focal_loss(x, codes, 0.25, 2.0, summed=True, stash_grad=False),
    }

    results: dict[str, dict] = {}
    values: dict[str, float] = {}
    grads: dict[str, torch.Tensor] = {}
    for name, fn in variants.items():
        fwd, tot = [], []
        for i in range(args.warmup + args.runs):
            x.grad = None
            gc.collect()
            t0 = time.perf_counter()
            loss = fn()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if i >= args.warmup:
                fwd.append((t1 - t0) * 1e3)
                tot.append((t2 - t0) * 1e3)
        values[name] = float(loss.detach())
        grads[name] = x.grad[:1].clone()  # a slice, to keep memory flat
        x.grad = None

        def one() -> None:
            fn().backward()
            x.grad = None

        mem = peak_extra_mb(one)
        release_buffers()
        x.grad = None
        mem_cold = peak_extra_mb(one) if name != "naive" else mem
        results[name] = {
            "fwd_ms_median": statistics.median(fwd),
            "fwd_ms_min": min(fwd),
            "fwd_bwd_ms_median": statistics.median(tot),
            "fwd_bwd_ms_min": min(tot),
            "peak_extra_mb": mem,
            "peak_extra_cold_mb": mem_cold,
            "loss": values[name],
        }
        release_buffers()

    ref = results["naive"]
    for name, r in results.items():
        r["speedup_fwd_bwd_median"] = ref["fwd_bwd_ms_median"] / r["fwd_bwd_ms_median"]
        r["speedup_fwd_median"] = ref["fwd_ms_median"] / r["fwd_ms_median"]
        for key in ("peak_extra_mb", "peak_extra_cold_mb"):
            if r[key] is not None and ref["peak_extra_mb"]:
                r[key.replace("peak_extra", "mem_ratio")] = r[key] / ref["peak_extra_mb"]
        r["loss_rel_diff_vs_naive"] = abs(r["loss"] - values["naive"]) / max(abs(values["naive"]), 1e-30)
        r["grad_max_abs_diff_vs_naive"] = float((grads[name] - grads["naive"]).abs().max())

    out = {
        "shape": list(shape),
        "pos_frac": args.pos_frac,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": args.threads,
        "malloc": args.malloc,
        "torch": torch.__version__,
        "results": results,
    }
    print(f"focal loss sum, logits {list(shape)} float32, {args.threads} threads, {args.runs} runs")
    print(
        f"{'variant':20s} {'fwd med':>8s} {'fwd min':>8s} {'f+b med':>8s} {'f+b min':>8s} "
        f"{'x naive':>8s} {'mem MB':>8s} {'cold MB':>8s} {'mem x':>6s}"
    )
    for name, r in results.items():
        mem = "n/a" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
        cold = "n/a" if r["peak_extra_cold_mb"] is None else f"{r['peak_extra_cold_mb']:.1f}"
        ratio = r.get("mem_ratio_cold_mb")
        print(
            f"{name:20s} {r['fwd_ms_median']:8.1f} {r['fwd_ms_min']:8.1f} {r['fwd_bwd_ms_median']:8.1f} "
            f"{r['fwd_bwd_ms_min']:8.1f} {r['speedup_fwd_bwd_median']:8.1f} {mem:>8s} {cold:>8s} "
            f"{'n/a' if ratio is None else f'{ratio:.2f}':>6s}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
