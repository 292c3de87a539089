"""Benchmark: Winograd F(4x4, 3x3) (``retinanet.ops.winograd``) against oneDNN's direct convolution.

Part 1, single convolutions: 3x3 stride-1 convs of the shapes RetinaNet runs (ResNet-50 stages, FPN
outputs, head towers and output convs at 512x512 and 800x1333 inputs), channels-last float32 input,
median ms of each path, the ratio, and the largest difference from a float64 reference relative to
the output's magnitude (both paths). Part 2, the whole network (backbone, FPN, heads) of the
``torchvision_retinanet_resnet50_fpn`` preset, BN folded (``fuse_for_inference``) with and without
Winograd, alternating run by run; ratios are the median of the per-round direct / Winograd.

    python benchmarks/bench_winograd.py --threads 1 --runs 5 --out winograd.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, setup, summarize, time_fn  # noqa: E402

from retinanet.ops.winograd import winograd_conv3x3, winograd_weights  # noqa: E402

# (name, C_in, C_out, H, W)
SHAPES = [
    ("res2 3x3 @512", 64, 64, 128, 128),
    ("res3 3x3 @512", 128, 128, 64, 64),
    ("res4 3x3 @512", 256, 256, 32, 32),
    ("res5 3x3 @512", 512, 512, 16, 16),
    ("head P3 @512", 256, 256, 64, 64),
    ("head P4 @512", 256, 256, 32, 32),
    ("head P5 @512", 256, 256, 16, 16),
    ("head P6 @512", 256, 256, 8, 8),
    ("cls_logits P3 @512 (91 classes)", 256, 819, 64, 64),
    ("bbox_reg P3 @512", 256, 36, 64, 64),
    ("head P3 @800x1333", 256, 256, 100, 167),
    ("head P4 @800x1333", 256, 256, 50, 84),
    ("head P5 @800x1333", 256, 256, 25, 42),
    ("cls_logits P3 @800x1333", 256, 819, 100, 167),
]


def bench_convs(runs: int, warmup: int, quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    torch.manual_seed(0)
    shapes = [(n, ci, co, h // 4, w // 4) for n, ci, co, h, w in SHAPES if n.endswith("@512")] if quick else SHAPES
    for name, cin, cout, h, w in shapes:
        x = torch.randn(1, cin, h, w).relu().contiguous(memory_format=torch.channels_last)
        weight = torch.randn(cout, cin, 3, 3) * (2.0 / (9 * cin)) ** 0.5
        bias = torch.randn(cout) * 0.1
        u = winograd_weights(weight)
        with torch.no_grad():
            ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
            scale = ref.abs().max().item()
            err_direct = (F.conv2d(x, weight, bias, padding=1).double() - ref).abs().max().item() / scale
            err_wino = (winograd_conv3x3(x, u, bias).double() - ref).abs().max().item() / scale
            direct, wino = [], []
            for _ in range(warmup):
                F.conv2d(x, weight, bias, padding=1), winograd_conv3x3(x, u, bias)
            for _ in range(runs):
                direct += time_fn(lambda: F.conv2d(x, weight, bias, padding=1), 1, 0)
                wino += time_fn(lambda: winograd_conv3x3(x, u, bias), 1, 0)
        ratio = statistics.median(d / v for d, v in zip(direct, wino))
        rows.append(
            {
                "conv": name,
                "shape": [cin, cout, h, w],
                "direct": summarize(direct),
                "winograd": summarize(wino),
                "direct_over_winograd": round(ratio, 3),
                "rel_err_direct": err_direct,
                "rel_err_winograd": err_wino,
            }
        )
        print(
            f"{name:34s} direct {rows[-1]['direct']['median_ms']:8.1f} ms  winograd "
            f"{rows[-1]['winograd']['median_ms']:8.1f} ms  {ratio:5.2f}x  rel. err {err_direct:.1e} / {err_wino:.1e}",
            flush=True,
        )
    return rows


def bench_network(sizes: list[tuple[int, int]], runs: int, warmup: int) -> list[dict[str, Any]]:
    from retinanet.config import load_config
    from retinanet.modeling.retinanet import RetinaNet

    torch.manual_seed(0)
    model = RetinaNet.from_config(load_config("torchvision_retinanet_resnet50_fpn")).eval()
    direct = model.fuse_for_inference(winograd=False).to(memory_format=torch.channels_last)
    wino = model.fuse_for_inference(winograd=True).to(memory_format=torch.channels_last)
    out = []
    for h, w in sizes:
        x = torch.rand(1, 3, h, w).contiguous(memory_format=torch.channels_last)

        def net(m: RetinaNet) -> Any:
            return m.head(m.backbone(x))

        with torch.no_grad():
            a, b = net(direct), net(wino)
            diff = max((p - q).abs().max().item() for p, q in zip(a, b))
            for _ in range(warmup):
                net(direct), net(wino)
            td, tw = [], []
            for _ in range(runs):
                td += time_fn(lambda: net(direct), 1, 0)
                tw += time_fn(lambda: net(wino), 1, 0)
        ratio = statistics.median(d / v for d, v in zip(td, tw))
        out.append(
            {
                "size": [h, w],
                "direct": summarize(td),
                "winograd": summarize(tw),
                "direct_over_winograd": round(ratio, 3),
                "max_abs_diff_head_outputs": diff,
            }
        )
        print(
            f"network {h}x{w}: direct {out[-1]['direct']['median_ms']:.0f} ms, winograd "
            f"{out[-1]['winograd']['median_ms']:.0f} ms, {ratio:.2f}x; head outputs differ by <= {diff:.1e}",
            flush=True,
        )
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sections", default="convs,network")
    ap.add_argument("--sizes", default="512x512,800x1333")
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 512-input convs at 1/4 size, network 128x128")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.warmup, args.sizes = 1, 0, "128x128"
    setup(args.threads, args.malloc)
    sections = set(args.sections.split(","))
    t0 = time.time()
    result: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    if "convs" in sections:
        result["convs"] = bench_convs(args.runs, args.warmup, args.quick)
    if "network" in sections:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        result["network"] = bench_network(sizes, args.runs, args.warmup)  # type: ignore[arg-type]
    result["seconds"] = round(time.time() - t0, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
