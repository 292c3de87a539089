"""The command line's tool commands: ``retinanet data synth | data show``, ``analyze anchors | loss-cdf``,
``convert torchvision``, ``presets`` and ``ablate`` (:mod:`retinanet.apps.ablate_cli`)
(:func:`add_tool_commands` registers them on the main parser of :mod:`retinanet.cli`, which keeps
train / eval / predict / export / demo)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from retinanet.apps.ablate_cli import add_ablate_command

__all__ = ["add_tool_commands"]


def cmd_synth(args: argparse.Namespace) -> int:
    from retinanet.apps.synth import make_synthetic_coco

    summary = make_synthetic_coco(
        args.out,
        num_train=args.train,
        num_val=args.val,
        image_size=tuple(args.size),
        seed=args.seed,
        objects=args.objects,
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_data_show(args: argparse.Namespace) -> int:
    import torch

    from retinanet.config import load_config
    from retinanet.data.build import build_dataset
    from retinanet.data.sampler import SeededDataset
    from retinanet.utils.io import atomic_write
    from retinanet.viz.draw import draw_detections, make_gallery

    if args.num < 1:
        raise ValueError(f"--num must be >= 1, got {args.num}")
    cfg = load_config(args.config, args.overrides)
    ds = build_dataset(cfg, train=True)
    if len(ds) == 0:
        raise ValueError("the training dataset is empty")
    seed = cfg.train.seed if args.seed is None else args.seed
    names: list[str] = list(ds.class_names)
    if cfg.model.label_space == "coco_category_ids":  # training labels are category ids
        by_id = dict(zip(ds.label_to_category_id, ds.class_names))
        names = [by_id.get(c, str(c)) for c in range(cfg.model.num_classes)]
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed)).tolist()
    seeded = SeededDataset(ds, seed)  # item (index, epoch): what training with train.seed=seed sees
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    thumbs = []
    for k in range(args.num):
        image, target = seeded[(order[k % len(ds)], k // len(ds))]
        pic = draw_detections(image, target["boxes"], target["labels"], class_names=names)
        stem = Path(ds.image_info(target["index"]).file_name).stem
        atomic_write(out / f"augment_{k:03d}_{stem}.png", lambda f: pic.save(f, format="PNG"))
        pic.thumbnail((320, 320))
        thumbs.append(pic)
    rows = [thumbs[i : i + 4] for i in range(0, len(thumbs), 4)]
    make_gallery(rows, out / "augment_sheet.png", titles=None)
    print(f"{args.num} augmented training images -> {out}/augment_*.png, contact sheet {out / 'augment_sheet.png'}")
    return 0


def cmd_analyze_anchors(args: argparse.Namespace) -> int:
    from retinanet.config import load_config
    from retinanet.inference.anchor_analysis import analyze_anchors, format_report
    from retinanet.utils.io import atomic_write_json

    cfg = load_config(args.config, args.overrides)
    report = analyze_anchors(cfg, split=args.split, max_boxes=args.max_boxes, suggest=not args.no_suggest)
    print(format_report(report, max_listed=args.max_listed))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"all figures: {args.json}")
    return 0


def cmd_analyze_loss_cdf(args: argparse.Namespace) -> int:
    from retinanet.inference.loss_cdf import run_loss_cdf

    result = run_loss_cdf(
        args.config,
        args.weights,
        overrides=args.overrides,
        num_images=args.num_images or None,
        gammas=tuple(args.gammas),
        out_png=args.out,
        json_path=args.json,
        split=args.split,
        device=args.device,
    )
    print(
        f"{result.num_positives} positive and {result.num_negatives} negative anchor-class losses "
        f"on {args.split} images"
    )
    for i, g in enumerate(result.gammas):
        top10, top1 = float(result.hardest_negative[0.1][i]), float(result.hardest_negative[0.01][i])
        print(
            f"  gamma {g:g}: the hardest 10% of negatives carry {top10:.1%} of the negative loss, "
            f"the hardest 1% carry {top1:.1%}"
        )
    print(f"curves: {args.out}" + (f", {args.json}" if args.json else ""))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from retinanet.inference.convert import convert_checkpoint

    path, preset = convert_checkpoint(args.file, args.out, config=args.config)
    print(
        f"converted {args.file} ({preset}) -> {path}; predict / eval / export / model.weights= take it without --config"
    )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from retinanet.config import list_presets, preset_path

    for name in list_presets():
        first = preset_path(name).read_text().splitlines()[0].lstrip("# ")
        print(f"{name:36s} {first}")
    return 0


def add_tool_commands(sub: Any) -> None:
    """Add the ``data``, ``analyze``, ``convert``, ``presets`` and ``ablate`` commands to the subparsers ``sub``."""
    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("synth", help="write the synthetic scenes dataset in COCO format")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=1000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--size", type=int, nargs=2, default=[320, 320], metavar=("H", "W"))
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--objects", default="shapes", choices=["shapes", "fashion-mnist", "mnist"])
    s.set_defaults(fn=cmd_synth)
    sh = dsub.add_parser(
        "show",
        help="draw augmented training images with their boxes (what the model sees)",
        description="Draws --num training items through the training transforms (data.augment, resize, "
        "flip) with their boxes and class names, as PNGs and one contact sheet. Item k is the k-th image "
        "of a seeded order; with --seed equal to train.seed it is exactly what training draws for it.",
    )
    sh.add_argument("config", help="YAML file or preset name")
    sh.add_argument("overrides", nargs="*", help="section.key=value overrides")
    sh.add_argument("--out", required=True, help="folder for augment_NNN_<image>.png and augment_sheet.png")
    sh.add_argument("--num", type=int, default=8, help="number of images")
    sh.add_argument("--seed", type=int, default=None, help="augmentation seed (default: train.seed)")
    sh.set_defaults(fn=cmd_data_show)

    # `retinanet analyze ...`: one subparser per analysis in the `analyze` group
    an = sub.add_parser("analyze", help="analyses of a dataset or model under a config")
    asub = an.add_subparsers(dest="analyze_command", required=True)
    aa = asub.add_parser(
        "anchors",
        help="how well the anchors cover the ground-truth boxes, and a better anchor setting",
        description="For the training boxes at the training input size: the share whose best anchor IoU reaches "
        "model.fg_iou_threshold and model.bg_iou_threshold (overall, by size, aspect ratio, min_size), the "
        "boxes no anchor matches (file, annotation id), positive anchors per box, and a suggested "
        "model.anchors setting with its coverage. Reads annotations only (no image is decoded).",
    )
    aa.add_argument("config", help="YAML file or preset name")
    aa.add_argument("overrides", nargs="*", help="section.key=value overrides")
    aa.add_argument("--split", choices=["train", "val"], default="train", help="val: at data.test_min_size")
    aa.add_argument("--json", help="write every figure (and every unmatched box) to this JSON file")
    aa.add_argument("--max-listed", type=int, default=20, help="unmatched boxes to print")
    aa.add_argument(
        "--max-boxes", type=int, default=250_000, help="analyze a seeded sample of this many box x min_size (0: all)"
    )
    aa.add_argument("--no-suggest", action="store_true", help="skip the search for a better anchor setting")
    aa.set_defaults(fn=cmd_analyze_anchors)
    lc = asub.add_parser(
        "loss-cdf",
        help="cumulative focal loss over positive and negative anchors of a trained model (Figure 4)",
    )
    lc.add_argument("config", help="YAML file or preset (e.g. the run's config.yaml)")
    lc.add_argument("overrides", nargs="*", help="section.key=value overrides")
    lc.add_argument("--weights", required=True)
    lc.add_argument("--out", default="loss_cdf.png", help="the figure (PNG)")
    lc.add_argument("--json", help="also write the curves and headline figures to this JSON file")
    lc.add_argument("--gammas", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    lc.add_argument("--num-images", type=int, default=500, help="images to run (0: all)")
    lc.add_argument("--split", choices=["train", "val"], default="val")
    lc.add_argument("--device", default="auto")
    lc.set_defaults(fn=cmd_analyze_loss_cdf)

    cv = sub.add_parser("convert", help="convert another library's detector file into a checkpoint of ours")
    cvsub = cv.add_subparsers(dest="source", required=True)
    ct = cvsub.add_parser("torchvision", help="a torchvision RetinaNet state dict (v1 or v2, old or new key layout)")
    ct.add_argument("file")
    ct.add_argument("--out", required=True, help="the checkpoint to write (.pth or .safetensors)")
    ct.add_argument("--config", help="preset or YAML file (default: the preset whose architecture fits the file)")
    ct.set_defaults(fn=cmd_convert)

    ps = sub.add_parser("presets", help="list the packaged config presets")
    ps.set_defaults(fn=cmd_presets)

    add_ablate_command(sub)
