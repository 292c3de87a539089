"""The detection dataset base class: per-box checks, per-image indexing, item loading, ground truth.

:class:`DetectionDataset` is what the format readers (:class:`~retinanet.data.coco.CocoDetection`,
:class:`~retinanet.data.voc.VOCDetection`) share. A reader parses its files into flat
per-annotation arrays and calls ``_build``; ``ds[i]`` is then ``(image, target)`` per the data
contract:

- ``image``: float32 ``[3, H, W]`` RGB 0-1 (after ``transforms``; :class:`~retinanet.data.transforms.ToTensor`
  is applied if the transforms leave a numpy array);
- ``target``: ``boxes`` float32 ``[n, 4]`` xyxy pixels of the current image, ``labels`` int64 ``[n]``
  contiguous ``0..K-1``, ``image_id`` int (the annotation file's id), ``orig_size`` ``(h, w)`` of
  the decoded file, ``size`` ``(h, w)`` now, ``index`` (the dataset index actually loaded), plus
  what the transforms add (``scale``, ``flipped``).

Boxes (:func:`sanitize_boxes`): NaN/inf or ``w <= 0`` / ``h <= 0`` boxes are dropped, boxes partly
outside the image are clipped to it and dropped if nothing is left. Every drop and clip is counted in
``stats`` and logged on the ``retinanet.data`` logger: one WARNING summary per dataset with an
example (file and annotation), one DEBUG line per box. Crowd boxes are never training targets.
Images without boxes are kept (all background).

``coco_gt()`` returns the ground truth for COCO evaluation: the images (sizes as annotated) and
their annotations with their original boxes and areas, crowd included; dropped (invalid) boxes and
annotations of unselected categories are left out, ``area`` and ``iscrowd`` are filled in where
missing, and annotation ids are renumbered ``1..M`` if they are not unique and non-zero (pycocotools
treats id 0 as "unmatched"). ``coco_api()`` is the same as a pycocotools ``COCO`` object.

The per-box data is kept in numpy arrays (not lists of dicts), so DataLoader workers share it
without copy-on-read growth.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from retinanet.data.errors import DataError
from retinanet.data.image_io import load_image
from retinanet.data.transforms import to_tensor

__all__ = ["DetectionDataset", "ImageInfo", "BoxStatus", "sanitize_boxes", "Transform"]

logger = logging.getLogger("retinanet.data")

Transform = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]  # (image, target) -> (image, target)


class ImageInfo(NamedTuple):
    """One image of a dataset: file path, size as recorded by the annotations, image id."""

    path: str
    height: int
    width: int
    image_id: int
    file_name: str


class BoxStatus:
    """Per-box outcome codes of :func:`sanitize_boxes`."""

    OK = 0
    CLIPPED = 1
    NONFINITE = 2
    NONPOSITIVE = 3
    OUTSIDE = 4
    REASONS = {
        1: "clipped to the image",
        2: "dropped: NaN or inf coordinate",
        3: "dropped: zero or negative width/height",
        4: "dropped: outside the image",
    }


def sanitize_boxes(xyxy: np.ndarray, hw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and clip boxes against their image sizes (vectorized).

    ``xyxy``: float ``[M, 4]``; ``hw``: ``[M, 2]`` (h, w) of each box's image.
    Returns ``(clipped [M, 4] float64, status [M] int8)`` with :class:`BoxStatus` codes; rows that are
    dropped keep their (meaningless) clipped values.
    """
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    hw = np.asarray(hw, dtype=np.float64).reshape(-1, 2)
    status = np.zeros(len(b), dtype=np.int8)
    finite = np.isfinite(b).all(axis=1)
    with np.errstate(invalid="ignore"):
        positive = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        c = np.empty_like(b)
        np.clip(b[:, 0::2], 0.0, hw[:, 1:2], out=c[:, 0::2])
        np.clip(b[:, 1::2], 0.0, hw[:, 0:1], out=c[:, 1::2])
        inside = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
        changed = (c != b).any(axis=1)
    status[changed] = BoxStatus.CLIPPED
    status[~inside] = BoxStatus.OUTSIDE
    status[~positive] = BoxStatus.NONPOSITIVE
    status[~finite] = BoxStatus.NONFINITE
    return c, status


class DetectionDataset(Dataset):
    """Base of :class:`~retinanet.data.coco.CocoDetection` and :class:`~retinanet.data.voc.VOCDetection`.

    Subclasses parse their format and call :meth:`_build` with flat per-annotation arrays; this class
    validates the boxes, indexes them per image, loads items and builds ``coco_gt()``.
    """

    source: str  # the annotation file / folder, used in messages
    class_names: list[str]
    label_to_category_id: list[int]
    category_id_to_label: dict[int, int]

    def __init__(self, transforms: Optional[Transform] = None, skip_bad_images: bool = False) -> None:
        self.transforms = transforms
        self.skip_bad_images = bool(skip_bad_images)
        self.num_skipped = 0  # items replaced by the next good one (per process)
        self.bad_images: dict[str, str] = {}  # path -> error message (per process)
        self._size_warned: set[int] = set()

    # ---------------------------------------------------------------------------------- building
    def _build(
        self,
        *,
        image_root: str,
        file_names: Sequence[str],
        image_ids: np.ndarray,
        hw: np.ndarray,
        ann_image: np.ndarray,
        ann_ids: np.ndarray,
        ann_xyxy: np.ndarray,
        ann_label: np.ndarray,
        ann_crowd: np.ndarray,
        ann_area: np.ndarray,
        ann_train: np.ndarray,
        categories: list[dict[str, Any]],
        ann_xywh: Optional[np.ndarray] = None,
    ) -> None:
        """Validate boxes and index them.

        ``ann_image``: image index per annotation; ``ann_label``: contiguous label or -1 (category not
        selected); ``ann_crowd``: ignored in evaluation (COCO crowd, VOC difficult); ``ann_train``:
        may be a training target (False for crowd, VOC difficult unless use_difficult); ``ann_xywh``:
        the boxes as the file gives them, for ``coco_gt()`` (default: from ``ann_xyxy``).
        """
        n_img = len(file_names)
        self._image_root = image_root
        self._file_names = np.array([f.encode("utf-8") for f in file_names], dtype=np.bytes_)
        self._image_ids = np.asarray(image_ids, dtype=np.int64)
        self._hw = np.asarray(hw, dtype=np.int64).reshape(n_img, 2)
        self._categories = categories

        ann_image = np.asarray(ann_image, dtype=np.int64)
        clipped, status = sanitize_boxes(ann_xyxy, self._hw[ann_image])
        selected = np.asarray(ann_label) >= 0
        valid = status <= BoxStatus.CLIPPED
        self._report(status, selected, ann_image, ann_ids, ann_xyxy)

        # ground truth for evaluation: original boxes, crowd kept
        keep_gt = valid & selected
        if ann_xywh is None:
            raw = np.asarray(ann_xyxy, dtype=np.float64)[keep_gt]
            self._gt_xywh = np.concatenate([raw[:, :2], raw[:, 2:] - raw[:, :2]], axis=1)
        else:
            self._gt_xywh = np.asarray(ann_xywh, dtype=np.float64)[keep_gt]
        self._gt_image = ann_image[keep_gt]
        self._gt_ann_ids = np.asarray(ann_ids, dtype=np.int64)[keep_gt]
        self._gt_label = np.asarray(ann_label, dtype=np.int64)[keep_gt]
        area = np.asarray(ann_area, dtype=np.float64)[keep_gt]
        wh_area = self._gt_xywh[:, 2] * self._gt_xywh[:, 3]
        self._gt_area = np.where(np.isfinite(area) & (area >= 0), area, wh_area)
        self._gt_crowd = np.asarray(ann_crowd, dtype=bool)[keep_gt]

        # training targets, grouped by image (stable: json order within an image)
        keep = keep_gt & np.asarray(ann_train, dtype=bool)
        img_of = ann_image[keep]
        order = np.argsort(img_of, kind="stable")
        self._boxes = clipped[keep][order].astype(np.float32)
        self._labels = np.asarray(ann_label, dtype=np.int64)[keep][order]
        counts = np.bincount(img_of, minlength=n_img)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

        st = self.stats
        st["images"] = n_img
        st["boxes"] = int(keep.sum())
        st["crowd"] = int((keep_gt & np.asarray(ann_crowd, dtype=bool) & ~np.asarray(ann_train, dtype=bool)).sum())
        st["ignored_category"] = int((~selected).sum())
        st["images_without_boxes"] = int((counts == 0).sum())
        logger.info(
            "%s: %d images, %d training boxes, %d classes, %d images without boxes",
            self.source,
            n_img,
            st["boxes"],
            len(self.class_names),
            st["images_without_boxes"],
        )

    def _describe_ann(self, j: int, ann_image: np.ndarray, ann_ids: np.ndarray) -> str:
        return f"annotation id {int(ann_ids[j])} in {self._file_name(int(ann_image[j]))}"

    def _report(
        self, status: np.ndarray, selected: np.ndarray, ann_image: np.ndarray, ann_ids: np.ndarray, ann_xyxy: np.ndarray
    ) -> None:
        status = np.where(selected, status, BoxStatus.OK)  # ignored categories are not reported
        counts = np.bincount(status, minlength=5)
        self.stats = {
            "clipped": int(counts[BoxStatus.CLIPPED]),
            "dropped_nonfinite": int(counts[BoxStatus.NONFINITE]),
            "dropped_nonpositive": int(counts[BoxStatus.NONPOSITIVE]),
            "dropped_outside": int(counts[BoxStatus.OUTSIDE]),
        }
        bad = np.flatnonzero(status != BoxStatus.OK)
        if len(bad) == 0:
            return
        dropped = int(counts[2:].sum())
        first = int(bad[0])
        logger.warning(
            "%s: %d box(es) dropped (%d NaN/inf, %d zero or negative size, %d outside the image), "
            "%d clipped to the image; e.g. %s: bbox %s %s. Details: DEBUG level of logger 'retinanet.data'",
            self.source,
            dropped,
            counts[BoxStatus.NONFINITE],
            counts[BoxStatus.NONPOSITIVE],
            counts[BoxStatus.OUTSIDE],
            counts[BoxStatus.CLIPPED],
            self._describe_ann(first, ann_image, ann_ids),
            _fmt_box(ann_xyxy[first]),
            BoxStatus.REASONS[int(status[first])],
        )
        if logger.isEnabledFor(logging.DEBUG):
            for j in bad.tolist():
                logger.debug(
                    "%s: %s: bbox %s %s",
                    self.source,
                    self._describe_ann(j, ann_image, ann_ids),
                    _fmt_box(ann_xyxy[j]),
                    BoxStatus.REASONS[int(status[j])],
                )

    # ---------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._file_names)

    def _file_name(self, i: int) -> str:
        return self._file_names[i].decode("utf-8")

    def image_info(self, i: int) -> ImageInfo:
        """File path, size recorded by the annotations (h, w) and image id of image ``i``."""
        i = self._check_index(i)
        name = self._file_name(i)
        h, w = (int(v) for v in self._hw[i])
        return ImageInfo(os.path.join(self._image_root, name), h, w, int(self._image_ids[i]), name)

    def _check_index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} images")
        return i % n

    def get_annotations(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Training boxes (float32 ``[n, 4]`` xyxy, file pixels) and labels of image ``i``, without loading it."""
        i = self._check_index(i)
        s, e = self._offsets[i], self._offsets[i + 1]
        return self._boxes[s:e].copy(), self._labels[s:e].copy()

    def _load(self, i: int) -> tuple[torch.Tensor, dict[str, Any]]:
        path = os.path.join(self._image_root, self._file_name(i))
        img = load_image(path)
        h, w = img.shape[:2]
        boxes, labels = self.get_annotations(i)
        rec_h, rec_w = (int(v) for v in self._hw[i])
        if (h, w) != (rec_h, rec_w):
            if i not in self._size_warned:
                self._size_warned.add(i)
                logger.warning(
                    "%s: the image is %dx%d (w x h) but %s says %dx%d; its boxes are clipped to the image%s",
                    path,
                    w,
                    h,
                    self.source,
                    rec_w,
                    rec_h,
                    " (the file has an EXIF rotation? annotation sizes may refer to the stored pixels)"
                    if (h, w) == (rec_w, rec_h)
                    else "",
                )
            c, status = sanitize_boxes(boxes, np.array([[h, w]]))
            ok = status <= BoxStatus.CLIPPED
            boxes, labels = c[ok].astype(np.float32), labels[ok]
        target: dict[str, Any] = {
            "boxes": torch.from_numpy(boxes.reshape(-1, 4)),
            "labels": torch.from_numpy(labels),
            "image_id": int(self._image_ids[i]),
            "orig_size": (h, w),
            "size": (h, w),
            "index": i,
        }
        image: Any = img
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        if not isinstance(image, torch.Tensor):
            image = to_tensor(image)
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        i = self._check_index(index)
        if not self.skip_bad_images:
            return self._load(i)
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            path = os.path.join(self._image_root, self._file_name(j))
            if path in self.bad_images:
                self.num_skipped += 1
                continue
            try:
                return self._load(j)
            except DataError as e:
                self.bad_images[path] = str(e)
                self.num_skipped += 1
                logger.warning("skipping bad image (%d skipped so far): %s", self.num_skipped, e)
        raise DataError(
            f"{self.source}: none of the {n} images could be loaded; first error: "
            f"{next(iter(self.bad_images.values()))}"
        )

    # ---------------------------------------------------------------------------------- evaluation
    def coco_gt(self) -> dict[str, Any]:
        """COCO ground truth dict (images, annotations, categories) for evaluation; see the module docstring."""
        ids = self._gt_ann_ids
        if len(ids) and (ids.min() <= 0 or len(np.unique(ids)) != len(ids)):
            logger.warning(
                "%s: annotation ids are not unique positive numbers; coco_gt() renumbers them 1..%d",
                self.source,
                len(ids),
            )
            ids = np.arange(1, len(ids) + 1, dtype=np.int64)
        cat_ids = np.asarray(self.label_to_category_id, dtype=np.int64)[self._gt_label]
        img_ids = self._image_ids[self._gt_image]
        images = [
            {"id": int(iid), "file_name": self._file_name(k), "height": int(h), "width": int(w)}
            for k, (iid, (h, w)) in enumerate(zip(self._image_ids.tolist(), self._hw.tolist()))
        ]
        annotations = [
            {"id": a, "image_id": im, "category_id": c, "bbox": list(b), "area": ar, "iscrowd": int(cr)}
            for a, im, c, b, ar, cr in zip(
                ids.tolist(),
                img_ids.tolist(),
                cat_ids.tolist(),
                self._gt_xywh.tolist(),
                self._gt_area.tolist(),
                self._gt_crowd.tolist(),
            )
        ]
        categories = [dict(c) for c in sorted(self._categories, key=lambda c: c["id"])]
        return {"images": images, "annotations": annotations, "categories": categories}

    def coco_api(self) -> Any:
        """``coco_gt()`` as a pycocotools ``COCO`` object (its index messages silenced)."""
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = self.coco_gt()
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.source!r}, images={len(self)}, classes={len(self.class_names)}, "
            f"boxes={self.stats.get('boxes', 0)})"
        )


def _fmt_box(b: Any) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in np.asarray(b).reshape(-1)) + "]"
