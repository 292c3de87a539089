"""COCO-format detection dataset, and the machinery shared with the VOC reader.

``CocoDetection(image_dir, ann_file, transforms=None, class_names=None, skip_bad_images=False)``
reads a COCO detection json; ``ds[i]`` is ``(image, target)`` per the data contract:

- ``image``: float32 ``[3, H, W]`` RGB 0-1 (after ``transforms``; :class:`~retinanet.data.transforms.ToTensor`
  is applied if the transforms leave a numpy array);
- ``target``: ``boxes`` float32 ``[n, 4]`` xyxy pixels of the current image, ``labels`` int64 ``[n]``
  contiguous ``0..K-1``, ``image_id`` int (the json id), ``orig_size`` ``(h, w)`` of the decoded
  file, ``size`` ``(h, w)`` now, ``index`` (the dataset index actually loaded), plus what the
  transforms add (``scale``, ``flipped``).

Categories: labels are the json categories sorted by id (``label_to_category_id[label]`` is the
category id, ``category_id_to_label`` the inverse, ``class_names`` their names). Passing
``class_names`` selects categories by name and fixes the label order (e.g. to match a checkpoint);
annotations of other categories are then ignored (counted in ``stats["ignored_category"]``).

Validation before anything is indexed (every error is a :class:`DataError` naming the file and the
entry): malformed json (line and column), missing ``images`` / ``annotations`` / ``categories``,
entries without ``id`` / ``file_name`` / ``bbox`` / ``category_id`` / ``image_id`` (index and id
named), a bbox that is not 4 numbers, duplicate image or category ids, the same ``file_name`` listed
twice (an error: its boxes would be split over two training items), annotations whose
``category_id`` or ``image_id`` is not declared (annotation id named), and no images at all.

Boxes: ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; NaN/inf or ``w <= 0`` / ``h <= 0`` boxes are
dropped, boxes partly outside the image are clipped to it and dropped if nothing is left. Every drop
and clip is counted in ``stats`` and logged on the ``retinanet.data`` logger: one WARNING summary per
dataset with an example (file and annotation id), one DEBUG line per box. Crowd boxes
(``iscrowd=1``) are never training targets. Images without boxes are kept (all background).

``coco_gt()`` returns the ground truth for COCO evaluation: the json's images (sizes as in the json)
and its annotations with their original boxes and areas, crowd included; dropped (invalid) boxes and
annotations of unselected categories are left out, ``area`` and ``iscrowd`` are filled in where
missing, and annotation ids are renumbered ``1..M`` if they are not unique and non-zero (pycocotools
treats id 0 as "unmatched"). ``coco_api()`` is the same as a pycocotools ``COCO`` object.

The per-box data is kept in numpy arrays (not lists of dicts), so DataLoader workers share it
without copy-on-read growth.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import ExifTags, Image
from torch.utils.data import Dataset

from retinanet.data.errors import DataError
from retinanet.data.image_io import load_image
from retinanet.data.transforms import to_tensor

__all__ = ["CocoDetection", "DetectionDataset", "ImageInfo", "sanitize_boxes", "read_json", "BoxStatus"]

logger = logging.getLogger("retinanet.data")

PathLike = Union[str, "os.PathLike[str]"]
Transform = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]


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
    REASONS = {1: "clipped to the image", 2: "dropped: NaN or inf coordinate",
               3: "dropped: zero or negative width/height", 4: "dropped: outside the image"}


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


def read_json(path: PathLike, what: str = "annotation file") -> Any:
    """Parse a json file; errors name the file, and line and column for malformed json."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{p}: {what} not found", p) from None
    except OSError as e:
        raise DataError(f"{p}: cannot read {what} ({e.strerror or e})", p) from None
    if not raw.strip():
        raise DataError(f"{p}: {what} is empty", p)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}", p) from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: {what} is not UTF-8 text ({e})", p) from None


def _header_size(path: str, source: str) -> tuple[int, int]:
    """(h, w) of the displayed image from the file header (EXIF rotations 5..8 swap the sides)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            try:
                orientation = int(im.getexif().get(int(ExifTags.Base.Orientation), 1))
            except Exception:
                orientation = 1
    except Exception as e:
        raise DataError(f"{source}: the image size is not given and {path} cannot be opened ({e})", path) from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


class DetectionDataset(Dataset):
    """Base of :class:`CocoDetection` and :class:`~retinanet.data.voc.VOCDetection`.

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
            self.source, n_img, st["boxes"], len(self.class_names), st["images_without_boxes"],
        )

    def _describe_ann(self, j: int, ann_image: np.ndarray, ann_ids: np.ndarray) -> str:
        return f"annotation id {int(ann_ids[j])} in {self._file_name(int(ann_image[j]))}"

    def _report(self, status: np.ndarray, selected: np.ndarray, ann_image: np.ndarray,
                ann_ids: np.ndarray, ann_xyxy: np.ndarray) -> None:
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
            self.source, dropped, counts[BoxStatus.NONFINITE], counts[BoxStatus.NONPOSITIVE],
            counts[BoxStatus.OUTSIDE], counts[BoxStatus.CLIPPED],
            self._describe_ann(first, ann_image, ann_ids), _fmt_box(ann_xyxy[first]),
            BoxStatus.REASONS[int(status[first])],
        )
        if logger.isEnabledFor(logging.DEBUG):
            for j in bad.tolist():
                logger.debug("%s: %s: bbox %s %s", self.source, self._describe_ann(j, ann_image, ann_ids),
                             _fmt_box(ann_xyxy[j]), BoxStatus.REASONS[int(status[j])])

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
                    "%s: the image is %dx%d (w x h) but %s says %dx%d; its boxes are clipped to the image"
                    "%s", path, w, h, self.source, rec_w, rec_h,
                    " (the file has an EXIF rotation? annotation sizes may refer to the stored pixels)"
                    if (h, w) == (rec_w, rec_h) else "",
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
        raise DataError(f"{self.source}: none of the {n} images could be loaded; first error: "
                        f"{next(iter(self.bad_images.values()))}")

    # ---------------------------------------------------------------------------------- evaluation
    def coco_gt(self) -> dict[str, Any]:
        """COCO ground truth dict (images, annotations, categories) for evaluation; see the module docstring."""
        ids = self._gt_ann_ids
        if len(ids) and (ids.min() <= 0 or len(np.unique(ids)) != len(ids)):
            logger.warning("%s: annotation ids are not unique positive numbers; coco_gt() renumbers them 1..%d",
                           self.source, len(ids))
            ids = np.arange(1, len(ids) + 1, dtype=np.int64)
        cat_ids = np.asarray(self.label_to_category_id, dtype=np.int64)[self._gt_label]
        img_ids = self._image_ids[self._gt_image]
        images = [
            {"id": int(iid), "file_name": self._file_name(k), "height": int(h), "width": int(w)}
            for k, (iid, (h, w)) in enumerate(zip(self._image_ids.tolist(), self._hw.tolist()))
        ]
        annotations = [
            {"id": a, "image_id": im, "category_id": c, "bbox": list(b), "area": ar, "iscrowd": int(cr)}
            for a, im, c, b, ar, cr in zip(ids.tolist(), img_ids.tolist(), cat_ids.tolist(),
                                           self._gt_xywh.tolist(), self._gt_area.tolist(), self._gt_crowd.tolist())
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
        return (f"{type(self).__name__}({self.source!r}, images={len(self)}, classes={len(self.class_names)}, "
                f"boxes={self.stats.get('boxes', 0)})")


def _fmt_box(b: Any) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in np.asarray(b).reshape(-1)) + "]"


_JSON_NUMBERS = frozenset({int, float})


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class CocoDetection(DetectionDataset):
    """COCO-format detection dataset (see the module docstring).

    ``image_dir``: folder the json's ``file_name`` entries are relative to. ``ann_file``: the json.
    ``class_names``: optional category names to use, in label order (default: all, sorted by id).
    ``skip_bad_images``: on an unreadable image, log it and return the next good item instead
    (deterministic; counted in ``num_skipped``, per process).
    """

    def __init__(
        self,
        image_dir: PathLike,
        ann_file: PathLike,
        transforms: Optional[Transform] = None,
        class_names: Optional[Sequence[str]] = None,
        skip_bad_images: bool = False,
    ) -> None:
        super().__init__(transforms, skip_bad_images)
        self.image_dir = os.fspath(image_dir)
        self.ann_file = os.fspath(ann_file)
        self.source = self.ann_file
        data = read_json(self.ann_file)
        self._parse(data, class_names)

    # ----------------------------------------------------------------------------------------
    def _err(self, msg: str) -> DataError:
        return DataError(f"{self.ann_file}: {msg}", self.ann_file)

    def _entries(self, data: dict[str, Any], key: str) -> list[Any]:
        if key not in data:
            raise self._err(f"missing top-level key '{key}' (a COCO detection file has 'images', "
                            "'annotations' and 'categories')")
        v = data[key]
        if not isinstance(v, list):
            raise self._err(f"'{key}' must be a list, got {type(v).__name__}")
        for i, e in enumerate(v):
            if not isinstance(e, dict):
                raise self._err(f"{key}[{i}] must be an object, got {type(e).__name__}: {e!r:.80}")
        return v

    def _parse(self, data: Any, class_names: Optional[Sequence[str]]) -> None:
        if not isinstance(data, dict):
            raise self._err(f"the top level must be a JSON object, got {type(data).__name__}")
        images = self._entries(data, "images")
        anns = self._entries(data, "annotations")
        cats = self._entries(data, "categories")

        # ---- categories
        cat_by_id: dict[int, dict[str, Any]] = {}
        for i, c in enumerate(cats):
            for k in ("id", "name"):
                if k not in c:
                    raise self._err(f"categories[{i}] (id {c.get('id')!r}) has no '{k}'")
            if not _is_int(c["id"]):
                raise self._err(f"categories[{i}]: 'id' must be an integer, got {c['id']!r}")
            if not isinstance(c["name"], str):
                raise self._err(f"categories[{i}] (id {c['id']}): 'name' must be a string, got {c['name']!r}")
            if int(c["id"]) in cat_by_id:
                raise self._err(f"duplicate category id {c['id']} (categories[{i}])")
            cat_by_id[int(c["id"])] = c
        if not cat_by_id:
            raise self._err("'categories' is empty: there are no classes to detect")
        sorted_ids = sorted(cat_by_id)
        if class_names is None:
            used = sorted_ids
        else:
            by_name: dict[str, int] = {}
            for cid in sorted_ids:
                by_name.setdefault(cat_by_id[cid]["name"], cid)
            missing = [n for n in class_names if n not in by_name]
            if missing:
                raise self._err(f"class_names {missing} are not category names of this file "
                                f"(it has: {[cat_by_id[c]['name'] for c in sorted_ids]})")
            if len(set(class_names)) != len(class_names):
                raise self._err(f"class_names has duplicates: {list(class_names)}")
            for n in class_names:
                dup = [cid for cid in sorted_ids if cat_by_id[cid]["name"] == n]
                if len(dup) > 1:
                    raise self._err(f"category name {n!r} is used by several ids {dup}; cannot select it by name")
            used = [by_name[n] for n in class_names]
        self.label_to_category_id = [int(c) for c in used]
        self.category_id_to_label = {cid: i for i, cid in enumerate(self.label_to_category_id)}
        self.class_names = [str(cat_by_id[c]["name"]) for c in used]
        categories = [{k: v for k, v in cat_by_id[c].items() if k in ("id", "name", "supercategory")} for c in used]

        # ---- images
        if not images:
            raise self._err("no images ('images' is empty): nothing to train or evaluate on")
        index_of_id: dict[int, int] = {}
        index_of_name: dict[str, int] = {}
        file_names: list[str] = []
        hw = np.zeros((len(images), 2), dtype=np.int64)
        for i, im in enumerate(images):
            for k in ("id", "file_name"):
                if k not in im:
                    raise self._err(f"images[{i}] (id {im.get('id')!r}) has no '{k}'")
            iid, name = im["id"], im["file_name"]
            if not _is_int(iid):
                raise self._err(f"images[{i}]: 'id' must be an integer, got {iid!r}")
            if not isinstance(name, str) or not name:
                raise self._err(f"images[{i}] (id {iid}): 'file_name' must be a non-empty string, got {name!r}")
            if iid in index_of_id:
                raise self._err(f"duplicate image id {iid}: images[{index_of_id[iid]}] and images[{i}]")
            if name in index_of_name:
                j = index_of_name[name]
                raise self._err(f"image listed twice: file_name {name!r} is images[{j}] (id {images[j]['id']}) "
                                f"and images[{i}] (id {iid}); merge them into one entry")
            index_of_id[int(iid)] = i
            index_of_name[name] = i
            file_names.append(name)
            h, w = im.get("height"), im.get("width")
            if h is None or w is None:
                hw[i] = _header_size(os.path.join(self.image_dir, name), f"{self.ann_file}: images[{i}] (id {iid})")
            elif not (_is_num(h) and _is_num(w) and h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
                raise self._err(f"images[{i}] (id {iid}, {name}): width/height must be positive numbers, "
                                f"got width={w!r}, height={h!r}")
            else:
                hw[i] = (int(round(h)), int(round(w)))

        # ---- annotations (hot loop at COCO scale: plain type checks, json only yields int/float/bool/...)
        num = _JSON_NUMBERS
        label_of = self.category_id_to_label
        ids_l: list[int] = []
        img_l: list[int] = []
        lab_l: list[int] = []
        crowd_l: list[bool] = []
        area_l: list[float] = []
        box_l: list[Any] = []
        nan = float("nan")
        for j, a in enumerate(anns):
            try:
                aid, b, iid, cid = a["id"], a["bbox"], a["image_id"], a["category_id"]
            except KeyError:
                k = next(k for k in ("id", "image_id", "category_id", "bbox") if k not in a)
                raise self._err(f"annotations[{j}] (id {a.get('id')!r}) has no '{k}'") from None
            if type(aid) is not int:
                raise self._err(f"annotations[{j}]: 'id' must be an integer, got {aid!r}")
            if not (type(b) is list and len(b) == 4 and type(b[0]) in num and type(b[1]) in num
                    and type(b[2]) in num and type(b[3]) in num):
                raise self._err(f"annotation id {aid}: 'bbox' must be 4 numbers [x, y, w, h], got {b!r:.100}")
            img_i = index_of_id.get(iid) if type(iid) is int else None
            if img_i is None:
                raise self._err(f"annotation id {aid}: unknown image_id {iid!r} (not in 'images')")
            if type(cid) is not int or cid not in cat_by_id:
                raise self._err(f"annotation id {aid}: unknown category_id {cid!r} "
                                f"(declared categories: {sorted_ids[:20]}{' ...' if len(sorted_ids) > 20 else ''})")
            area = a.get("area")
            ids_l.append(aid)
            img_l.append(img_i)
            lab_l.append(label_of.get(cid, -1))
            crowd_l.append(bool(a.get("iscrowd", 0)))
            area_l.append(area if type(area) in num else nan)
            box_l.append(b)
        m = len(box_l)
        boxes = np.array(box_l, dtype=np.float64).reshape(m, 4)
        ann_ids = np.array(ids_l, dtype=np.int64)
        ann_image = np.array(img_l, dtype=np.int64)
        ann_label = np.array(lab_l, dtype=np.int64)
        ann_crowd = np.array(crowd_l, dtype=bool)
        ann_area = np.array(area_l, dtype=np.float64)
        xyxy = boxes.copy()
        xyxy[:, 2:] += xyxy[:, :2]
        self._build(
            image_root=self.image_dir, file_names=file_names, image_ids=np.array(list(index_of_id), dtype=np.int64),
            hw=hw, ann_image=ann_image, ann_ids=ann_ids, ann_xyxy=xyxy, ann_label=ann_label,
            ann_crowd=ann_crowd, ann_area=ann_area, ann_train=~ann_crowd, categories=categories,
            ann_xywh=boxes,
        )
