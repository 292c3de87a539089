"""Run every benchmark of issue 5 and write one JSON file with the figures and the ratio to each target.

    python benchmarks/run_all.py --out benchmarks/results.json
    python benchmarks/run_all.py --quick --out /tmp/r.json          # small sizes, for a smoke test
    python benchmarks/run_all.py --peer ../shared/peers --peer-pythonpath /tmp/tvlib --out r.json

Each benchmark runs in its own process, in both allocator modes (``--modes keep,default``; ``keep`` is
what the ``retinanet`` CLI sets via ``configure_runtime("keep")``, ``default`` is a plain Python
process), in this order per mode: bench_model (roofline, inference, post-processing, and the training
step in a further fresh process), bench_focal, bench_boxes (NMS, matcher in fresh processes).
With ``--peer DIR`` the torchvision peer's ``bench_torchvision.py`` (from DIR, run with this
interpreter and ``--peer-pythonpath`` prepended to PYTHONPATH so that its torchvision imports) runs
right after ours in each mode, for side-by-side numbers measured in the same session. That peer is
torchvision's default build without weights (trainable BatchNorm, all stages trained, other random
weights), not our configuration: the like-for-like comparison is ``benchmarks/bench_peer.py``.

Targets (issue 5) are evaluated on the ``keep`` run (the CLI's mode) and, where memory is concerned, on
the ``default`` run (RSS only means something there); every figure of both modes is in the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import machine_info  # noqa: E402


def loadavg() -> Optional[list[str]]:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[:3]
    except OSError:
        return None


LOADS: list[dict] = []  # the machine's load average around every benchmark process (noise check)


def run(cmd: list[str], env: Optional[dict] = None, cwd: Optional[str] = None) -> float:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    before = loadavg()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    LOADS.append(
        {
            "cmd": os.path.basename(cmd[1]) + " " + " ".join(cmd[2:4]),
            "load_before": before,
            "load_after": loadavg(),
            "wall_s": round(dt, 1),
        }
    )
    return dt


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def target(name: str, value: Optional[float], goal: float, kind: str, unit: str = "", note: str = "") -> dict:
    """kind 'min': value >= goal is met; 'max': value <= goal is met. ratio = value / goal."""
    if value is None:
        return {"target": name, "value": None, "goal": goal, "met": None, "note": note}
    met = value >= goal if kind == "min" else value <= goal
    return {
        "target": name,
        "value": round(value, 4),
        "goal": goal,
        "kind": f"{'>=' if kind == 'min' else '<='}",
        "unit": unit,
        "ratio_to_goal": round(value / goal, 3) if goal else None,
        "met": bool(met),
        "note": note,
    }


def evaluate_targets(res: dict) -> list[dict]:
    keep, default = res["modes"].get("keep"), res["modes"].get("default")
    main_run = keep or default
    out = []
    if main_run is None:
        return out
    f = main_run["focal"]["results"]
    ours = f["ours_int"]
    out.append(target("focal fwd+bwd speedup vs naive (keep)", ours["speedup_fwd_bwd_median"], 10.0, "min", "x"))
    if default is not None:
        fd = default["focal"]["results"]
        out.append(
            target(
                "focal fwd+bwd speedup vs naive (default)", fd["ours_int"]["speedup_fwd_bwd_median"], 10.0, "min", "x"
            )
        )
        mem = fd["ours_int"].get("mem_ratio_cold_mb")
        out.append(
            target("focal peak extra memory / naive (default, first call incl. gradient buffer)", mem, 0.2, "max", "x")
        )
        out.append(
            target(
                "focal peak extra memory / naive (default, steady state)",
                fd["ours_int"].get("mem_ratio_mb"),
                0.2,
                "max",
                "x",
            )
        )
    m = main_run["model"]
    for size, r in m.get("infer", {}).items():
        out.append(
            target(
                f"inference network GFLOP/s / conv roofline, {size} (fused)",
                r["fused"]["network_roofline_ratio"],
                0.90,
                "min",
                "x",
                note=f"unfused model: {r['unfused']['network_roofline_ratio']}",
            )
        )
    if "800x1333" in m.get("infer", {}):
        r = m["infer"]["800x1333"]["fused"]
        out.append(target("post-processing share of total, 800x1333", r["post_share_of_total"], 0.02, "max", "x"))
    for size, p in m.get("post", {}).items():
        out.append(
            target(
                f"post-processing worst case (score_thresh 0, {p['worst_case']['nms_in_boxes']} boxes, "
                f"{p['worst_case']['nms_in_classes']} classes into NMS), {size}",
                p["worst_case"]["median_ms"],
                30.0,
                "max",
                "ms",
            )
        )
    t = m.get("train")
    if t:
        out.append(target("training step GFLOP/s / conv roofline", t["step_roofline_ratio"], 0.80, "min", "x"))
        out.append(
            target("loss computation (matching + losses) share of step", t["loss_share_of_step"], 0.05, "max", "x")
        )
    td = default["model"].get("train") if default is not None else None
    if td:
        out.append(
            target(
                "training step peak RSS, default malloc (MB)",
                td["peak_rss_process_mb"],
                2100.0,
                "max",
                "MB",
                note="2.1 GB",
            )
        )
    if keep is not None and keep["model"].get("train"):
        out.append(
            target(
                "training step peak RSS, keep malloc (MB)",
                keep["model"]["train"]["peak_rss_process_mb"],
                2100.0,
                "max",
                "MB",
                note="keep retains freed memory, RSS is not comparable",
            )
        )
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--modes", default="keep,default")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes and few runs (smoke test, not for figures)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer", default=None, help="folder with the torchvision peer's bench_torchvision.py")
    ap.add_argument("--peer-pythonpath", default=None, help="prepended to PYTHONPATH for the peer (torchvision)")
    ap.add_argument("--skip", default="", help="comma list of: model, focal, boxes, peer")
    args = ap.parse_args(argv)
    skip = set(s for s in args.skip.split(",") if s)
    py = sys.executable
    tmp = tempfile.mkdtemp(prefix="retinanet_bench_")
    res: dict = {
        "machine": machine_info(),
        "command": " ".join([os.path.relpath(py), *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "modes": {},
        "cli_malloc_mode": "keep",
    }
    # quick (the smoke test): one small size, one timed run and no warmup; every section still runs
    sizes = "256x256" if args.quick else "512x512,800x1333"
    runs = 1 if args.quick else args.runs
    focal_shape = "2,12000,80" if args.quick else "2,120000,80"
    for mode in [m for m in args.modes.split(",") if m]:
        r: dict = {"wall_s": {}}
        if "model" not in skip:
            out = os.path.join(tmp, f"model_{mode}.json")
            cmd = [
                py,
                os.path.join(HERE, "bench_model.py"),
                "--malloc",
                mode,
                "--sizes",
                sizes,
                "--runs",
                str(runs),
                "--threads",
                str(args.threads),
                "--out",
                out,
            ]
            if args.quick:
                cmd += ["--warmup", "0", "--train-runs", "1", "--train-warmup", "0", "--train-size", "256"]
            r["wall_s"]["model"] = run(cmd)
            r["model"] = load(out)
        if "focal" not in skip:
            out = os.path.join(tmp, f"focal_{mode}.json")
            r["wall_s"]["focal"] = run(
                [
                    py,
                    os.path.join(HERE, "bench_focal.py"),
                    "--malloc",
                    mode,
                    "--shape",
                    focal_shape,
                    "--runs",
                    str(runs),
                    "--threads",
                    str(args.threads),
                    "--out",
                    out,
                ]
            )
            r["focal"] = load(out)
        if "boxes" not in skip:
            out = os.path.join(tmp, f"boxes_{mode}.json")
            cmd = [
                py,
                os.path.join(HERE, "bench_boxes.py"),
                "--malloc",
                mode,
                "--threads",
                str(args.threads),
                "--json",
                out,
            ]
            if args.quick:
                cmd += ["--repeats", "1", "--num-anchors", "5000", "--num-gt", "20"]
            r["wall_s"]["boxes"] = run(cmd)
            r["boxes"] = load(out)
        if args.peer and "peer" not in skip:
            out = os.path.join(tmp, f"peer_{mode}.json")
            env = dict(os.environ)
            if args.peer_pythonpath:
                env["PYTHONPATH"] = args.peer_pythonpath + os.pathsep + env.get("PYTHONPATH", "")
            cmd = [
                py,
                os.path.join(os.path.abspath(args.peer), "bench_torchvision.py"),
                "--sizes",
                sizes,
                "--runs",
                str(runs),
                "--warmup",
                "1",
                "--stress-runs",
                str(runs),
                "--train-runs",
                "1" if args.quick else "3",
                "--train-warmup",
                "0" if args.quick else "1",
                "--malloc",
                mode,
                "--out",
                out,
            ]
            r["wall_s"]["peer"] = run(cmd, env=env, cwd=os.path.abspath(args.peer))
            r["peer"] = load(out)
        res["modes"][mode] = r
    res["loadavg"] = LOADS
    res["targets"] = evaluate_targets(res)
    res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)
    print(f"wrote {args.out}", file=sys.stderr)
    for t in res["targets"]:
        mark = {True: "MET ", False: "MISS", None: "n/a "}[t["met"]]
        print(f"  [{mark}] {t['target']}: {t['value']} (goal {t.get('kind', '')} {t['goal']})", file=sys.stderr)
    return res


if __name__ == "__main__":
    main()
