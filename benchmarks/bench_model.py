"""RetinaNet R50-FPN on the CPU: inference latency, FLOPs and achieved GFLOP/s against a conv roofline,
post-processing worst case and a training step (times and peak RSS).

    python benchmarks/bench_model.py --malloc keep --out model_keep.json
    python benchmarks/bench_model.py --sections roofline,infer --sizes 512x512 --runs 3

Model: ``RetinaNet.from_config(cfg)`` with ``cfg.model.num_classes=80``, ResNet-50 + FPN P3..P7, random
init (backbone ``weights=None``; FrozenBatchNorm2d with its identity statistics), the config defaults
otherwise (channels_last, freeze_at 2, score_thresh 0.05, top-k 1000 per level, 100 detections) and
``data.size_divisibility=32``. Inputs are raw ``torch.rand`` RGB images of exactly the size asked; the
model normalizes them and pads them to a multiple of 32 (800x1333 -> 800x1344, as the torchvision peer
does), and clips boxes to the unpadded size. 2 threads, 1 interop thread.

Sections (``--sections``, comma separated; all by default):

roofline  a plain ``F.conv2d`` 3x3 256->256 on 1x256x100x100 (NCHW and channels_last); median
          GFLOP/s. It is measured at the start and again at the end of the run; the roofline used
          for the ratios is the best median over both layouts and both times.
infer     per size, the unfused model and ``model.fuse_for_inference()`` under ``torch.inference_mode``:
          preprocess (normalize + pad, ``model.preprocess``), network (input layout + backbone + FPN +
          head) and post-processing (anchors + ``model.postprocessor``: top-k + decode + NMS) timed
          separately within each forward (``total`` = network + post, as before the model normalized
          its input), plus the plain ``model(images)`` call (all three); FLOPs of the network by
          ``torch.utils.flop_counter.FlopCounterMode`` (conv only, 2 per MAC); peak RSS (VmHWM reset
          before the timed runs).
post      ``model.postprocessor`` alone on the fused model's head outputs (of a ``torch.rand`` batch
          of the padded size fed to the network directly): at the default score threshold and in
          the worst case (score_thresh 0: all 5 x 1000 top-k candidates over 80 classes reach NMS),
          with the time inside its NMS and the number of boxes / classes that reach it.
train     in a fresh subprocess: SGD step (lr 0.01, momentum 0.9, wd 1e-4) on 2 raw images of 512x512
          with 5 random boxes each: forward (normalization included) + loss divided by the trainer's
          ``LossNormalizer`` (of which matching + losses), backward, optimizer step; FLOPs of
          forward+backward; peak RSS of the process (ru_maxrss) and of the steps (VmHWM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import lifetime_peak_rss_mb, machine_info, peak_rss_mb, reset_peak_rss, rss_mb, setup, summarize, time_fn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

SECTIONS = ("roofline", "infer", "post", "train")


# ---------------------------------------------------------------------------------------------- model
SIZE_DIVISIBILITY = 32


def build(num_classes: int = 80):
    from retinanet.config import Config
    from retinanet.modeling.retinanet import RetinaNet

    cfg = Config()
    cfg.model.num_classes = num_classes
    cfg.model.backbone.weights = None
    cfg.data.size_divisibility = SIZE_DIVISIBILITY
    torch.manual_seed(0)
    return RetinaNet.from_config(cfg)


def parse_size(s: str) -> tuple[int, int]:
    h, w = s.lower().split("x")
    return int(h), int(w)


def padded(h: int, w: int, div: int = SIZE_DIVISIBILITY) -> tuple[int, int]:
    return math.ceil(h / div) * div, math.ceil(w / div) * div


def network(model, x):
    """The model's forward from the normalized, padded batch ``x`` to the head outputs (as
    RetinaNet.forward runs it)."""
    if model.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    feats = model.backbone(x)
    cls, box = model.head(feats)
    return feats, cls, box


def level_sizes(model, feats) -> list[int]:
    return [f.shape[-2] * f.shape[-1] * model.anchor_generator.num_anchors for f in feats]


def postprocess(model, feats, cls, box, image_sizes: torch.Tensor):
    anchors = model.anchors_for(feats)
    return model.postprocessor(cls, box, anchors, level_sizes(model, feats), image_sizes)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


# ---------------------------------------------------------------------------------------------- roofline
def roofline(runs: int, warmup: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 100, 100, generator=g)
    w = torch.randn(256, 256, 3, 3, generator=g) * 0.02
    b = torch.zeros(256)
    flops = 2 * 256 * 256 * 9 * 100 * 100
    out = {"gflop_per_call": flops / 1e9}
    with torch.inference_mode():
        for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xx, ww = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            s = summarize(time_fn(lambda: F.conv2d(xx, ww, b, padding=1), runs, warmup))
            out[name] = {
                **s,
                "gflops_median": round(flops / s["median_ms"] / 1e6, 1),
                "gflops_best": round(flops / s["min_ms"] / 1e6, 1),
            }
    out["plain_best_gflops_median"] = max(out["nchw"]["gflops_median"], out["channels_last"]["gflops_median"])
    return out


def combine_roofline(parts: list[dict]) -> dict:
    return {"roofline_gflops": max(p["plain_best_gflops_median"] for p in parts), "runs": parts}


# ---------------------------------------------------------------------------------------------- inference
def bench_infer(size: tuple[int, int], runs: int, warmup: int) -> dict:
    h, w = size
    ph, pw = padded(h, w)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(1, 3, h, w, generator=g)  # raw RGB 0-1, unpadded
    image_sizes = torch.tensor([[h, w]], dtype=torch.int64)
    base = build().eval()
    with torch.inference_mode():
        batch, _ = base.preprocess(images)
        assert tuple(batch.shape[-2:]) == (ph, pw)
        flops = count_flops(lambda: network(base, batch))
    res: dict = {"input": f"{h}x{w}", "padded": f"{ph}x{pw}", "gflops": round(flops / 1e9, 2)}
    variants = {"unfused": base, "fused": base.fuse_for_inference()}
    ref_dets = None
    for name, model in variants.items():
        pre_t, net_t, post_t, tot_t, fwd_t = [], [], [], [], []
        with torch.inference_mode():
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                x, _ = model.preprocess(images)
                t1 = time.perf_counter()
                feats, cls, box = network(model, x)
                t2 = time.perf_counter()
                dets = postprocess(model, feats, cls, box, image_sizes)
                t3 = time.perf_counter()
                del x, feats, cls, box
                if i >= warmup:
                    pre_t.append(t1 - t0)
                    net_t.append(t2 - t1)
                    post_t.append(t3 - t2)
                    tot_t.append(t3 - t1)
            reset_peak_rss()
            rss0 = rss_mb()
            for i in range(max(2, runs // 2)):
                t0 = time.perf_counter()
                dets2 = model(images)
                fwd_t.append(time.perf_counter() - t0)
            peak = peak_rss_mb()
        net, post, tot = summarize(net_t), summarize(post_t), summarize(tot_t)
        r = {
            "preprocess": summarize(pre_t),
            "network": net,
            "post": post,
            "total": tot,
            "forward_call": summarize(fwd_t),
            "network_gflops": round(flops / net["median_ms"] / 1e6, 1),
            "post_share_of_total": round(post["median_ms"] / tot["median_ms"], 4),
            "detections": int(dets[0]["boxes"].shape[0]),
            "rss_before_mb": rss0,
            "peak_rss_mb": peak,
        }
        if ref_dets is None:
            ref_dets = dets2
        else:  # same detections as the unfused model
            a, b = ref_dets[0], dets2[0]
            n = min(a["boxes"].shape[0], b["boxes"].shape[0])
            r["same_count_as_unfused"] = a["boxes"].shape[0] == b["boxes"].shape[0]
            r["max_box_diff_vs_unfused"] = float((a["boxes"][:n] - b["boxes"][:n]).abs().max()) if n else 0.0
            r["max_score_diff_vs_unfused"] = float((a["scores"][:n] - b["scores"][:n]).abs().max()) if n else 0.0
            r["labels_equal_unfused"] = bool(torch.equal(a["labels"][:n], b["labels"][:n]))
        res[name] = r
        print(
            f"[infer {h}x{w} {name}] total {tot['median_ms']:.1f} ms = network {net['median_ms']:.1f} "
            f"+ post {post['median_ms']:.1f} (preprocess {r['preprocess']['median_ms']:.1f}); "
            f"{r['network_gflops']} GFLOP/s; peak RSS {peak} MB",
            file=sys.stderr,
        )
    return res


# ---------------------------------------------------------------------------------------------- post-processing
@contextlib.contextmanager
def nms_probe(stats: dict):
    """Times the NMS the post-processor calls and records its input size."""
    import retinanet.modeling.postprocess as P

    orig = P.greedy_nms

    def wrapped(boxes, scores, idxs, t, t_cmp):
        t0 = time.perf_counter()
        keep = orig(boxes, scores, idxs, t, t_cmp)
        stats.setdefault("nms_s", []).append(time.perf_counter() - t0)
        stats["nms_boxes"] = int(boxes.shape[0])
        stats["nms_groups"] = int(torch.unique(idxs).numel()) if idxs.numel() else 0
        return keep

    P.greedy_nms = wrapped
    try:
        yield stats
    finally:
        P.greedy_nms = orig


def bench_post(size: tuple[int, int], runs: int, warmup: int) -> dict:
    from retinanet.modeling.postprocess import PostProcessor

    h, w = size
    ph, pw = padded(h, w)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, ph, pw, generator=g)  # the network's input: any padded batch gives head outputs
    model = build().eval().fuse_for_inference(inplace=True)
    image_sizes = torch.tensor([[h, w]], dtype=torch.int64)
    out = {"input": f"{h}x{w}"}
    with torch.inference_mode():
        feats, cls, box = network(model, x)
        anchors = model.anchors_for(feats)
        sizes = level_sizes(model, feats)
        p = model.postprocessor
        for label, thresh in (("default", p.score_thresh), ("worst_case", 0.0)):
            post = PostProcessor(
                model.box_coder,
                score_thresh=thresh,
                topk_candidates=p.topk_candidates,
                nms_thresh=p.nms_thresh,
                detections_per_image=p.detections_per_image,
            )
            stats: dict = {}
            with nms_probe(stats):
                s = summarize(time_fn(lambda: post(cls, box, anchors, sizes, image_sizes), runs, warmup))
                dets = post(cls, box, anchors, sizes, image_sizes)
            nms = stats.get("nms_s", [])[warmup : warmup + runs]
            out[label] = {
                "score_thresh": thresh,
                **s,
                "nms_median_ms": round(summarize(nms)["median_ms"], 3) if nms else None,
                "nms_in_boxes": stats.get("nms_boxes"),
                "nms_in_classes": stats.get("nms_groups"),
                "detections": int(dets[0]["boxes"].shape[0]),
            }
            print(
                f"[post {h}x{w} {label}] {s['median_ms']:.2f} ms, {stats.get('nms_boxes')} boxes "
                f"({stats.get('nms_groups')} classes) into NMS",
                file=sys.stderr,
            )
    return out


# ---------------------------------------------------------------------------------------------- training
def random_targets(batch: int, size: int, boxes: int, num_classes: int, g: torch.Generator) -> list[dict]:
    out = []
    for _ in range(batch):
        wh = 16 + torch.rand(boxes, 2, generator=g) * (size * 0.4)
        xy = torch.rand(boxes, 2, generator=g) * (size - wh)
        out.append(
            {"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, num_classes, (boxes,), generator=g)}
        )
    return out


def train_worker(size: int, batch: int, boxes: int, runs: int, warmup: int, roofline_runs: int) -> dict:
    from retinanet.training.normalizer import LossNormalizer

    roof = [roofline(roofline_runs, 1)]
    model = build().train()
    normalizer = LossNormalizer()  # what Trainer._step divides the summed losses by
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)  # raw RGB 0-1: the model normalizes
    targets = random_targets(batch, size, boxes, model.num_classes, g)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss_t: list[float] = []
    orig_losses = model.losses

    def timed_losses(*a, **k):  # matching + focal loss + box loss, as called inside forward
        t0 = time.perf_counter()
        out = orig_losses(*a, **k)
        loss_t.append(time.perf_counter() - t0)
        return out

    model.losses = timed_losses
    rss_model = rss_mb()
    fwd, bwd, stp, tot, lss = [], [], [], [], []
    first_step = None
    reset_peak_rss()
    for i in range(warmup + runs):
        loss_t.clear()
        t0 = time.perf_counter()
        out = model(images, targets)
        loss = (out["loss_cls"] + out["loss_box"]) / normalizer(out["num_fg"])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        del out, loss
        if i == 0:
            first_step = t3 - t0
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            stp.append(t3 - t2)
            tot.append(t3 - t0)
            lss.append(sum(loss_t))
    steps_peak = peak_rss_mb()
    # FLOPs of one forward + backward (after the timed steps, so the counter costs nothing above)
    with FlopCounterMode(display=False) as fc:
        out = model(images, targets)
        ((out["loss_cls"] + out["loss_box"]) / normalizer(out["num_fg"])).backward()
    opt.zero_grad(set_to_none=True)
    flops = int(fc.get_total_flops())
    roof.append(roofline(roofline_runs, 1))
    step = summarize(tot)
    res = {
        "size": size,
        "batch": batch,
        "boxes_per_image": boxes,
        "trainable_params": sum(p.numel() for p in params),
        "step": step,
        "forward_loss": summarize(fwd),
        "loss_computation": summarize(lss),
        "backward": summarize(bwd),
        "optimizer": summarize(stp),
        "first_step_ms": round(first_step * 1e3, 1),
        "loss_share_of_step": round(summarize(lss)["median_ms"] / step["median_ms"], 4),
        "gflops_fwd_bwd": round(flops / 1e9, 1),
        "step_gflops": round(flops / step["median_ms"] / 1e6, 1),
        "rss_after_model_mb": rss_model,
        "peak_rss_steps_mb": steps_peak,
        "peak_rss_process_mb": lifetime_peak_rss_mb(),
        "roofline": combine_roofline(roof),
    }
    res["step_roofline_ratio"] = round(res["step_gflops"] / res["roofline"]["roofline_gflops"], 3)
    return res


def run_train_subprocess(args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "train",
        "--malloc",
        args.malloc,
        "--threads",
        str(args.threads),
        "--train-runs",
        str(args.train_runs),
        "--train-warmup",
        str(args.train_warmup),
        "--runs",
        str(args.runs),
        "--train-size",
        str(args.train_size),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"train worker failed:\n{p.stderr[-4000:]}")
    sys.stderr.write(p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--sizes", default="512x512,800x1333")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--train-runs", type=int, default=3)
    ap.add_argument("--train-warmup", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=512, help="square image side of the training step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--malloc", choices=["keep", "default"], default="keep", help="allocator mode (the CLI's default is keep)"
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup(args.threads, args.malloc)

    if args.worker == "train":
        res = train_worker(args.train_size, 2, 5, args.train_runs, args.train_warmup, args.runs)
        print(json.dumps(res))
        return res

    sections = [s for s in args.sections.split(",") if s]
    bad = set(sections) - set(SECTIONS)
    if bad:
        raise SystemExit(f"unknown sections {sorted(bad)}; choose from {SECTIONS}")
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    out: dict = {
        "machine": machine_info(),
        "malloc": args.malloc,
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "argv": sys.argv[1:],
    }
    roof: list[dict] = []
    if "roofline" in sections or "infer" in sections:
        roof.append(roofline(args.runs, args.warmup))
    if "infer" in sections:
        out["infer"] = {f"{h}x{w}": bench_infer((h, w), args.runs, args.warmup) for h, w in sizes}
    if "post" in sections:
        out["post"] = {f"{h}x{w}": bench_post((h, w), max(args.runs, 10), args.warmup + 1) for h, w in sizes}
    if "roofline" in sections or "infer" in sections:
        roof.append(roofline(args.runs, args.warmup))
        out["roofline"] = combine_roofline(roof)
        rl = out["roofline"]["roofline_gflops"]
        for r in out.get("infer", {}).values():
            for v in ("unfused", "fused"):
                r[v]["network_roofline_ratio"] = round(r[v]["network_gflops"] / rl, 3)
        print(f"[roofline] plain conv3x3 {rl} GFLOP/s", file=sys.stderr)
    if "train" in sections:
        out["train"] = run_train_subprocess(args)
        t = out["train"]
        print(
            f"[train {args.train_size} b2] step {t['step']['median_ms']:.0f} ms "
            f"(fwd+loss {t['forward_loss']['median_ms']:.0f}, "
            f"loss {t['loss_computation']['median_ms']:.0f}, bwd {t['backward']['median_ms']:.0f}, opt "
            f"{t['optimizer']['median_ms']:.0f}); {t['step_gflops']} GFLOP/s = {t['step_roofline_ratio']} of "
            f"roofline; peak RSS {t['peak_rss_process_mb']} MB",
            file=sys.stderr,
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
