"""Tiny training runs for the end-to-end, distributed and fault tests.

``make_coco_split(root)`` writes a COCO-format train and val set of small PNGs (64x48 and 48x64,
category ids 3, 7, 11, non-contiguous image ids, a crowd box, an image without boxes), or the sets it
is given;
``tiny_config(...)`` returns a config dict for a model that trains at ~0.05 s per step on one CPU
thread: MobileNetV2 (random init, frozen BN: no batch statistics, so several processes compute what
one does), a 32-channel FPN, one conv per subnet, anchors 8..128 px, images of at most 128 px (every
batch pads to 128x128, whatever the scale or orientation). ``write_config`` puts it in a YAML file
for the CLI. ``run_cli`` runs ``python -m retinanet ...`` in a subprocess with one torch thread.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml
from data_factory import make_coco

CATEGORIES = [
    {"id": 7, "name": "dog", "supercategory": "animal"},
    {"id": 3, "name": "cat", "supercategory": "animal"},
    {"id": 11, "name": "bird", "supercategory": "animal"},
]


def _image(iid: int, name: str, w: int, h: int) -> dict[str, Any]:
    return {"id": iid, "file_name": name, "width": w, "height": h}


def _ann(aid: int, iid: int, cat: int, x: float, y: float, w: float, h: float, crowd: int = 0) -> dict[str, Any]:
    return {"id": aid, "image_id": iid, "category_id": cat, "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd}


def train_coco_dict() -> dict[str, Any]:
    """6 training images: landscape 64x48 and portrait 48x64, 1-3 boxes each, one crowd, one empty."""
    images = [_image(10 + k, f"t{k}.png", *((64, 48) if k % 3 else (48, 64))) for k in range(6)]
    anns = [
        _ann(1, 10, 3, 4, 6, 20, 24),
        _ann(2, 10, 7, 26, 30, 18, 30),
        _ann(3, 11, 11, 10, 8, 30, 20),
        _ann(4, 11, 3, 40, 4, 20, 40, crowd=1),
        _ann(5, 12, 7, 2, 2, 60, 44),
        _ann(6, 13, 3, 8, 8, 16, 16),
        _ann(7, 13, 3, 20, 30, 24, 30),
        _ann(8, 13, 11, 5, 20, 12, 20),
        # image 14: no boxes
        _ann(9, 15, 11, 12, 4, 24, 36),
    ]
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}


def val_coco_dict() -> dict[str, Any]:
    """3 validation images (ids 101, 102, 105), one of them portrait."""
    images = [_image(101, "v0.png", 64, 48), _image(102, "v1.png", 48, 64), _image(105, "v2.png", 64, 48)]
    anns = [
        _ann(21, 101, 7, 4, 4, 40, 30),
        _ann(22, 102, 3, 6, 10, 30, 40),
        _ann(23, 105, 11, 20, 10, 30, 30),
        _ann(24, 105, 3, 2, 2, 10, 10),
    ]
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(CATEGORIES)}


def make_coco_split(
    root: Path,
    train: Optional[dict[str, Any]] = None,
    val: Optional[dict[str, Any]] = None,
    images: Optional[dict[str, np.ndarray]] = None,
) -> dict[str, str]:
    """Write the train and val sets (default :func:`train_coco_dict`, :func:`val_coco_dict`) under ``root``,
    with the image contents of ``images`` by file name (see ``make_coco``); returns the ``data.*`` path
    settings."""
    ti, ta = make_coco(root / "train", train_coco_dict() if train is None else train, images)
    vi, va = make_coco(root / "val", val_coco_dict() if val is None else val, images)
    return {
        "format": "coco",
        "train_images": str(ti),
        "train_annotations": str(ta),
        "val_images": str(vi),
        "val_annotations": str(va),
    }


def tiny_config(paths: dict[str, Any], output_dir: Path, num_classes: int = 3, **sections: dict[str, Any]) -> dict:
    """The tiny model/solver as a nested dict: ``paths`` are ``data.*`` settings (from
    :func:`make_coco_split`), ``sections`` (e.g. ``solver={"max_iter": 4}``) update the sections."""
    cfg: dict[str, Any] = {
        "model": {
            "num_classes": num_classes,
            "backbone": {"name": "mobilenet_v2", "norm": "frozen_bn", "freeze_at": 2, "weights": None},
            "fpn_channels": 32,
            "head_convs": 1,
            "anchors": {"sizes": [8.0, 16.0, 32.0, 64.0, 128.0]},
            "score_thresh": 0.0,  # an untrained model must still produce detections to evaluate
            "topk_candidates": 100,
            "detections_per_image": 20,
        },
        "data": {
            **paths,
            "min_size": [64, 96],
            "max_size": 128,
            "test_min_size": 96,
            "flip_prob": 0.5,
            "num_workers": 0,
            "test_batch_size": 2,
        },
        "solver": {
            "batch_size": 2,
            "reference_batch_size": 2,
            "base_lr": 0.02,
            "max_iter": 6,
            "warmup_iters": 2,
            "warmup_factor": 0.1,
            "warmup_fraction": 1.0,
            "steps": [0.5],
            "momentum": 0.9,
        },
        "train": {
            "output_dir": str(output_dir),
            "checkpoint_period": 2,
            "log_period": 1,
            "num_threads": 1,
            "device": "cpu",
            "seed": 0,
            "keep_checkpoints": 10,
        },
    }
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child ``python -m retinanet``: one thread per library, this source tree."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "retinanet", *args]


def run_cli(*args: str, timeout: float = 120, env: Optional[dict[str, str]] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_command(*args), capture_output=True, text=True, timeout=timeout, env=env or subprocess_env()
    )


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], where: str = "") -> None:
    """Bit-exact equality of two state dicts (same keys, dtypes, shapes and values)."""
    assert list(a) == list(b), f"{where}: different keys"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{where}{k}: max abs diff {(a[k].double() - b[k].double()).abs().max():.3g}"


def momentum_buffers(state: dict[str, Any]) -> list[torch.Tensor]:
    opt = state["optimizer"]["state"]
    return [opt[i]["momentum_buffer"] for i in sorted(opt)]
