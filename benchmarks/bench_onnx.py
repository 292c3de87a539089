"""Inference back-ends of ours on the CPU (issue 18): eager fp32, ONNX Runtime fp32 and eager bf16, on the same
images, alternated round by round; every figure printed comes from this run.

    .venv/bin/python benchmarks/bench_onnx.py --out /tmp/onnx.json
    .venv/bin/python benchmarks/bench_onnx.py --checkpoint RUN/model_final.pth   # + bf16's AP change

Model: the like-for-like model of ``bench_peer.py`` (preset ``torchvision_retinanet_resnet50_fpn``, the
parity tool's seeded weights, built from our own key names, so no torchvision is needed), saved to a
temporary file and exported with ``export_model(fmt="onnx")``: once when the file takes any size, else
once per size. Batch 1, raw RGB
0-1 input of exactly the size given. Variants per round, in rotating order:

- ``eager``: the model as exported (unfused, NCHW), ``model(images)``;
- ``eager_fused_cl``: ``fuse_for_inference()`` with channels_last, direct convolutions (what ``Predictor``
  runs with ``test.winograd: false``);
- ``eager_wino``: ``fuse_for_inference(winograd=True)`` with channels_last, what ``Predictor`` runs by
  default (large 3x3 convs through Winograd F(4x4, 3x3));
- ``ort``: ``onnxruntime.InferenceSession`` on the file (all graph optimizations, ``--threads`` intra-op
  threads, 1 inter-op); what the file computes is named by its outputs: the whole detector (boxes,
  scores, labels, num_detections) or, in files without NMS, the network (cls_logits, box_deltas), in
  which case the eager variants run the same network (``DetectorNetwork``) so that the scopes match;
- ``eager_bf16``: ``eager_fused_cl`` under ``torch.autocast("cpu", dtype=torch.bfloat16)``, run only when
  the CPU has native bf16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo) or with ``--bf16 force``
  (emulated elsewhere, much slower: for checking the path, not for figures).

The ORT detections are compared with the eager ones by the parity tool's comparison (``n_tv``: eager). With
``--checkpoint`` (a demo run's ``model_final.pth``) the AP of that checkpoint on its validation set
(the run's config) is measured in fp32 and under bf16 autocast. The AP change is measured on any CPU:
without native bf16, oneDNN emulates it (the same bf16 rounding of inputs and weights, fp32
accumulation, ~10x slower), so the AP is that of bf16 while no time of that run is a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine_info, setup, summarize  # noqa: E402

PRESET = "torchvision_retinanet_resnet50_fpn"


def bf16_support() -> dict[str, Any]:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return {"native": bool(native), "flags": native, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def weights_file(folder: str, seed: int) -> str:
    """The parity tool's seeded weights for our model of the preset, as a state-dict file."""
    from torchvision_parity import HEAD_STD, seeded_state_dict

    from retinanet.config import load_config
    from retinanet.modeling.retinanet import RetinaNet

    model = RetinaNet.from_config(load_config(PRESET))
    sd = seeded_state_dict({k: v.shape for k, v in model.state_dict().items()}, seed, HEAD_STD["v1"])
    path = os.path.join(folder, "weights.pth")
    torch.save(sd, path)
    return path


def ort_session(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def compare(scope: str, eager_out: Any, ort_out: list[np.ndarray]) -> dict[str, Any]:
    if scope == "network":
        cls, box = (t.numpy() for t in eager_out)
        return {
            "max_abs_diff_cls_logits": float(np.abs(cls - ort_out[0]).max()),
            "max_abs_diff_box_deltas": float(np.abs(box - ort_out[1]).max()),
        }
    from torchvision_parity import compare as parity

    n = int(ort_out[3][0])
    ort_det = {k: torch.from_numpy(ort_out[i][0, :n]) for i, k in enumerate(("boxes", "scores", "labels"))}
    r = parity(eager_out[0], ort_det)  # same boxes, scores, labels up to the order of equal scores
    return {k: r[k] for k in ("n_tv", "n_ours", "max_score_diff", "max_box_diff", "ok", "diff")}


def rounds(fns: dict[str, Callable[[], Any]], runs: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Each round runs every fn once, the order rotating: ``{"wall"|"cpu": {name: seconds per round}}``
    (``cpu``: the process's CPU time, which does not count waiting for a core on a shared machine)."""
    names = list(fns)
    out: dict[str, dict[str, list[float]]] = {"wall": {n: [] for n in names}, "cpu": {n: [] for n in names}}
    for i in range(warmup + runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            if i >= warmup:
                out["wall"][name].append(time.perf_counter() - w0)
                out["cpu"][name].append(time.process_time() - c0)
    return out


def paired(ref: list[float], other: list[float]) -> float:
    """Median over the rounds of ``ref / other``."""
    return round(float(np.median([a / b for a, b in zip(ref, other)])), 3)


def exported(wfile: str, folder: str, size: tuple[int, int], done: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ONNX file for ``size``: the one exported before when it has dynamic sizes, else a new one."""
    from retinanet.export import export_model, read_metadata

    if done.get("dynamic"):
        return done["path"], {"export_s": None, "dynamic": True}
    h, w = size
    path = os.path.join(folder, f"model_{h}x{w}.onnx")
    t0 = time.perf_counter()
    export_model(wfile, path, fmt="onnx", config=PRESET, height=h, width=w, check=False)
    info = {"export_s": round(time.perf_counter() - t0, 1), "dynamic": bool(read_metadata(path).get("dynamic"))}
    done.update(path=path, **info)
    return path, info


def bench_size(wfile: str, folder: str, size: tuple[int, int], args, bf16: bool, done: dict) -> dict[str, Any]:
    from retinanet.export import DetectorNetwork
    from retinanet.inference.predictor import load_detector

    h, w = size
    res: dict[str, Any] = {"input": f"{h}x{w}"}
    onnx_path, info = exported(wfile, folder, size, done)
    res.update(info)
    sess = ort_session(onnx_path, args.threads)
    names = [o.name for o in sess.get_outputs()]
    scope = "network" if names[:2] == ["cls_logits", "box_deltas"] else "detector"
    res.update({"onnx_outputs": names, "scope": scope, "onnx_mb": round(os.path.getsize(onnx_path) / 2**20, 1)})
    model = load_detector(wfile, config=PRESET, device="cpu").model.eval()
    fused = model.fuse_for_inference()
    wino = model.fuse_for_inference(winograd=True)
    for m in (fused, wino):
        m.channels_last = True
        m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    images = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    sizes = torch.tensor([[h, w]], dtype=torch.int64)
    div = model.size_divisibility
    ph, pw = (-(-h // div) * div, -(-w // div) * div) if scope == "network" else (h, w)
    padded = torch.nn.functional.pad(images, (0, pw - w, 0, ph - h)) if scope == "network" else images
    feed = {"images": padded.numpy(), "image_sizes": sizes.numpy()}
    feed = {i.name: feed[i.name] for i in sess.get_inputs()}
    res["padded_to"] = f"{ph}x{pw} (multiple of {div})" if scope == "network" else None

    def eager_fn(m: torch.nn.Module) -> Callable[[], Any]:
        if scope == "network":
            net = DetectorNetwork(m).eval()
            return lambda: net(padded, sizes)
        return lambda: m(images)

    fns: dict[str, Callable[[], Any]] = {
        "eager": eager_fn(model),
        "eager_fused_cl": eager_fn(fused),
        "eager_wino": eager_fn(wino),
        "ort": lambda: sess.run(None, feed),
    }
    if bf16:
        base = fns["eager_fused_cl"]

        def bf16_fn() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return base()

        fns["eager_bf16"] = bf16_fn
    with torch.inference_mode():
        outs = {k: fn() for k, fn in fns.items()}
        res["ort_vs_eager"] = compare(scope, outs["eager"], outs["ort"])
        if bf16 and scope == "detector":
            a, b = outs["eager_fused_cl"][0], outs["eager_bf16"][0]
            n = min(len(a["scores"]), len(b["scores"]))
            res["bf16_vs_fp32"] = {
                "detections": [len(a["scores"]), len(b["scores"])],
                "max_score_diff_first": float((a["scores"][:n] - b["scores"][:n].float()).abs().max()) if n else 0.0,
            }
        samples = rounds(fns, args.runs, args.warmup)
    res["variants"] = {k: {c: summarize(samples[c][k]) for c in ("wall", "cpu")} for k in fns}
    for c in ("wall", "cpu"):
        res[f"eager_over_{c}"] = {k: paired(samples[c]["eager"], v) for k, v in samples[c].items()}
        res[f"eager_fused_cl_over_ort_{c}"] = paired(samples[c]["eager_fused_cl"], samples[c]["ort"])
        res[f"eager_wino_over_ort_{c}"] = paired(samples[c]["eager_wino"], samples[c]["ort"])
    return res


def ap_fp32_bf16(checkpoint: str, limit: Optional[int]) -> dict[str, Any]:
    """AP of ``checkpoint`` on its run's validation set, fp32 and under bf16 autocast."""
    from torch.utils.data import Subset

    from retinanet.data.build import build_dataset, build_eval_loader
    from retinanet.inference.loop import evaluate
    from retinanet.inference.predictor import load_detector

    det = load_detector(checkpoint, device="cpu")
    model = det.model.eval()
    dataset = build_dataset(det.cfg, train=False)
    loader = build_eval_loader(dataset, det.cfg)
    if limit:
        loader = torch.utils.data.DataLoader(
            Subset(dataset, range(min(limit, len(dataset)))), batch_size=loader.batch_size, collate_fn=loader.collate_fn
        )
    out: dict[str, Any] = {"checkpoint": checkpoint, "images": len(loader.dataset)}  # type: ignore[arg-type]
    for name, ctx in (("fp32", contextlib.nullcontext()), ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
        t0 = time.perf_counter()
        with ctx:
            m = evaluate(model, loader, dataset, torch.device("cpu"))
        out[name] = {
            "AP": round(m["AP"], 4),
            "AP50": round(m["AP50"], 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    out["AP_change"] = round(out["bf16"]["AP"] - out["fp32"]["AP"], 4)
    return out


def markdown(res: dict[str, Any]) -> str:
    b = res["bf16_support"]
    lines = [
        f"Machine: {res['machine']['cpu_model']}, torch {res['machine']['torch']} ({b['torch_cpu_capability']}), "
        f"onnxruntime {res.get('onnxruntime')}; bf16 native: {b['native']} {b['flags']}; {res['started']}",
        "",
        "| input | back-end | scope | CPU ms, median [min-max] | wall ms | eager / this, CPU | wall "
        "| direct-conv Predictor / this, CPU | Winograd Predictor / this, CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "eager": "eager fp32 (unfused, NCHW)",
        "eager_fused_cl": "eager fp32 (BN folded, channels_last, direct convs)",
        "eager_wino": "eager fp32 (Predictor: BN folded, channels_last, Winograd)",
        "ort": "ONNX Runtime fp32",
        "eager_bf16": "eager bf16 autocast" + ("" if b["native"] else " (emulated: no native bf16, not a figure)"),
    }
    for r in res.get("sizes", []):
        for k, s in r["variants"].items():
            c, w = s["cpu"], s["wall"]
            lines.append(
                f"| {r['input']} | {names[k]} | {r['scope']} | **{c['median_ms']:.1f}** [{c['min_ms']:.1f}-"
                f"{c['max_ms']:.1f}] | {w['median_ms']:.1f} | {r['eager_over_cpu'][k]:.2f} | "
                f"{r['eager_over_wall'][k]:.2f} | "
                + (
                    f"{r['eager_fused_cl_over_ort_cpu']:.2f} | {r['eager_wino_over_ort_cpu']:.2f} |"
                    if k == "ort"
                    else " | |"
                )
            )
        if "eager_bf16" not in r["variants"]:
            lines.append(f"| {r['input']} | eager bf16 autocast | | not supported on this CPU | | | | | |")
    ap = res.get("ap")
    if ap:
        how = " (bf16 emulated: no native bf16 on this CPU)" if ap["bf16_emulated"] else ""
        lines += [
            "",
            f"bf16 AP change on {ap['images']} validation images of `{ap['checkpoint']}`{how}: AP "
            f"{ap['fp32']['AP']} -> {ap['bf16']['AP']} ({ap['AP_change']:+.4f}), AP50 {ap['fp32']['AP50']} -> "
            f"{ap['bf16']['AP50']}",
        ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512x512,800x1333")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep")
    ap.add_argument("--bf16", choices=["auto", "force", "off"], default="auto")
    ap.add_argument("--checkpoint", default=None, help="a demo run's checkpoint, for bf16's AP change")
    ap.add_argument("--ap-limit", type=int, default=None, help="evaluate on the first N validation images only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    setup(args.threads, args.malloc)
    import onnxruntime

    support = bf16_support()
    bf16 = args.bf16 == "force" or (args.bf16 == "auto" and support["native"])
    res: dict[str, Any] = {
        "machine": machine_info(),
        "onnxruntime": onnxruntime.__version__,
        "bf16_support": support,
        "bf16_run": bf16,
        "argv": sys.argv[1:],
        "started": time.strftime("%F %T"),
    }
    with tempfile.TemporaryDirectory(prefix="bench_onnx_") as folder:
        wfile = weights_file(folder, args.seed)
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
        done: dict[str, Any] = {}
        res["sizes"] = [bench_size(wfile, folder, (h, w), args, bf16, done) for h, w in sizes]
    if args.checkpoint and args.bf16 != "off":
        res["ap"] = ap_fp32_bf16(args.checkpoint, args.ap_limit)
        res["ap"]["bf16_emulated"] = not support["native"]
    res["finished"] = time.strftime("%F %T")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
