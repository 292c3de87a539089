"""Data layer: image reading, COCO and Pascal VOC datasets, transforms, batching.

Item contract: ``(image float32 [3, H, W] RGB 0-1, target)`` with ``target["boxes"]`` float32
``[n, 4]`` xyxy pixels of the current image, ``labels`` int64 ``[n]`` in ``0..K-1``, ``image_id``,
``orig_size`` ``(h, w)`` of the file, ``size`` ``(h, w)`` now (see :mod:`retinanet.data.coco`).
Batches: :func:`collate` -> :class:`Batch` ``(images: list of [3, h, w], targets)``; the model
normalizes and pads. Bad data raises :class:`DataError` (a ``ValueError``) naming the file.

Modules: ``image_io`` (load_image), ``dataset`` (the base class), ``coco``, ``voc``, ``transforms``,
``augment`` / ``mosaic`` / ``augment_build`` (``data.augment``), ``categories``, ``collate``, ``sampler``,
``errors``; ``build`` (datasets and loaders from a config).
"""

from retinanet.data.augment import (
    LargeScaleJitter,
    PhotometricDistortion,
    RandomExpand,
    RandomIoUCrop,
    RandomRotate90,
    RandomVerticalFlip,
)
from retinanet.data.augment_build import build_augmentations
from retinanet.data.coco import CocoDetection
from retinanet.data.collate import Batch, collate
from retinanet.data.dataset import DetectionDataset, ImageInfo, sanitize_boxes
from retinanet.data.errors import DataError
from retinanet.data.image_io import get_max_image_pixels, load_image, set_max_image_pixels
from retinanet.data.mosaic import Mosaic
from retinanet.data.transforms import (
    Compose,
    RandomHorizontalFlip,
    ResizeShortestSide,
    ToTensor,
    build_transforms,
    get_output_size,
    to_tensor,
)
from retinanet.data.voc import VOC_CLASSES, VOCDetection

__all__ = [
    "DataError",
    "load_image",
    "set_max_image_pixels",
    "get_max_image_pixels",
    "CocoDetection",
    "VOCDetection",
    "VOC_CLASSES",
    "DetectionDataset",
    "ImageInfo",
    "sanitize_boxes",
    "Compose",
    "ResizeShortestSide",
    "RandomHorizontalFlip",
    "ToTensor",
    "to_tensor",
    "get_output_size",
    "build_transforms",
    "PhotometricDistortion",
    "RandomIoUCrop",
    "RandomExpand",
    "LargeScaleJitter",
    "RandomVerticalFlip",
    "RandomRotate90",
    "Mosaic",
    "build_augmentations",
    "Batch",
    "collate",
]
