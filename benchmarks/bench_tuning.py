"""A/B benchmark of the machine-specific tuning in ``retinanet.utils.tuning`` against its plain fallback.

Sections (CPU; the focal loss is sigmoid_focal_loss with integer class codes, 1% positives,
reduction "sum", forward + backward, on logits [B, N, K]):

  reuse    the focal kernel's gradient buffer reused across calls (the private storage use count),
           in each malloc mode, against the fallback that allocates a fresh logits-sized buffer every call (the probe
           patched to "not available"); wall and process CPU time, minor page faults per call, the
           RSS held between calls and the peak RSS of one call
  malloc   the allocator mode ``keep`` (what the CLI sets) against ``default``, in alternating child
           processes (the mode cannot be undone inside a process): the naive focal formula, our
           focal loss, and three 1x1 convolutions 256 -> 256 on [2, 256, 128, 128] (forward + backward)

A/B in one process: the variants alternate within every repetition (order rotated), each block one
untimed warm-up call then one timed call; the figure is the median of the per-repetition ratios
``variant / as built`` (above 1: the tuned path is faster), with the quartiles as the spread. The
machine is shared, so process CPU time (one thread by default) is reported beside wall time.

    python benchmarks/bench_tuning.py                      # full: 2,120000,80, both malloc modes
    python benchmarks/bench_tuning.py --quick              # seconds: 2,12000,80, default mode only
    python benchmarks/bench_tuning.py --out tuning.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    machine_info,
    peak_rss_mb,
    release_free_memory,
    reset_peak_rss,
    rss_mb,
    setup,
    summarize,
    time_fn,
)


def quartiles(values: list[float]) -> dict:
    v = sorted(values)
    q25, q75 = v[round(0.25 * (len(v) - 1))], v[round(0.75 * (len(v) - 1))]
    return {"median": round(statistics.median(v), 4), "q25": round(q25, 4), "q75": round(q75, 4)}


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_block(fn: Callable[[], object]) -> tuple[float, float, int]:
    """One warm-up call, then (wall s, process CPU s, minor page faults) of one timed call."""
    fn()
    c0, f0 = time.process_time(), minor_faults()
    (wall,) = time_fn(fn, runs=1, warmup=0)
    return wall, time.process_time() - c0, minor_faults() - f0


def interleaved(variants: dict[str, Callable[[], object]], setters: dict[str, Callable[[], None]], reps: int) -> dict:
    """Alternate the variants (rotated order) ``reps`` times; ratios are against the first variant."""
    names = list(variants)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            setters[n]()
            w, c, f = timed_block(variants[n])
            wall[n].append(w)
            cpu[n].append(c)
            faults[n].append(f)
    setters[names[0]]()
    ref = names[0]
    out = {}
    for n in names:
        out[n] = {
            "wall": summarize(wall[n]),
            "cpu": summarize(cpu[n]),
            "minor_faults_median": statistics.median(faults[n]),
        }
        if n != ref:
            out[n]["wall_ratio"] = quartiles([a / b for a, b in zip(wall[n], wall[ref])])
            out[n]["cpu_ratio"] = quartiles([a / b for a, b in zip(cpu[n], cpu[ref])])
    return out


def focal_inputs(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ~ the prior-initialised head (as bench_focal) and class codes with 1% positives."""
    g = torch.Generator().manual_seed(seed)
    k = shape[-1]
    x = (torch.randn(shape, generator=g) - 4.6).requires_grad_()
    codes = torch.full(shape[:-1], -1, dtype=torch.long)
    pos = torch.rand(shape[:-1], generator=g) < 0.01
    codes[pos] = torch.randint(0, k, (int(pos.sum()),), generator=g)
    return x, codes


def focal_step(x: torch.Tensor, codes: torch.Tensor) -> Callable[[], None]:
    from retinanet.losses import sigmoid_focal_loss

    def step() -> None:
        x.grad = None
        sigmoid_focal_loss(x, codes, reduction="sum").backward()
        x.grad = None

    return step


def rss_of(fn: Callable[[], None]) -> dict:
    """RSS held before a call (after a warm-up call) and the peak RSS during one call."""
    fn()
    gc.collect()
    release_free_memory()
    held = rss_mb()
    peak = peak_rss_mb() if reset_peak_rss() else None
    fn()
    peak = peak_rss_mb() if peak is not None else None
    return {"held_mb": held, "peak_mb": peak}


def bench_reuse(shape: tuple[int, ...], reps: int) -> dict:
    from retinanet.ops.focal_kernel import release_buffers
    from retinanet.utils import tuning

    probe = tuning._has_storage_use_count
    x, codes = focal_inputs(shape)
    step = focal_step(x, codes)

    def as_built() -> None:
        tuning._has_storage_use_count = probe

    def plain() -> None:
        tuning._has_storage_use_count = lambda: False
        release_buffers()

    try:
        res = interleaved({"reuse": step, "no_reuse": step}, {"reuse": as_built, "no_reuse": plain}, reps)
        for name, setter in (("reuse", as_built), ("no_reuse", plain)):
            setter()
            res[name].update(rss_of(step))
    finally:
        tuning._has_storage_use_count = probe
        release_buffers()
    return res


def malloc_worker(shape: tuple[int, ...], runs: int) -> dict:
    """One child process of the malloc A/B (its mode already applied): median ms of each workload."""
    x, codes = focal_inputs(shape)
    dense = torch.zeros(shape)
    pos = codes >= 0
    dense[pos] = F.one_hot(codes[pos], shape[-1]).float()

    def naive() -> None:
        p = torch.sigmoid(x)
        ce = F.binary_cross_entropy_with_logits(x, dense, reduction="none")
        p_t = p * dense + (1 - p) * (1 - dense)
        loss = (0.25 * dense + 0.75 * (1 - dense)) * ce * (1 - p_t) ** 2
        loss.sum().backward()
        x.grad = None

    torch.manual_seed(0)
    convs = torch.nn.Sequential(*[m for _ in range(3) for m in (torch.nn.Conv2d(256, 256, 1), torch.nn.ReLU())])
    feats = torch.randn(2, 256, 128, 128)

    def conv_step() -> None:
        convs.zero_grad(set_to_none=True)
        convs(feats).sum().backward()

    out = {}
    for name, fn in (("naive_focal", naive), ("ours_focal", focal_step(x, codes)), ("conv1x1_x3", conv_step)):
        out[name] = statistics.median(time_fn(fn, runs=runs, warmup=1)) * 1e3
    return out


def bench_malloc(shape: tuple[int, ...], rounds: int, runs: int, threads: int) -> dict:
    """Alternate child processes default / keep (order swapped every round); ratio default / keep."""
    per_mode: dict[str, list[dict]] = {"default": [], "keep": []}
    for r in range(rounds):
        for mode in ("default", "keep") if r % 2 == 0 else ("keep", "default"):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                "malloc",
                "--malloc",
                mode,
                "--threads",
                str(threads),
                "--shapes",
                ",".join(map(str, shape)),
                "--reps",
                str(runs),
            ]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            per_mode[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = {}
    for name in per_mode["default"][0]:
        d = [m[name] for m in per_mode["default"]]
        k = [m[name] for m in per_mode["keep"]]
        out[name] = {
            "default_ms": [round(v, 1) for v in d],
            "keep_ms": [round(v, 1) for v in k],
            "default_over_keep": quartiles([a / b for a, b in zip(d, k)]),
        }
    return out


def run_mode(shapes: list[tuple[int, ...]], reps: int) -> dict:
    """The in-process A/Bs under the allocator mode already applied."""
    return {"reuse": {",".join(map(str, s)): bench_reuse(s, reps) for s in shapes}}


def ratio_text(r: dict) -> str:
    return f"{r['median']:.3f} [{r['q25']:.2f}, {r['q75']:.2f}]"


def report(res: dict) -> None:
    print(
        f"bench_tuning: {res['threads']} thread(s), {res['reps']} interleaved repetitions; ratios are "
        f"median [q25, q75] of per-repetition ratios; load {res['machine']['loadavg_at_start']} -> "
        f"{res['loadavg_at_end']}"
    )
    for mode, run in res["modes"].items():
        for shape, r in run["reuse"].items():
            nr = r["no_reuse"]
            print(
                f"[{mode}] reuse {shape}: reuse {r['reuse']['wall']['median_ms']:.1f} ms wall / "
                f"{r['reuse']['cpu']['median_ms']:.1f} ms cpu, {r['reuse']['minor_faults_median']:.0f} faults; "
                f"no reuse {nr['wall']['median_ms']:.1f} / {nr['cpu']['median_ms']:.1f} ms, "
                f"{nr['minor_faults_median']:.0f} faults; no_reuse / reuse: wall {ratio_text(nr['wall_ratio'])} "
                f"cpu {ratio_text(nr['cpu_ratio'])}; RSS held {r['reuse']['held_mb']} vs {nr['held_mb']} MB, "
                f"peak {r['reuse']['peak_mb']} vs {nr['peak_mb']} MB"
            )
    for name, r in res.get("malloc", {}).items():
        print(
            f"malloc {name}: default {r['default_ms']} ms, keep {r['keep_ms']} ms; default / keep "
            f"{ratio_text(r['default_over_keep'])}"
        )


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shape, few repetitions, default mode only")
    ap.add_argument("--shapes", default=None, help="B,N,K of the logits, ';'-separated (default 2,120000,80)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 20, quick 3)")
    ap.add_argument("--modes", default=None, help="malloc modes of the in-process A/Bs (default keep,default)")
    ap.add_argument("--malloc-rounds", type=int, default=None, help="child-process pairs of the malloc A/B")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--malloc", choices=["default", "keep"], default="default", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["mode", "malloc"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args(argv)
    shapes = [
        tuple(int(v) for v in s.split(","))
        for s in (args.shapes or ("2,12000,80" if args.quick else "2,120000,80")).split(";")
    ]
    reps = args.reps or (3 if args.quick else 20)

    if args.worker:
        setup(args.threads, args.malloc)
        res = malloc_worker(shapes[0], reps) if args.worker == "malloc" else run_mode(shapes, reps)
        print(json.dumps(res))
        return res

    modes = (args.modes or ("default" if args.quick else "keep,default")).split(",")
    rounds = args.malloc_rounds if args.malloc_rounds is not None else (0 if args.quick else 3)
    res: dict = {
        "threads": args.threads,
        "reps": reps,
        "shapes": [list(s) for s in shapes],
        "modes": {},
        "machine": machine_info(),
    }
    if modes == ["default"]:
        setup(args.threads, "default")
        res["modes"]["default"] = run_mode(shapes, reps)
    else:
        for mode in modes:
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                "mode",
                "--malloc",
                mode,
                "--threads",
                str(args.threads),
                "--shapes",
                ";".join(",".join(map(str, s)) for s in shapes),
                "--reps",
                str(reps),
            ]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            res["modes"][mode] = json.loads(done.stdout.strip().splitlines()[-1])
        torch.set_num_threads(args.threads)
    if rounds:
        res["malloc"] = bench_malloc(shapes[0], rounds, max(3, reps // 4), args.threads)
    res["loadavg_at_end"] = machine_info()["loadavg_at_start"]
    report(res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
