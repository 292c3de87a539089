"""Like-for-like against torchvision's RetinaNet R50-FPN (issue 18): both libraries in one process, the same
configuration and the same weights, alternated run by run; every figure printed comes from this run.

Run by hand, never in CI (torchvision's compiled ops need CUDA libraries; ``../shared/peers/tv_shim.py``
makes torchvision 0.28 run on a CPU-only torch), with a Python that has torchvision and this package::

    python3 -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.13.0
    /tmp/tvenv/bin/pip install --no-deps torchvision==0.28.0 && /tmp/tvenv/bin/pip install numpy pillow -e .
    /tmp/tvenv/bin/python benchmarks/bench_peer.py --peer ../shared/peers --out /tmp/peer.json

Configuration (both sides): ResNet-50 with FrozenBatchNorm2d, stem and res2 frozen (torchvision's
``trainable_backbone_layers=3``, what its builder uses when given weights; ours ``freeze_at: 2``), FPN
P3-P7 with P6 from P5, 4-conv heads, 9 anchors, 91 classes, score_thresh 0.05, top-1000 per level, NMS
0.5, 300 detections: torchvision as ``tools/torchvision_parity.py`` builds it, ours from the preset
``torchvision_retinanet_resnet50_fpn``. Both get the same weights (``seeded_state_dict`` of the parity
tool: every level fills its top-1000 at 0.05, so both send the same 5000 boxes into NMS); the run checks
the parameter counts, the trainable parameter counts and the detections of both.

Variants (``--variants``): ``tv`` (torchvision as built), ``tv_cl`` (torchvision with
``model.to(memory_format=torch.channels_last)``), ``ours`` (ours, NCHW, as the preset: its wide 3x3
convs through Winograd F(4x4, 3x3), ``model.winograd: true``), ``ours_cl`` (the same with
``model.channels_last: true``, the default of our other presets), ``ours_direct`` / ``ours_cl_direct``
(those two with ``model.winograd: false``: oneDNN's direct convolutions, as torchvision), ``ours_fused``
(``ours_cl`` after ``fuse_for_inference(winograd=False)``: BN folded, direct convolutions) and
``ours_wino`` (``fuse_for_inference()``: BN folded, Winograd, what ``Predictor`` runs by default); the
last two are inference only.

Sections: ``infer`` per size, batch 1, raw RGB 0-1 input of exactly that size (torchvision's transform
resizes by 1.0), the whole forward call; network = backbone + FPN + head (forward hooks), the rest is
pre- and post-processing. ``post``: everything after the head (anchors, top-k, decode, NMS, best-D) alone
on the same head outputs, per score threshold, with the boxes each library sends into NMS counted.
``train``: SGD step (lr 0.01, momentum 0.9, wd 1e-4) on 2 images 512x512 with 5 boxes each, forward with
loss, backward, step, both from the same weights (our model's random initialization, prior 0.01).
``memory``: peak RSS (VmHWM, reset after a warm-up call and ``malloc_trim``) of each variant and case in
its own fresh process with the default allocator.

Times: in every round each variant runs once, the order rotating; medians over the rounds, and the
median of the per-round ratios ``tv / variant`` (above 1: faster than torchvision), for wall time and
for the process's CPU time. On a machine shared with other work, CPU time with ``--threads 1`` is the
like-for-like figure: it does not count the time the process waits for a core (with 2 threads, waits at
the thread barriers are spent spinning and count as CPU time too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import torch  # noqa: E402
from _common import machine_info, peak_rss_mb, release_free_memory, reset_peak_rss, rss_mb, setup, summarize  # noqa: E402
from summarize import peer_goals, peer_markdown  # noqa: E402

PRESET = "torchvision_retinanet_resnet50_fpn"
VARIANTS = ("tv", "tv_cl", "ours", "ours_cl", "ours_direct", "ours_cl_direct", "ours_fused", "ours_wino")
INFERENCE_ONLY = ("ours_fused", "ours_wino")
TRAIN_SIZE, TRAIN_BATCH, TRAIN_BOXES = 512, 2, 5
COUNTS: dict[str, list[int]] = {}  # boxes into NMS per call, per library ("tv" / "ours")


def import_peer(peer: str) -> None:
    sys.path.insert(0, os.path.abspath(peer))
    import tv_shim

    tv_shim.install()
    import torchvision.ops.boxes as tv_boxes

    import retinanet.modeling.postprocess as P

    orig_tv, orig_ours = tv_boxes.batched_nms, P.greedy_nms

    def tv_nms(boxes, scores, idxs, iou_threshold):
        COUNTS.setdefault("tv", []).append(int(boxes.shape[0]))
        return orig_tv(boxes, scores, idxs, iou_threshold)

    def ours_nms(boxes, scores, idxs, t, t_cmp):
        COUNTS.setdefault("ours", []).append(int(boxes.shape[0]))
        return orig_ours(boxes, scores, idxs, t, t_cmp)

    tv_boxes.batched_nms = tv_nms  # torchvision's retinanet calls it through this module
    P.greedy_nms = ours_nms


def weights(seed: int) -> dict[str, torch.Tensor]:
    from torchvision_parity import HEAD_STD, build_torchvision, seeded_state_dict

    shapes = {k: v.shape for k, v in build_torchvision("v1", 512, 512).state_dict().items()}
    return seeded_state_dict(shapes, seed, HEAD_STD["v1"])


def train_weights(seed: int) -> dict[str, torch.Tensor]:
    """Weights for the training step: our model's own random initialization (prior 0.01, identity
    frozen BatchNorm). The parity weights' raised classification bias and random BatchNorm statistics
    make SGD at lr 0.01 diverge within two steps (NaN losses)."""
    from retinanet.config import load_config
    from retinanet.modeling.retinanet import RetinaNet

    torch.manual_seed(seed)
    return RetinaNet.from_config(load_config(PRESET)).state_dict()


def build(variant: str, sd: dict[str, torch.Tensor], min_size: int, max_size: int) -> torch.nn.Module:
    """The model of ``variant`` with the weights ``sd``, in eval mode."""
    if variant.startswith("tv"):
        from torchvision_parity import build_torchvision

        model = build_torchvision("v1", min_size, max_size)
        model.load_state_dict(sd)
        if variant == "tv_cl":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model.eval()
    from retinanet.config import load_config
    from retinanet.modeling.retinanet import RetinaNet
    from retinanet.modeling.state_dict import load_model_state

    cfg = load_config(PRESET)
    cfg.model.channels_last = variant not in ("ours", "ours_direct")
    cfg.model.winograd = not variant.endswith("_direct")
    ours = RetinaNet.from_config(cfg)
    load_model_state(ours, sd)
    if variant in INFERENCE_ONLY:
        return ours.eval().fuse_for_inference(winograd=variant == "ours_wino")
    return ours.eval()


def facts(model: torch.nn.Module) -> dict[str, Any]:
    params = list(model.parameters())
    norms = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith(("Norm", "Norm2d"))})
    frozen = sorted(
        {n.split(".")[2] for n, p in model.named_parameters() if n.startswith("backbone.body.") and not p.requires_grad}
    )
    return {
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
        "norm_layers": norms,
        "frozen_backbone_parts": frozen,
    }


def forward_fn(variant: str, model: torch.nn.Module, images: torch.Tensor) -> Callable[[], list]:
    if variant.startswith("tv"):
        listed = list(images)
        return lambda: model(listed)
    return lambda: model(images)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def network_hooks(model: torch.nn.Module, marks: dict[str, tuple[float, float]]) -> None:
    model.backbone.register_forward_pre_hook(lambda *_: marks.__setitem__("net0", clocks()))
    model.head.register_forward_hook(lambda *_: marks.__setitem__("net1", clocks()))


def rounds(fns: dict[str, Callable[[], Any]], runs: int, warmup: int, marks: Optional[dict] = None) -> dict:
    """Each round runs every fn once, the order rotating. Returns per-variant samples (s) of wall time
    (``wall``) and process CPU time (``cpu``), and of the network alone (``net_wall``, ``net_cpu``)."""
    names = list(fns)
    out: dict[str, dict[str, list[float]]] = {k: {n: [] for n in names} for k in ("wall", "cpu", "net_wall", "net_cpu")}
    for i in range(warmup + runs):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            w0, c0 = clocks()
            fns[name]()
            w1, c1 = clocks()
            if i >= warmup:
                out["wall"][name].append(w1 - w0)
                out["cpu"][name].append(c1 - c0)
                if marks is not None:
                    out["net_wall"][name].append(marks["net1"][0] - marks["net0"][0])
                    out["net_cpu"][name].append(marks["net1"][1] - marks["net0"][1])
    return out


def paired(ref: list[float], other: list[float]) -> float:
    """Median over the rounds of ``ref / other`` (each round's pair ran back to back)."""
    return round(statistics.median(r / o for r, o in zip(ref, other)), 3)


def timing(s: dict[str, dict[str, list[float]]], v: str, keys: tuple[str, ...] = ("wall", "cpu")) -> dict:
    """Summaries of variant ``v`` and its paired ratios torchvision / ``v`` for each clock in ``keys``."""
    out: dict[str, Any] = {}
    for k in keys:
        out[k] = summarize(s[k][v])
        out[f"tv_over_this_{k}"] = paired(s[k]["tv"], s[k][v]) if "tv" in s[k] else None
    return out


def det_agreement(a: dict, b: dict) -> dict[str, Any]:
    """The parity tool's comparison: same boxes, scores and labels up to the order of equal scores."""
    from torchvision_parity import compare

    r = compare(a, b)
    return {k: r[k] for k in ("n_tv", "n_ours", "max_score_diff", "ok", "diff")}


def bench_infer(sd, size: tuple[int, int], variants: list[str], runs: int, warmup: int) -> dict:
    h, w = size
    images = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    models = {v: build(v, sd, h, w) for v in variants}
    marks: dict[str, tuple[float, float]] = {}
    for m in models.values():
        network_hooks(m, marks)
    fns = {v: forward_fn(v, m, images) for v, m in models.items()}
    out: dict[str, Any] = {"input": f"{h}x{w}", "variants": {}}
    with torch.inference_mode():
        dets, nms_in = {}, {}
        for v, fn in fns.items():
            COUNTS.clear()
            dets[v] = fn()[0]
            nms_in[v] = sum(sum(c) for c in COUNTS.values())
        samples = rounds(fns, runs, warmup, marks)
    for v in variants:
        out["variants"][v] = {
            **timing(samples, v, ("wall", "cpu", "net_wall", "net_cpu")),
            "detections": int(len(dets[v]["scores"])),
            "nms_in_boxes": nms_in[v],
        }
        if "tv" in dets and v != "tv":
            out["variants"][v]["vs_tv_detections"] = det_agreement(dets["tv"], dets[v])
    return out


def bench_post(sd, size: tuple[int, int], threshs: list[float], runs: int) -> dict:
    """Post-processing alone (after the head) on each library's own head outputs of one image."""
    h, w = size
    images = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    tv, ours = build("tv", sd, h, w), build("ours", sd, h, w)
    out: dict[str, Any] = {"input": f"{h}x{w}", "thresholds": {}}
    with torch.inference_mode():
        il, _ = tv.transform(list(images))
        tv_feats = list(tv.backbone(il.tensors).values())
        tv_head = tv.head(tv_feats)
        x, sizes = ours.preprocess(images)
        feats = ours.backbone(x)
        cls, box = ours.head(feats)
        image_sizes = torch.tensor(sizes, dtype=torch.int64)

        def tv_post():
            anchors = tv.anchor_generator(il, tv_feats)
            per_level = [f.shape[-2] * f.shape[-1] * 9 for f in tv_feats]
            split_head = {k: list(v.split(per_level, dim=1)) for k, v in tv_head.items()}
            split_anchors = [list(a.split(per_level)) for a in anchors]
            dets = tv.postprocess_detections(split_head, split_anchors, il.image_sizes)
            return tv.transform.postprocess(dets, il.image_sizes, [(h, w)])

        def ours_post():
            anchors = ours.anchors_for(feats, (int(x.shape[-2]), int(x.shape[-1])))
            level = [f.shape[-2] * f.shape[-1] * ours.anchor_generator.num_anchors for f in feats]
            return ours.postprocessor(cls, box, anchors, level, image_sizes)

        for t in threshs:
            tv.score_thresh = t
            ours.postprocessor.score_thresh = t
            ours.postprocessor.logit_thresh = score_to_logit(t)
            row: dict[str, Any] = {}
            for name, fn in (("tv", tv_post), ("ours", ours_post)):
                COUNTS.clear()
                d = fn()[0]
                row[name] = {
                    "nms_in_boxes": COUNTS[name][-1] if COUNTS.get(name) else 0,
                    "detections": len(d["scores"]),
                }
            s = rounds({"tv": tv_post, "ours": ours_post}, runs, 2)
            for name in ("tv", "ours"):
                row[name].update(timing(s, name))
            out["thresholds"][str(t)] = row
    return out


def score_to_logit(t: float) -> float:
    from retinanet.modeling.postprocess import score_to_logit as f

    return float(f(t))


def train_inputs() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    from bench_model import random_targets

    g = torch.Generator().manual_seed(0)
    images = torch.rand(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE, generator=g)
    targets = random_targets(TRAIN_BATCH, TRAIN_SIZE, TRAIN_BOXES, 91, g)
    for t in targets:
        t["labels"].clamp_(min=1)  # 1..90: COCO category ids, 0 is torchvision's background slot
    return images, targets


def train_step_fn(variant: str, model: torch.nn.Module, images, targets) -> tuple[Callable[[], float], Any]:
    from retinanet.training.normalizer import LossNormalizer

    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, weight_decay=1e-4)
    normalizer = LossNormalizer()
    listed = list(images)

    def step() -> float:
        if variant.startswith("tv"):
            loss = sum(model(listed, targets).values())
        else:
            out = model(images, targets)
            loss = (out["loss_cls"] + out["loss_box"]) / normalizer(out["num_fg"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, opt


def bench_train(seed: int, variants: list[str], runs: int, warmup: int) -> dict:
    images, targets = train_inputs()
    sd = train_weights(seed)
    models = {v: build(v, sd, TRAIN_SIZE, TRAIN_SIZE) for v in variants}
    steps = {v: train_step_fn(v, m, images, targets)[0] for v, m in models.items()}
    losses: dict[str, list[float]] = {v: [] for v in variants}
    fns = {v: (lambda v=v: losses[v].append(steps[v]())) for v in variants}
    s = rounds(fns, runs, warmup)
    return {
        "images": f"{TRAIN_BATCH} x {TRAIN_SIZE}x{TRAIN_SIZE}, {TRAIN_BOXES} boxes each",
        "variants": {
            v: {
                **timing(s, v),
                "losses": [round(x, 4) for x in losses[v]],
                **facts(models[v]),
            }
            for v in variants
        },
    }


def memory_worker(variant: str, case: str, seed: int) -> dict:
    """One variant, one case, in this (fresh) process: peak RSS of one call after a warm-up call."""
    sd = weights(seed)
    if case == "train":
        images, targets = train_inputs()
        model = build(variant, train_weights(seed), TRAIN_SIZE, TRAIN_SIZE)
        fn, _ = train_step_fn(variant, model, images, targets)
        ctx: Any = contextlib.nullcontext()
    else:
        h, w = (int(v) for v in case.split("x"))
        model = build(variant, sd, h, w)
        fn = forward_fn(variant, model, torch.rand(1, 3, h, w))
        ctx = torch.inference_mode()
    del sd
    with ctx:
        fn()
        release_free_memory()
        reset_peak_rss()
        before = rss_mb()
        fn()
        peak = peak_rss_mb()
    return {"variant": variant, "case": case, "rss_before_mb": before, "peak_rss_mb": peak}


def bench_memory(args, cases: list[str]) -> list[dict]:
    out = []
    for case in cases:
        for v in [v for v in args.memory_variants.split(",") if v]:
            if case == "train" and v in INFERENCE_ONLY:
                continue
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--peer",
                args.peer,
                "--threads",
                str(args.threads),
                "--seed",
                str(args.seed),
                "--malloc",
                "default",
                "--worker",
                f"{v}:{case}",
            ]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"memory worker {v}:{case} failed:\n{p.stderr[-3000:]}")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["above_before_mb"] = round(r["peak_rss_mb"] - r["rss_before_mb"], 1)
            print(f"[memory {case} {v}] peak {r['peak_rss_mb']} MB ({r['above_before_mb']} above)", file=sys.stderr)
            out.append(r)
    return out


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", default=os.path.join(ROOT, "..", "shared", "peers"), help="folder with tv_shim.py")
    ap.add_argument("--sections", default="infer,post,train,memory")
    ap.add_argument("--sizes", default="512x512,800x1333")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--memory-variants", default="tv,ours,ours_cl,ours_fused,ours_wino")
    ap.add_argument("--runs", type=int, default=5, help="timed rounds per inference size")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--post-runs", type=int, default=10)
    ap.add_argument("--post-thresholds", default="0.05,0.0")
    ap.add_argument("--train-runs", type=int, default=3)
    ap.add_argument("--train-warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--malloc", choices=["keep", "default"], default="keep")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    setup(args.threads, args.malloc)
    import_peer(args.peer)
    if args.worker:
        variant, case = args.worker.split(":")
        worker = memory_worker(variant, case, args.seed)
        print(json.dumps(worker))
        return worker
    sections = [s for s in args.sections.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",") if s]
    res: dict[str, Any] = {"machine": machine_info(), "argv": sys.argv[1:], "started": time.strftime("%F %T")}
    res.update(threads=args.threads, malloc=args.malloc)
    sd = weights(args.seed)
    import torchvision

    res["torchvision"] = torchvision.__version__
    res["config"] = {v: facts(build(v, sd, 512, 512)) for v in variants if v in ("tv", "ours")}
    t0 = time.perf_counter()
    if "infer" in sections:
        res["infer"] = [bench_infer(sd, (h, w), variants, args.runs, args.warmup) for h, w in sizes]
    if "post" in sections:
        th = [float(t) for t in args.post_thresholds.split(",")]
        res["post"] = [bench_post(sd, (h, w), th, args.post_runs) for h, w in sizes]
    if "train" in sections:
        res["train"] = bench_train(
            args.seed, [v for v in variants if v not in INFERENCE_ONLY], args.train_runs, args.train_warmup
        )
    if "memory" in sections:
        res["memory"] = bench_memory(args, [f"{h}x{w}" for h, w in sizes] + ["train"])
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["finished"] = time.strftime("%F %T")
    res["goals"] = peer_goals(res)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)
    print(peer_markdown(res))
    return res


if __name__ == "__main__":
    main()
