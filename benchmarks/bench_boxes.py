"""Benchmark box ops: NMS / batched NMS time, and Matcher time and peak memory vs the naive full matrix.

    python benchmarks/bench_boxes.py [--threads 1] [--repeats 20] [--json out.json]

- nms / batched_nms on 1000 and 5000 candidate boxes (80 classes for batched; boxes clustered around
  40 objects like a detector's candidates; plus a uniform and a single-class variant for reference),
  median wall time in ms.
- Matcher.match on 500 gt x 200000 anchors (RetinaNet anchors of an 800 x 1344 image) against the
  naive approach (full box_iou matrix + the same rule), each in a fresh subprocess: wall time and peak
  extra RSS (VmHWM after resetting it by writing 5 to /proc/self/clear_refs, minus VmRSS before).
Prints a table and writes JSON (stdout or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from retinanet.ops import AnchorGenerator, Matcher, box_iou
from retinanet.ops.nms import batched_nms, nms


def candidates(n: int, classes: int, clustered: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if clustered:
        centres = torch.rand(40, 2, generator=g) * torch.tensor([1333.0, 800.0])
        size = 30 + torch.rand(40, 2, generator=g) * 300
        which = torch.randint(0, 40, (n,), generator=g)
        ctr = centres[which] + torch.randn(n, 2, generator=g) * size[which] * 0.1
        wh = size[which] * (1 + 0.2 * torch.randn(n, 2, generator=g)).clamp(min=0.3)
    else:
        ctr = torch.rand(n, 2, generator=g) * torch.tensor([1333.0, 800.0])
        wh = 20 + torch.rand(n, 2, generator=g) * 300
    boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def matcher_worker(kind: str, num_gt: int, num_anchors: int) -> dict:
    """Runs in a fresh process: one warm-up-free measurement of time and peak extra RSS."""
    sizes = [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]  # 800 x 1344 input
    anchors = AnchorGenerator().flat(sizes)[:num_anchors].clone()
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(num_gt, 2, generator=g) * torch.tensor([1300.0, 760.0])
    wh = 8 + torch.rand(num_gt, 2, generator=g) * 400
    gt = torch.cat([xy, xy + wh], 1)
    matcher = Matcher()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    rss0 = _status("VmRSS")
    t0 = time.perf_counter()
    if kind == "chunked":
        out = matcher.match(gt, anchors)
    else:
        out = matcher(box_iou(gt, anchors))
    dt = time.perf_counter() - t0
    peak = _status("VmHWM")
    return {
        "kind": kind,
        "ms": dt * 1e3,
        "peak_extra_mb": (peak - rss0) / 2**20,
        "hwm_reset": reset,
        "fg": int((out >= 0).sum()),
        "ignored": int((out == -2).sum()),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per NMS case (median reported)")
    p.add_argument("--num-gt", type=int, default=500)
    p.add_argument("--num-anchors", type=int, default=200000)
    p.add_argument("--skip-naive", action="store_true", help="skip the full-matrix matcher (needs ~1.5 GB)")
    p.add_argument(
        "--malloc",
        choices=["default", "keep"],
        default="default",
        help="allocator mode (retinanet.utils.tuning.configure_runtime); the CLI uses keep",
    )
    p.add_argument("--json", default=None, help="write results here (default: print to stdout)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from retinanet.utils.tuning import configure_runtime

    configure_runtime(args.malloc)
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(matcher_worker(args.worker, args.num_gt, args.num_anchors)))
        return {}

    results: dict = {
        "torch": torch.__version__,
        "threads": args.threads,
        "malloc": args.malloc,
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "nms": [],
        "matcher": [],
    }
    cases = [(1000, 80, True), (5000, 80, True), (5000, 80, False), (5000, 1, True), (5000, 1, False)]
    print(f"{'op':<12}{'boxes':>7}{'classes':>9}{'layout':>11}{'kept':>7}{'ms':>10}")
    for n, k, clustered in cases:
        b, s, idx = candidates(n, k, clustered)
        for name, fn in (("batched_nms", lambda: batched_nms(b, s, idx, 0.5)), ("nms", lambda: nms(b, s, 0.5))):
            if name == "nms" and k != 80:
                continue  # single class: nms == batched_nms
            ms = timed(fn, args.repeats)
            kept = int(fn().numel())
            layout = "clustered" if clustered else "uniform"
            results["nms"].append(
                {
                    "op": name,
                    "boxes": n,
                    "classes": k if name == "batched_nms" else 1,
                    "layout": layout,
                    "kept": kept,
                    "ms": round(ms, 3),
                }
            )
            print(f"{name:<12}{n:>7}{(k if name == 'batched_nms' else 1):>9}{layout:>11}{kept:>7}{ms:>10.2f}")

    kinds = ["chunked"] + ([] if args.skip_naive else ["naive"])
    print(f"\nmatcher {args.num_gt} gt x {args.num_anchors} anchors")
    for kind in kinds:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            kind,
            "--threads",
            str(args.threads),
            "--malloc",
            args.malloc,
            "--num-gt",
            str(args.num_gt),
            "--num-anchors",
            str(args.num_anchors),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results["matcher"].append(r)
        print(
            f"  {kind:<8} {r['ms']:9.1f} ms   peak extra RSS {r['peak_extra_mb']:8.1f} MB   "
            f"fg {r['fg']}  ignored {r['ignored']}"
        )
    if len(results["matcher"]) == 2:
        a, b = results["matcher"]
        if (a["fg"], a["ignored"]) != (b["fg"], b["ignored"]):
            raise SystemExit("chunked and naive matcher disagree")

    text = json.dumps(results, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return results


if __name__ == "__main__":
    main()
