"""Command line: ``retinanet train | eval | predict | export | demo``, and the tool commands of
:mod:`retinanet.apps.tools` (``data synth | data show | analyze | ablate | convert | presets``).

    retinanet train CONFIG [section.key=value ...] [--resume]
    retinanet eval CONFIG --weights CKPT [section.key=value ...]
    retinanet predict --weights CKPT|MODEL.onnx INPUT [INPUT ...] [--out DIR] [--score-thresh 0.3]
    retinanet export --weights CKPT --out FILE.onnx|.pt2|.pt [--format F] [--input-dtype uint8|float32]
    retinanet demo [--out DIR] [--quick]
    retinanet data synth --out DIR [--train N --val N --size H W --seed S]
    retinanet data show CONFIG [section.key=value ...] --out DIR [--num 8] [--seed S]
    retinanet analyze anchors CONFIG [section.key=value ...] [--split train|val] [--json FILE]
    retinanet analyze loss-cdf CONFIG --weights CKPT [--out PNG] [--json FILE]
    retinanet ablate PLAN --out DIR [section.key=value ...] [--iterations N | --minutes M] [--seeds S ...]
    retinanet convert torchvision FILE --out CKPT [--config PRESET]

CONFIG is a YAML file or the name of a packaged preset (``retinanet presets`` lists them). Under
``torchrun --nproc_per_node N -m retinanet train ...`` training and evaluation run distributed.
Overrides may also follow the options (``retinanet train CONFIG --resume solver.max_iter=2000``).
Errors from bad configs, data, checkpoints or the file system (unwritable folder, full disk) are
printed as one clear line (exit code 2), not a traceback; ``--debug`` shows the traceback. Training
stopped by Ctrl-C or SIGTERM writes a checkpoint of the finished step and exits with 128 + the signal
number (130, 143); ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from retinanet.apps.tools import add_tool_commands

__all__ = ["main"]

log = logging.getLogger("retinanet")


def _setup_logging(verbose: bool) -> None:
    from retinanet.utils import distributed

    level = logging.DEBUG if verbose else logging.INFO
    if distributed.env_rank() != 0:  # the process group is not joined yet: read the launcher's RANK
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _cmd_train(args: argparse.Namespace) -> int:
    from retinanet.config import load_config
    from retinanet.training.trainer import Trainer
    from retinanet.utils.tuning import configure_runtime

    cfg = load_config(args.config, args.overrides)
    if args.output_dir:
        cfg.train.output_dir = args.output_dir
    configure_runtime(args.malloc)
    from retinanet.utils import distributed

    finished, trainer = False, None
    try:
        trainer = Trainer(cfg, resume=args.resume, progress=not args.no_progress)
        result = trainer.train()
        finished = True
    finally:
        trainer = None  # drop the model and its DDP wrapper before the process group goes
        distributed.cleanup(synchronize=finished)
    if distributed.env_rank() == 0:
        state = "stopped early" if result.stopped_early else "finished"
        if result.signal:
            import signal

            state += f" by {signal.Signals(result.signal).name}"
        print(f"training {state} at iteration {result.iteration}; checkpoint: {result.final_checkpoint}")
        if result.stopped_early:
            print(f"continue with: retinanet train {args.config} ... --resume")
        if result.skipped_steps:
            print(f"{result.skipped_steps} steps with a non-finite loss or gradient were skipped")
        if result.planned_iter is not None and not result.stopped_early:
            print(f"time budget: {result.iteration} of at most {result.planned_iter} steps fit")
        if result.metrics:
            print(_metrics_line(result.metrics))
        if result.best_checkpoint is not None and result.best_value is not None:
            print(
                f"best {result.best_metric} {result.best_value:.4f} at iteration {result.best_iteration}: "
                f"{result.best_checkpoint}"
            )
    # stopped by a signal: the shell convention 128 + signal number (130 for Ctrl-C), so scripts can
    # tell an interrupted run (resumable) from a finished one
    return 128 + result.signal if result.signal else 0


def _metrics_line(m: dict) -> str:
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    return "  ".join(f"{k} {m[k]:.4f}" for k in keys if k in m)


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from retinanet.config import load_config
    from retinanet.data.build import build_dataset, build_eval_loader
    from retinanet.inference.loop import evaluate, inference_model
    from retinanet.inference.predictor import load_detector
    from retinanet.utils import distributed
    from retinanet.utils.io import atomic_write_json
    from retinanet.utils.tuning import configure_runtime

    configure_runtime(args.malloc)
    cfg = load_config(args.config, args.overrides)
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    det = load_detector(args.weights, config=cfg, device=cfg.train.device)  # fails early: before the data
    distributed.init_distributed(det.device)
    finished = False
    try:
        dataset = build_dataset(cfg, train=False)
        model = inference_model(det.model, cfg, inplace=True)
        coco_ids = det.label_to_category_id if cfg.model.label_space == "coco_category_ids" else None
        loader = build_eval_loader(dataset, cfg, rank=distributed.rank(), world_size=distributed.world_size())
        out = Path(args.out or Path(args.weights).parent)
        if distributed.is_main():
            out.mkdir(parents=True, exist_ok=True)
        metrics = evaluate(
            model,
            loader,
            dataset,
            det.device,
            results_path=out / "detections.json",
            progress=not args.no_progress,
            label_to_category_id=coco_ids,
        )
        if distributed.is_main():
            atomic_write_json(out / "metrics.json", metrics, indent=2)
            print(_metrics_line(metrics))
            print(f"detections: {out / 'detections.json'}  metrics: {out / 'metrics.json'}")
        finished = True
    finally:
        distributed.cleanup(synchronize=finished)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from retinanet.data.image_io import load_image
    from retinanet.inference.coco_results import detections_to_coco_results
    from retinanet.inference.predictor import Predictor, find_images
    from retinanet.utils.io import atomic_write, atomic_write_json
    from retinanet.viz.draw import draw_detections

    paths = find_images(args.inputs)
    if not paths:
        raise ValueError(f"no images found in {args.inputs}")
    backend = args.backend
    if backend == "auto":
        backend = "onnxruntime" if Path(args.weights).suffix.lower() == ".onnx" else "torch"
    pred: Any
    if backend == "onnxruntime":
        from retinanet.inference.runtime import RuntimePredictor

        if args.config:
            raise ValueError(f"--config: {args.weights} carries its own settings; it takes no config")
        try:
            pred = RuntimePredictor(args.weights, device=args.device, score_thresh=args.score_thresh)
        except ImportError as e:
            raise ValueError(str(e)) from None
    else:
        pred = Predictor(args.weights, config=args.config, device=args.device, score_thresh=args.score_thresh)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    names = dict(zip(pred.label_to_category_id, pred.class_names))
    for i, det in enumerate(pred.predict_many(paths, batch_size=args.batch_size, progress=not args.no_progress)):
        path = paths[i]
        results.extend(
            {**r, "category_name": names[r["category_id"]], "file_name": str(path)}
            for r in detections_to_coco_results([det], [i], pred.label_to_category_id)
        )
        if not args.no_draw:
            name = f"{path.stem}_pred.png"
            if name in used:  # same file name in two folders: keep both pictures
                name = f"{path.stem}_{i}_pred.png"
            used.add(name)
            img = draw_detections(
                load_image(path),
                det["boxes"],
                det["labels"],
                det["scores"],
                class_names=pred.class_names,
                score_thresh=args.draw_thresh,
            )
            atomic_write(out / name, lambda f: img.save(f, format="PNG"))
    atomic_write_json(out / "predictions.json", results)
    print(
        f"{len(paths)} images, {len(results)} detections -> {out / 'predictions.json'}"
        + ("" if args.no_draw else f" and {out}/*_pred.png")
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from retinanet.export.exporter import export

    report = export(
        args.weights,
        args.out,
        fmt=args.format,
        config=args.config,
        height=args.height,
        width=args.width,
        check=not args.no_check,
        dynamic=not args.static,
        input_dtype=args.input_dtype,
    )
    runtime = " in ONNX Runtime" if report.format == "onnx" else ""
    check = f"checked{runtime}: {report.check.describe()}" if report.check else "not checked"
    print(f"exported {report.format} model to {report.path} ({check})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from retinanet.apps.demo import run_demo
    from retinanet.utils.tuning import configure_runtime

    configure_runtime(args.malloc)
    run_demo(out_dir=args.out, quick=args.quick, overrides=args.overrides, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="retinanet", description="RetinaNet with the Focal Loss: train, evaluate, predict, export."
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, malloc=True):
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")
        if malloc:
            sp.add_argument(
                "--malloc",
                choices=["keep", "default"],
                default="keep",
                help="keep: freed memory stays in the process for reuse (faster on VMs that "
                "return freed pages to the host); default: the C library's behaviour",
            )

    t = sub.add_parser("train", help="train a detector")
    t.add_argument("config", help="YAML file or preset name")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output dir")
    t.add_argument("--output-dir", help="same as train.output_dir=...")
    common(t)
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="COCO AP of a checkpoint on the validation set")
    e.add_argument("config")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--weights", required=True)
    e.add_argument("--out", help="folder for detections.json and metrics.json (default: the checkpoint's)")
    common(e)
    e.set_defaults(fn=_cmd_eval)

    pr = sub.add_parser("predict", help="detect objects in images, a list file or folders")
    pr.add_argument("inputs", nargs="+")
    pr.add_argument("--weights", required=True)
    pr.add_argument("--config", help="config for checkpoints that carry none")
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--score-thresh", type=float, default=None, help="model score threshold")
    pr.add_argument("--draw-thresh", type=float, default=0.3, help="only draw boxes above this score")
    pr.add_argument("--batch-size", type=int, default=2)
    pr.add_argument("--device", default="auto")
    pr.add_argument(
        "--backend",
        choices=["auto", "torch", "onnxruntime"],
        default="auto",
        help="torch: the checkpoint in PyTorch; onnxruntime: an exported .onnx file (auto: by the file type)",
    )
    pr.add_argument("--no-draw", action="store_true")
    common(pr, malloc=False)
    pr.set_defaults(fn=_cmd_predict)

    x = sub.add_parser(
        "export",
        help="export for deployment (ONNX, torch.export or TorchScript)",
        description="Every format holds the whole detector, pre- and post-processing (NMS) included, and "
        "is checked against the Python model after writing (ONNX in ONNX Runtime). onnx and pt2 return "
        "boxes [B, D, 4], scores [B, D], labels [B, D] and num_detections [B]; torchscript a list of dicts. "
        "See retinanet.export.exporter for inputs and outputs.",
    )
    x.add_argument("--weights", required=True)
    x.add_argument("--out", required=True)
    x.add_argument(
        "--format",
        choices=["onnx", "pt2", "torchscript"],
        help="default: from the --out suffix (.onnx, .pt2, .pt or .ts for TorchScript, which PyTorch deprecates)",
    )
    x.add_argument("--config", help="config for checkpoints that carry none")
    x.add_argument("--height", type=int, default=512, help="example input height (any size; the file pads inside)")
    x.add_argument("--width", type=int, default=512, help="example input width")
    x.add_argument(
        "--static", action="store_true", help="pt2/onnx: fix the input to --height x --width, batch 1 (faster export)"
    )
    x.add_argument(
        "--input-dtype",
        choices=["uint8", "float32"],
        help="pt2/onnx: images uint8 0-255 or float32 0-1 (default: what data.resize gives, uint8 for pillow)",
    )
    x.add_argument("--no-check", action="store_true", help="skip comparing the exported model with the Python model")
    x.set_defaults(fn=_cmd_export)

    d = sub.add_parser("demo", help="build the synthetic dataset, train, evaluate and draw (CPU, minutes)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a ~1 minute version (for tests)")
    d.add_argument("overrides", nargs="*")
    common(d)
    d.set_defaults(fn=_cmd_demo)

    add_tool_commands(sub)
    return p


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse, accepting ``section.key=value`` overrides after options too
    (``retinanet train CONFIG --resume solver.max_iter=100``), which argparse alone rejects."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        overrides = [a for a in extra if "=" in a and not a.startswith("-")]
        if hasattr(args, "overrides") and len(overrides) == len(extra):
            args.overrides = list(args.overrides or []) + overrides
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parse(argv)
    _setup_logging(args.verbose)
    if args.debug:
        return args.fn(args)
    from retinanet.config import ConfigError
    from retinanet.data.errors import DataError
    from retinanet.training.divergence import TrainingDiverged
    from retinanet.utils.distributed import RankFailed
    from retinanet.utils.serialization import CheckpointError

    try:
        return args.fn(args)
    except (ConfigError, CheckpointError, DataError, TrainingDiverged, RankFailed, ValueError) as e:
        print(f"retinanet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # missing files, permissions, disk full: one line, not a traceback
        print(f"retinanet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"retinanet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
