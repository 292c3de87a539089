"""Small data with a domain shift (issue 16): today's ``mobilenet_v2_cpu`` recipe against the new one.

Claim: at the same wall-clock budget, the new recipe (augmentations, warmup as a fraction of the run,
weight EMA, the best checkpoint) detects better on images unlike the training ones.

Data (``retinanet.apps.synth``, real object appearance: Fashion-MNIST items, Debian package
``dataset-fashion-mnist``), 256 x 256 px, two classes (t-shirt, sneaker), 6-20 objects per image:

- train: 40 images on the synth's own backgrounds (``clutter``: muted gradients, blobs, lines);
- dev: 16 images on ANOTHER background family (``tiles``: saturated striped / checkered / dotted
  patches, defined here), the user's few validation photos "from other places": the trainer
  evaluates on them (``train.eval_period``, ``model_best.pth``) inside the time budget;
- test: 60 more ``tiles`` images (other seeds), never seen by training or selection: the reported AP.

Each run: ``load_config("mobilenet_v2_cpu")`` + the dataset + ``train.time_budget`` (the same for
every run; evaluations during training are paid from it) + one torch thread, run one after the other.
``today``: the preset as it was before issue 16 (``solver.warmup_fraction=1``: 500 warmup steps,
no augmentation but the preset's multi-scale resize and flip, no EMA, the final weights).
``new``: the small-data preset (``mobilenet_v2_small_data``, checked equal to mobilenet_v2_cpu +
:func:`new_overrides`). Test AP of the new runs is also read for the final weights (no best
checkpoint), the raw weights (no EMA) and with horizontal-flip TTA, which costs no training run. The
ablation removes or adds one thing to ``new`` at a time (one seed each unless ``--ablation-seeds``),
with the same evaluations and checkpoint choice, at the seeds of ``new`` runs; its table pairs each
run with the ``new`` run of the same seed.
Sizes are scaled down from the preset's 448-512 px and batch 8 (256 px, batch 4, the same for every
run) so that a run of a few minutes on one thread has a few hundred steps.

    python benchmarks/bench_small_data.py --work /tmp/small_data --out small_data.json   # ~40 min
    python benchmarks/bench_small_data.py --quick                                        # ~1-2 min smoke
    python benchmarks/bench_small_data.py --recipes new --steps 250 --seeds 3 --ablation-seeds 3  # ablation
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info  # noqa: E402

CLASSES = ("t-shirt", "sneaker")
BACKGROUND_VERSION = 1  # raise when the tiles family draws differently (names the data folders)


@dataclass(frozen=True)
class Plan:
    size: int = 256
    batch: int = 4
    train_images: int = 40
    dev_images: int = 16
    test_images: int = 60
    budget_s: int = 150
    eval_period: int = 50
    seeds: int = 3
    ablation_seeds: int = 1
    steps: int | None = None  # fixed steps per run instead of budget_s
    threads: int = 1
    objects: tuple[int, int] = (6, 20)


FULL = Plan()
QUICK = Plan(
    size=160,
    train_images=6,
    dev_images=3,
    test_images=4,
    budget_s=12,
    eval_period=5,
    seeds=1,
    ablation_seeds=0,
    objects=(3, 6),
)

#: the new recipe's augmentations (what the small-data preset holds; the ablation's results: BENCHMARKS.md)
NEW_AUGMENT = {"photometric": "{name: photometric, p: 0.8}"}
NEW_SOLVER = ["solver.warmup_fraction=0.1", "solver.ema=true", "solver.ema_decay=0.99", "solver.ema_tau=50"]
#: today's recipe: the preset before issue 16 (warmup of 500 steps whatever the run's length)
TODAY_OVERRIDES = ["solver.warmup_fraction=1.0"]


def new_overrides(drop: tuple[str, ...] = (), add: tuple[str, ...] = (), solver: tuple[str, ...] = ()) -> list[str]:
    """The new recipe as overrides of mobilenet_v2_cpu, without the augmentations ``drop``, with the
    entries ``add`` appended to its augment list and ``solver`` overrides appended."""
    ops = [v for k, v in NEW_AUGMENT.items() if k not in drop] + list(add)
    return ["data.augment=[" + ", ".join(ops) + "]", *NEW_SOLVER, *solver]


#: ablation: one change to the new recipe (EMA, best checkpoint and TTA are read from the new runs)
ABLATION = {
    "- photometric": new_overrides(drop=("photometric",)),
    "- warmup 10% (min(500, run))": new_overrides(solver=("solver.warmup_fraction=1.0",)),
    "+ random_crop": new_overrides(add=("{name: random_crop, p: 0.5, min_scale: 0.5}",)),
    "+ mosaic": new_overrides(add=("{name: mosaic, p: 0.5}",)),
    "+ expand": new_overrides(add=("{name: expand, p: 0.3, ratio: [1.0, 2.0]}",)),
    "+ lsj": new_overrides(add=("{name: lsj, scale: [0.5, 1.5]}",)),
    "+ vflip + rot90": new_overrides(add=("{name: vflip}", "{name: rot90}")),
}


# ---------------------------------------------------------------------------------------------- data
def tiles_background(rng: np.random.Generator, h: int, w: int, clutter: float) -> np.ndarray:
    """The shifted background family, float32 [h, w, 3] in 0..255: a grid of rectangular patches
    (48-160 px) each filled with a saturated two-colour texture (stripes, checker, dots, gradient,
    solid) at reduced contrast, blurred slightly. ``clutter`` is accepted for the synth's signature."""
    from PIL import Image, ImageFilter

    from retinanet.apps.synth.textures import random_texture

    del clutter
    out = np.empty((h, w, 3), np.float32)
    y = 0
    while y < h:
        ph = int(rng.integers(48, 161))
        x = 0
        while x < w:
            pw = int(rng.integers(48, 161))
            hh, ww = min(ph, h - y), min(pw, w - x)
            tex, _ = random_texture(rng, hh, ww)
            mean = tex.mean(axis=(0, 1), keepdims=True)
            out[y : y + hh, x : x + ww] = mean + (tex - mean) * rng.uniform(0.3, 0.6)
            x += pw
        y += ph
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5)))), np.float32)


@contextlib.contextmanager
def background_family(name: str) -> Iterator[None]:
    """Scenes rendered inside use background family ``name`` ("clutter": the synth's own, "tiles")."""
    from retinanet.apps.synth import scene

    original = scene.background
    if name == "tiles":
        scene.background = tiles_background
    try:
        yield
    finally:
        scene.background = original


def _synth(root: Path, family: str, seed: int, num_a: int, num_b: int, plan: Plan) -> dict[str, Any]:
    from retinanet.apps.synth import ensure_synthetic_coco

    with background_family(family):
        return ensure_synthetic_coco(
            root,
            num_train=num_a,
            num_val=num_b,
            image_size=(plan.size, plan.size),
            seed=seed,
            objects="fashion-mnist",
            classes=list(CLASSES),
            objects_per_image=plan.objects,
            min_size=24.0,
            max_size_frac=0.3,
            workers=1,  # the background is patched in this process
        )


def build_data(work: Path, plan: Plan) -> dict[str, dict[str, str]]:
    """Train (clutter), dev and test (tiles) sets; reused when already there. Paths per split."""
    tag = f"{plan.size}_o{plan.objects[0]}-{plan.objects[1]}_v{BACKGROUND_VERSION}"
    src = work / f"data_clutter_{tag}_{plan.train_images}"
    tgt = work / f"data_tiles_{tag}_{plan.dev_images}_{plan.test_images}"
    s1 = _synth(src, "clutter", 11, plan.train_images, 0, plan)
    s2 = _synth(tgt, "tiles", 12, plan.dev_images, plan.test_images, plan)
    for name, s in (("train", s1["train"]), ("dev", s2["train"]), ("test", s2["val"])):
        print(f"data {name}: {s['images']} images, {s['annotations']} objects, sizes {s['sizes']}", flush=True)
    return {
        "train": {"images": str(src / "train"), "annotations": str(src / "annotations" / "instances_train.json")},
        "dev": {"images": str(tgt / "train"), "annotations": str(tgt / "annotations" / "instances_train.json")},
        "test": {"images": str(tgt / "val"), "annotations": str(tgt / "annotations" / "instances_val.json")},
    }


# ---------------------------------------------------------------------------------------------- runs
def _config(preset: str, plan: Plan, data: dict[str, dict[str, str]], out: Path, seed: int, extra: list[str]) -> Any:
    from retinanet.config import load_config

    overrides = [
        "data.format=coco",
        f"data.train_images={data['train']['images']}",
        f"data.train_annotations={data['train']['annotations']}",
        f"data.val_images={data['dev']['images']}",
        f"data.val_annotations={data['dev']['annotations']}",
        f"model.num_classes={len(CLASSES)}",
        "data.num_workers=1",
        f"train.output_dir={out}",
        f"train.time_budget={plan.budget_s}" if plan.steps is None else f"solver.max_iter={plan.steps}",
        f"train.seed={seed}",
        f"train.num_threads={plan.threads}",
        "train.checkpoint_period=1000000",
        "train.tensorboard=false",
        "train.device=cpu",
        "train.log_period=50",
    ]
    s = plan.size  # the preset's 448-512 px and batch 8 leave too few steps for a few minutes on one thread
    overrides += [f"data.min_size=[{s - 32}, {s}]", f"data.max_size={s * 5 // 3}", f"data.test_min_size={s}"]
    overrides += [f"solver.batch_size={plan.batch}"]
    return load_config(preset, overrides + extra)


def _test_ap(checkpoint: Path, cfg: Any, data: dict[str, dict[str, str]], ema: bool, tta: bool) -> dict[str, float]:
    """COCO AP / AP50 of a checkpoint on the test set (raw weights when ``ema`` is False)."""
    import copy

    from retinanet.data.build import build_dataset, build_eval_loader
    from retinanet.inference.loop import evaluate
    from retinanet.inference.predictor import load_detector
    from retinanet.inference.tta import with_tta

    c = copy.deepcopy(cfg)
    c.solver.ema = ema
    c.data.val_images, c.data.val_annotations = data["test"]["images"], data["test"]["annotations"]
    c.test.tta = ("hflip",) if tta else ()
    det = load_detector(checkpoint, config=c, device="cpu")
    dataset = build_dataset(c, train=False)
    loader = build_eval_loader(dataset, c, rank=0, world_size=1)
    model = with_tta(det.model.fuse_for_inference(inplace=True), c).eval()  # the wrapper is built in train mode
    m = evaluate(model, loader, dataset, det.device)
    return {"AP": round(float(m["AP"]), 4), "AP50": round(float(m["AP50"]), 4)}


def run_one(
    name: str, preset: str, extra: list[str], seed: int, plan: Plan, data: dict[str, dict[str, str]], work: Path,
    variants: bool,
) -> dict[str, Any]:  # fmt: skip
    """Train one recipe at one seed; test AP of its selected weights (and, with ``variants``, of the
    final, raw and TTA alternatives)."""
    import shutil

    from retinanet.training.trainer import Trainer

    out = work / "runs" / f"{name.replace(' ', '_').replace('+', 'p')}_s{seed}"
    if out.exists():
        shutil.rmtree(out)
    cfg = _config(preset, plan, data, out, seed, extra)
    t0 = time.perf_counter()
    res = Trainer(cfg, progress=False).train()
    seconds = time.perf_counter() - t0
    use_best = cfg.train.eval_period > 0 and res.best_checkpoint is not None
    chosen = res.best_checkpoint if use_best else res.final_checkpoint
    assert chosen is not None
    row: dict[str, Any] = {
        "recipe": name,
        "seed": seed,
        "steps": res.iteration,
        "train_s": round(seconds, 1),
        "dev_AP_final": round(float(res.metrics.get("AP", math.nan)), 4),
        "best_iteration": res.best_iteration,
        "weights": chosen.name,
        "test": _test_ap(chosen, cfg, data, ema=cfg.solver.ema, tta=False),
    }
    if variants:
        assert res.final_checkpoint is not None
        row["test_final"] = _test_ap(res.final_checkpoint, cfg, data, ema=cfg.solver.ema, tta=False)
        if cfg.solver.ema:
            row["test_final_raw"] = _test_ap(res.final_checkpoint, cfg, data, ema=False, tta=False)
        row["test_tta_hflip"] = _test_ap(chosen, cfg, data, ema=cfg.solver.ema, tta=True)
    print(json.dumps(row), flush=True)
    return row


def _check_preset(preset: str, plan: Plan, data: dict[str, dict[str, str]], work: Path) -> None:
    """The new recipe's preset must be mobilenet_v2_cpu + :func:`new_overrides` (the ablation's base)."""
    a = _config(preset, plan, data, work / "check", 0, [])
    b = _config("mobilenet_v2_cpu", plan, data, work / "check", 0, new_overrides())
    if asdict(a) != asdict(b):
        raise SystemExit(f"{preset} differs from mobilenet_v2_cpu + new_overrides(): update one of them")


def _stats(rows: list[dict[str, Any]], key: str = "test") -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for m in ("AP", "AP50"):
        v = [r[key][m] for r in rows if key in r]
        if not v:
            continue
        out[m] = {
            "mean": round(statistics.fmean(v), 4),
            "std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0,
            "min": min(v),
            "max": max(v),
        }
    out["steps_mean"] = round(statistics.fmean(r["steps"] for r in rows), 1)
    return out


def _fmt(s: dict[str, Any], m: str) -> str:
    if m not in s:
        return "-"
    x = s[m]
    if s["n"] == 1:
        return f"{x['mean']:.3f}"
    return f"{x['mean']:.3f} ± {x['std']:.3f} ({x['min']:.3f}-{x['max']:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and budget: a smoke run, numbers meaningless")
    ap.add_argument("--work", default="/tmp/bench_small_data", help="data (reused) and runs (replaced)")
    ap.add_argument("--out", default=None, help="write the results as JSON here (also after every run)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds of today / new (default 3)")
    ap.add_argument(
        "--recipes", nargs="+", choices=("today", "new"), default=["today", "new"], help="recipes run per seed"
    )
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run: first-seed .. first-seed + seeds - 1")
    ap.add_argument(
        "--ablation-seeds", type=int, default=None, help="seeds per ablation row, the first ones (default 1; 0: none)"
    )
    ap.add_argument("--budget", type=int, default=None, help="seconds of training per run (default 150)")
    ap.add_argument(
        "--steps", type=int, default=None, help="a fixed number of steps per run instead of the time budget"
    )
    ap.add_argument("--new-preset", default="mobilenet_v2_small_data", help="preset of the new recipe")
    ap.add_argument("--new-from-overrides", action="store_true", help="new = mobilenet_v2_cpu + NEW_OVERRIDES")
    ap.add_argument("--table", default=None, help="only print the tables of a results JSON (--out) and exit")
    args = ap.parse_args()
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print_tables(saved, Plan(**{**saved["plan"], "objects": tuple(saved["plan"]["objects"])}))
        return
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    plan = QUICK if args.quick else FULL
    plan = replace(
        plan,
        seeds=args.seeds or plan.seeds,
        ablation_seeds=plan.ablation_seeds if args.ablation_seeds is None else args.ablation_seeds,
        budget_s=args.budget or plan.budget_s,
        steps=args.steps,
    )
    if plan.ablation_seeds and "new" not in args.recipes:
        ap.error("the ablation needs the new recipe (its base) in --recipes")
    work = Path(args.work) / ("quick" if args.quick else "full")
    t0 = time.perf_counter()
    data = build_data(work, plan)
    t_data = time.perf_counter() - t0
    eval_overrides = [f"train.eval_period={plan.eval_period}"]
    if args.new_from_overrides:
        new = ("mobilenet_v2_cpu", new_overrides() + eval_overrides)
    else:
        new = (args.new_preset, eval_overrides)
    _check_preset(new[0], plan, data, work)
    recipes = {
        k: v for k, v in {"today": ("mobilenet_v2_cpu", TODAY_OVERRIDES), "new": new}.items() if k in args.recipes
    }
    res: dict[str, Any] = {"plan": asdict(plan), "new_recipe": new, "runs": [], "seconds_data": round(t_data, 1)}
    res["recipes"] = list(recipes)

    def save() -> None:
        res["seconds_total"] = round(time.perf_counter() - t0, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2))

    # recipes interleaved per seed, so that a slower spell of the machine hits all; the ablation runs at
    # the first seeds, each right after the new run it is paired with
    for i in range(max(plan.seeds, plan.ablation_seeds)):
        seed = args.first_seed + i
        for name, (preset, extra) in recipes.items():
            if i < plan.seeds or name == "new":
                res["runs"].append(run_one(name, preset, extra, seed, plan, data, work, variants=name == "new"))
                save()
        if i >= plan.ablation_seeds:
            continue
        for name, extra in ABLATION.items():
            res["runs"].append(run_one(name, "mobilenet_v2_cpu", extra + eval_overrides, seed, plan, data, work, False))
            save()
    res["machine"] = machine_info()
    save()
    print_tables(res, plan)


def print_tables(res: dict[str, Any], plan: Plan) -> None:
    runs = res["runs"]
    run_len = f"{plan.budget_s} s of training" if plan.steps is None else f"{plan.steps} steps"
    by = {n: [r for r in runs if r["recipe"] == n] for n in dict.fromkeys(r["recipe"] for r in runs)}
    print(
        f"\n{plan.train_images} training images (clutter backgrounds), test: {plan.test_images} images of another "
        f"background family; {run_len} per run, {plan.threads} torch thread"
    )
    print("| recipe | seeds | steps | test AP (mean ± std, min-max) | test AP50 |")
    print("|---|---|---|---|---|")
    for name in ("today", "new"):
        if name in by:
            s = _stats(by[name])
            print(f"| {name} | {s['n']} | {s['steps_mean']:.0f} | {_fmt(s, 'AP')} | {_fmt(s, 'AP50')} |")
    if "new" in by:
        for key, label in (
            ("test_final", "new, final weights (no best checkpoint)"),
            ("test_final_raw", "new, final raw weights (no EMA, no best)"),
            ("test_tta_hflip", "new + TTA hflip (test time)"),
        ):
            s = _stats(by["new"], key)
            if "AP" in s:
                print(f"| {label} | {s['n']} | {s['steps_mean']:.0f} | {_fmt(s, 'AP')} | {_fmt(s, 'AP50')} |")
    abl = [n for n in by if n not in ("today", "new")]
    if abl and "new" in by:
        print_ablation({n: by[n] for n in abl}, by["new"])
    print(f"total {res.get('seconds_total', 0):.0f} s (data {res['seconds_data']:.0f} s)")


def _mean_std(v: list[float]) -> str:
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _paired(d: list[float]) -> str:
    """Mean (min..max) of per-seed differences."""
    return f"{statistics.fmean(d):+.3f} ({min(d):+.3f}..{max(d):+.3f})" if len(d) > 1 else f"{d[0]:+.3f}"


def print_ablation(rows: dict[str, list[dict[str, Any]]], new: list[dict[str, Any]]) -> None:
    """Ablation table: test AP / AP50 mean ± std over seeds and the difference to the new run of the
    same seed (mean, min..max over seeds); the base row is the new runs at the ablation's seeds."""
    base = {r["seed"]: r for r in new}
    seeds = sorted({r["seed"] for rs in rows.values() for r in rs} & set(base))
    print("\nablation: one change to the new recipe; Δ: paired with the new run of the same seed, mean (min..max)")
    print("| change | seeds | steps | test AP (mean ± std) | ΔAP | test AP50 | ΔAP50 |")
    print("|---|---|---|---|---|---|---|")
    b = [base[s] for s in seeds]
    cells = [_mean_std([r["test"][m] for r in b]) for m in ("AP", "AP50")]
    steps = statistics.fmean(r["steps"] for r in b)
    print(f"| (new) | {len(b)} | {steps:.0f} | {cells[0]} | - | {cells[1]} | - |")
    for name, rs in rows.items():
        rs = [r for r in rs if r["seed"] in base]
        if not rs:
            continue
        out = [name, str(len(rs)), f"{statistics.fmean(r['steps'] for r in rs):.0f}"]
        for m in ("AP", "AP50"):
            out += [
                _mean_std([r["test"][m] for r in rs]),
                _paired([r["test"][m] - base[r["seed"]]["test"][m] for r in rs]),
            ]
        print("| " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
