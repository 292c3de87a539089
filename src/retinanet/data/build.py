"""Build datasets and loaders from a :class:`~retinanet.config.Config`.

``build_dataset(cfg, train)`` returns a COCO or VOC dataset with the training transforms (the
``data.augment`` ops, multi-scale resize of the shorter side, horizontal flip) or the test transforms
(resize to ``test_min_size``).
``build_eval_loader`` splits a dataset across processes (rank ``r`` takes images ``r, r + W, ...``)
and batches it with the same collate as training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from retinanet.config import Config, ConfigError
from retinanet.data.coco import CocoDetection
from retinanet.data.collate import collate
from retinanet.data.dataset import DetectionDataset
from retinanet.data.mosaic import bind_mosaic
from retinanet.data.transforms import Compose, LabelsToCategoryIds, build_transforms
from retinanet.data.voc import VOC_CLASSES, VOCDetection

__all__ = ["build_dataset", "build_eval_loader", "eval_transforms"]


def _existing_path(value: str | None, key: str) -> str:
    """``value`` if it names an existing path, else a ConfigError naming the config ``key``."""
    if not value:
        raise ConfigError(f"{key} is not set")
    if not Path(value).exists():
        raise ConfigError(f"{key}: path does not exist: {value}")
    return value


def eval_transforms(cfg: Config) -> Compose:
    """The evaluation and prediction transforms of ``cfg.data``: one resize, then ToTensor."""
    d = cfg.data
    return build_transforms(
        train=False,
        min_size=d.test_min_size,
        max_size=d.max_size,
        flip_prob=0.0,
        resize=d.resize,
        rounding=d.resize_rounding,
    )


def _mean_colour(pixel_mean: tuple[float, float, float]) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(255 * v))) for v in pixel_mean)
    return r, g, b


def build_dataset(cfg: Config, train: bool) -> DetectionDataset:
    """The training (``train=True``) or validation dataset of ``cfg.data``, with its transforms."""
    d = cfg.data
    if train:
        tf = build_transforms(
            train=True,
            min_size=d.min_size,
            max_size=d.max_size,
            flip_prob=d.flip_prob,
            resize=d.resize,
            rounding=d.resize_rounding,
            augment=d.augment,
            fill=_mean_colour(cfg.model.pixel_mean),
        )
    else:
        tf = eval_transforms(cfg)
    if d.format == "coco":
        images = _existing_path(d.train_images if train else d.val_images, f"data.{'train' if train else 'val'}_images")
        ann = _existing_path(
            d.train_annotations if train else d.val_annotations, f"data.{'train' if train else 'val'}_annotations"
        )
        ds: DetectionDataset = CocoDetection(images, ann, transforms=tf, skip_bad_images=d.skip_bad_images)
    else:
        root = _existing_path(d.voc_root, "data.voc_root")
        ds = VOCDetection(
            root,
            split=d.train_split if train else d.val_split,
            class_names=d.class_names or VOC_CLASSES,
            transforms=tf,
            skip_bad_images=d.skip_bad_images,
        )
    if train:
        bind_mosaic(ds, tf)  # mosaic ops take their partner images from the dataset
    k = len(ds.class_names)
    if cfg.model.label_space == "coco_category_ids":  # output i is category id i: targets carry the ids
        bad = [c for c in ds.label_to_category_id if not 0 <= c < cfg.model.num_classes]
        if bad:
            raise ConfigError(
                f"model.label_space=coco_category_ids: the dataset's category ids {bad[:10]} are no outputs "
                f"0..{cfg.model.num_classes - 1}; use model.label_space=dataset (model.weights= copies "
                f"COCO classes by name)"
            )
        ds.transforms = Compose([tf, LabelsToCategoryIds(ds.label_to_category_id)])
    elif k != cfg.model.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the dataset "
            f"({'train' if train else 'val'}) has {k} classes: {list(ds.class_names)[:10]}"
            f"{' ...' if k > 10 else ''}. Set model.num_classes={k}."
        )
    return ds


class _Shard(torch.utils.data.Sampler[int]):
    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.idx = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def build_eval_loader(dataset: DetectionDataset, cfg: Config, rank: int = 0, world_size: int = 1) -> DataLoader:
    """This process's share of ``dataset`` in batches of ``data.test_batch_size``."""
    return DataLoader(
        dataset,
        batch_size=cfg.data.test_batch_size,
        sampler=_Shard(len(dataset), rank, world_size),
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
    )
