"""Prediction from a trained checkpoint on images, lists of images or folders.

    from retinanet import Predictor
    p = Predictor("runs/demo/model_final.pth")
    det = p.predict("image.jpg")          # {"boxes", "scores", "labels", "names"} in file pixels

A checkpoint written by the trainer carries its config and class names; for a bare state dict (for
example a torchvision-format RetinaNet file) pass ``config=`` a YAML file or preset name.

Inputs of :meth:`Predictor.predict` / :meth:`Predictor.predict_many`: image paths (any format
:func:`retinanet.data.load_image` reads) or RGB ``uint8`` arrays ``[H, W, 3]``. Each image is resized
like the evaluation images (shorter side ``data.test_min_size``, longer side at most
``data.max_size``); the model normalizes, pads and maps the boxes back to the pixels of the input.

:func:`find_images` expands the command line's inputs: image files, folders (recursively, sorted) and
list files (``.txt``: one image path per line; blank lines and lines starting with ``#`` are skipped;
relative paths are taken relative to the list file's folder when they do not exist relative to the
current directory). A missing input is a ``FileNotFoundError`` naming it (and the list file and line).

:func:`load_detector` is the loading step on its own (checkpoint -> eval-mode model, config, class
names, category ids), shared with :mod:`retinanet.export.exporter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retinanet.config import Config, ConfigError, config_from_dict, load_config, validate
from retinanet.data.build import eval_transforms
from retinanet.data.categories import label_table
from retinanet.data.collate import collate
from retinanet.data.image_io import load_image
from retinanet.inference.loop import inference_model
from retinanet.modeling.retinanet import RetinaNet
from retinanet.modeling.state_dict import canonical_state_dict, describe_state, load_model_state, matching_presets
from retinanet.utils.device import resolve_device
from retinanet.utils.serialization import load_file

__all__ = ["Predictor", "LoadedDetector", "load_detector", "find_images", "image_batches", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ImageLike = Union[str, Path, np.ndarray]


def _read_list_file(path: Path) -> list[Path]:
    out: list[Path] = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        q = Path(item).expanduser()
        if not q.is_absolute() and not q.exists() and (path.parent / q).exists():
            q = path.parent / q
        if not q.exists():
            raise FileNotFoundError(f"{path}:{n}: image not found: {item}")
        out.extend(_folder_images(q) if q.is_dir() else [q])
    return out


def _folder_images(folder: Path) -> list[Path]:
    return sorted(q for q in folder.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file())


def find_images(inputs: Sequence[Union[str, Path]]) -> list[Path]:
    """Expand files, folders (recursively, sorted) and ``.txt`` list files into image paths.

    A list file holds one path per line (blank lines and ``#`` comments skipped); relative paths that
    do not exist from the current directory are looked up next to the list file.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(_folder_images(p))
        elif p.suffix.lower() == ".txt" and p.is_file():
            out.extend(_read_list_file(p))
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
        target = {
            "boxes": torch.zeros((0, 4)),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "image_id": i,
            "orig_size": (h, w),
        }
        return self.transforms(arr, target)


@dataclass
class LoadedDetector:
    """What :func:`load_detector` returns."""

    model: RetinaNet  # eval mode, on ``device``
    cfg: Config
    device: torch.device
    class_names: list[str]  # label i -> name (retinanet.data.categories.label_table)
    label_to_category_id: list[int]  # label i -> category id (1..K when a "dataset" file has none)
    ema: bool = False  # the weights are the checkpoint's "ema" entry (solver.ema), not its "model"


def load_detector(
    weights: Union[str, Path],
    config: Optional[Union[str, Config]] = None,
    device: str = "auto",
    score_thresh: Optional[float] = None,
    overrides: Optional[list[str]] = None,
) -> LoadedDetector:
    """Load a checkpoint (safely: ``weights_only``/safetensors) into an eval-mode :class:`RetinaNet`.

    The config is ``config`` (a :class:`Config`, YAML file or preset) when given, else the one stored
    in the checkpoint (with ``overrides``). ``score_thresh`` replaces ``model.score_thresh`` and is
    validated like it (``ConfigError`` outside [0, 1]). A checkpoint of a run with weight EMA holds the
    EMA weights in ``"ema"`` beside the raw ones in ``"model"``: they are loaded when the config says
    ``solver.ema`` (``solver.ema=false`` loads the raw ones). Errors: ``FileNotFoundError``,
    :class:`~retinanet.utils.serialization.CheckpointError` (truncated, unsafe, wrong architecture),
    :class:`~retinanet.config.ConfigError`.
    """
    state = load_file(weights)
    model_state = state.get("model", state)
    if isinstance(config, Config):
        cfg = config
    elif config is not None:
        cfg = load_config(str(config), overrides)
    elif "config" in state:
        from retinanet.config import apply_overrides

        raw = state["config"]
        if not isinstance(raw, dict):
            raise ConfigError(f"{weights}: the stored 'config' is a {type(raw).__name__}, not a mapping")
        try:
            cfg = config_from_dict(apply_overrides(raw, overrides) if overrides else raw)
        except ConfigError as e:
            raise ConfigError(f"{weights}: the stored config is invalid: {e}") from None
    else:
        exact, _ = matching_presets(describe_state(canonical_state_dict(model_state, set())))
        hint = f"; it fits the preset {' or '.join(exact)}" if exact else ""
        raise ConfigError(
            f"{weights}: the file holds no config; pass config= (a YAML file or preset; --config on the "
            f"command line){hint}"
        )
    if score_thresh is not None:
        cfg.model.score_thresh = float(score_thresh)
        try:
            validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"score threshold {score_thresh}: {e}") from None
    use_ema = bool(cfg.solver.ema) and isinstance(state.get("ema"), dict)
    if use_ema:
        model_state = state["ema"]
    dev = resolve_device(device)
    model = RetinaNet.from_config(cfg).to(dev).eval()
    load_model_state(model, model_state)
    try:
        class_names, cat_ids = label_table(
            cfg.model.label_space,
            cfg.model.num_classes,
            state.get("class_names"),
            state.get("label_to_category_id"),
            source=str(weights),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return LoadedDetector(model, cfg, dev, class_names, cat_ids, ema=use_ema)


def image_batches(
    images: Iterable[ImageLike], transforms: Any, batch_size: int, num_workers: int = 0, progress: bool = False
) -> Iterator[Any]:
    """The inputs (paths or RGB arrays), resized by ``transforms``, as collated batches in input order
    (``batch.images``: list of [3, h, w]; ``batch.targets[i]``: ``orig_size``, ``image_id`` = input index),
    with a progress bar when asked. The one input path of :class:`Predictor` and the ONNX Runtime one."""
    items = list(images)
    loader = DataLoader(_Images(items, transforms), batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="predict", unit="img", dynamic_ncols=True)
    try:
        for batch in loader:
            yield batch
            if bar is not None:
                bar.update(len(batch.targets))
    finally:
        if bar is not None:
            bar.close()


class Predictor:
    """Loads a checkpoint once and predicts on images (paths or RGB uint8 arrays)."""

    def __init__(
        self,
        weights: Union[str, Path],
        config: Optional[Union[str, Config]] = None,
        device: str = "auto",
        score_thresh: Optional[float] = None,
        overrides: Optional[list[str]] = None,
    ) -> None:
        det = load_detector(weights, config=config, device=device, score_thresh=score_thresh, overrides=overrides)
        self.cfg = det.cfg
        self.device = det.device
        self.model = det.model
        # predict runs a BN-folded copy (same detections up to float rounding, faster on CPU)
        self.inference_model = inference_model(self.model, self.cfg)
        self.class_names: list[str] = det.class_names
        self.label_to_category_id: list[int] = det.label_to_category_id
        self.transforms = eval_transforms(self.cfg)

    def predict(self, image: ImageLike) -> dict:
        """Detections for one image: ``boxes`` [n, 4] (file pixels), ``scores``, ``labels``, ``names``."""
        return next(iter(self.predict_many([image], batch_size=1)))

    def predict_many(
        self, images: Iterable[ImageLike], batch_size: int = 2, num_workers: int = 0, progress: bool = False
    ) -> Iterable[dict]:
        """Yield one detection dict per input, in input order."""
        with torch.inference_mode():
            for batch in image_batches(images, self.transforms, batch_size, num_workers, progress):
                images_ = [im.to(self.device) for im in batch.images]
                outs = self.inference_model(images_, output_sizes=[t["orig_size"] for t in batch.targets])
                for t, det in zip(batch.targets, outs):
                    labels = det["labels"].cpu()
                    yield {
                        "boxes": det["boxes"].float().cpu(),
                        "scores": det["scores"].float().cpu(),
                        "labels": labels,
                        "names": [self.class_names[i] for i in labels.tolist()],
                        "image_index": int(t["image_id"]),
                    }
