"""Prediction from a trained checkpoint on images, lists of images or folders.

    from retinanet import Predictor
    p = Predictor("runs/demo/model_final.pth")
    det = p.predict("image.jpg")          # {"boxes", "scores", "labels", "names"} in file pixels

A checkpoint written by the trainer carries its config and class names; for a bare state dict (for
example a torchvision-format RetinaNet file) pass ``config=`` a YAML file or preset name.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import Config, config_from_dict, load_config
from ..data.collate import collate
from ..data.image_io import load_image
from ..data.transforms import build_transforms, map_boxes_to_original
from ..modeling.retinanet import RetinaNet
from .checkpoint import load_checkpoint, load_model_state
from .trainer import resolve_device

__all__ = ["Predictor", "find_images", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ImageLike = Union[str, Path, np.ndarray]


def find_images(inputs: Sequence[Union[str, Path]]) -> list[Path]:
    """Expand files, folders (recursively, sorted) and text files listing paths into image paths."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS))
        elif p.suffix.lower() == ".txt" and p.is_file():
            out.extend(Path(line.strip()) for line in p.read_text().splitlines() if line.strip())
        else:
            if not p.exists():
                raise FileNotFoundError(f"input not found: {p}")
            out.append(p)
    return out


class _Images(Dataset):
    def __init__(self, items: Sequence[ImageLike], transforms) -> None:
        self.items, self.transforms = list(items), transforms

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        arr = load_image(item) if isinstance(item, (str, Path)) else np.ascontiguousarray(item)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image {i}: expected an RGB uint8 array [H, W, 3], got {arr.dtype} {arr.shape}")
        h, w = arr.shape[:2]
        target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
                  "image_id": i, "orig_size": (h, w)}
        return self.transforms(arr, target)


class Predictor:
    """Loads a checkpoint once and predicts on images (paths or RGB uint8 arrays)."""

    def __init__(self, weights: Union[str, Path], config: Optional[Union[str, Config]] = None,
                 device: str = "auto", score_thresh: Optional[float] = None,
                 overrides: Optional[list[str]] = None) -> None:
        state = load_checkpoint(weights)
        model_state = state.get("model", state) if isinstance(state, dict) else state
        if isinstance(config, Config):
            cfg = config
        elif config is not None:
            cfg = load_config(str(config), overrides)
        elif isinstance(state, dict) and "config" in state:
            cfg = config_from_dict(state["config"])
            if overrides:
                from ..config import apply_overrides
                cfg = config_from_dict(apply_overrides(state["config"], overrides))
        else:
            raise ValueError(f"{weights}: the file holds no config; pass config= (a YAML file or preset)")
        if score_thresh is not None:
            cfg.model.score_thresh = float(score_thresh)
        cfg.model.backbone.weights = None  # the checkpoint has every weight
        self.cfg = cfg
        self.device = resolve_device(device)
        self.model = RetinaNet(cfg.model).to(self.device).eval()
        load_model_state(self.model, model_state)
        names = state.get("class_names") if isinstance(state, dict) else None
        self.class_names: list[str] = list(names) if names else [str(i) for i in range(cfg.model.num_classes)]
        self.label_to_category_id: list[int] = list(state.get("label_to_category_id") or
                                                    range(1, cfg.model.num_classes + 1))
        d = cfg.data
        self.transforms = build_transforms(train=False, min_size=d.test_min_size, max_size=d.max_size,
                                           flip_prob=0.0)

    def predict(self, image: ImageLike) -> dict:
        """Detections for one image: ``boxes`` [n, 4] (file pixels), ``scores``, ``labels``, ``names``."""
        return next(iter(self.predict_many([image], batch_size=1)))

    def predict_many(self, images: Iterable[ImageLike], batch_size: int = 2, num_workers: int = 0,
                     progress: bool = False) -> Iterable[dict]:
        """Yield one detection dict per input, in input order."""
        items = list(images)
        loader = DataLoader(_Images(items, self.transforms), batch_size=batch_size, num_workers=num_workers,
                            collate_fn=functools.partial(collate, size_divisibility=self.cfg.data.size_divisibility))
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(items), desc="predict", unit="img", dynamic_ncols=True)
        try:
            with torch.inference_mode():
                for batch in loader:
                    outs = self.model(batch.images.to(self.device), image_sizes=batch.image_sizes)
                    for t, det in zip(batch.targets, outs):
                        boxes = map_boxes_to_original(det["boxes"].float().cpu(), t)
                        labels = det["labels"].cpu()
                        yield {"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": labels,
                               "names": [self.class_names[i] for i in labels.tolist()],
                               "image_index": int(t["image_id"])}
                    if bar is not None:
                        bar.update(len(batch.targets))
        finally:
            if bar is not None:
                bar.close()
