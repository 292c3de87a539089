"""COCO-format detection dataset: parsing and validating a COCO detection json.

``CocoDetection(image_dir, ann_file, transforms=None, class_names=None, skip_bad_images=False)``
reads a COCO detection json; ``ds[i]`` is ``(image, target)`` per the data contract of
:mod:`retinanet.data.dataset` (``image_id`` is the json id), which also checks the boxes and builds
``coco_gt()``.

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
An image without ``width`` / ``height`` gets its size from the file header.

Boxes: ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; crowd boxes (``iscrowd=1``) are kept for
evaluation only. ``coco_gt()`` keeps the json's original boxes, areas and annotation ids.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from retinanet.data.dataset import DetectionDataset, Transform
from retinanet.data.errors import DataError
from retinanet.data.image_io import PathLike, read_image_size

__all__ = ["CocoDetection", "read_json"]


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
            raise self._err(
                f"missing top-level key '{key}' (a COCO detection file has 'images', 'annotations' and 'categories')"
            )
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
                raise self._err(
                    f"class_names {missing} are not category names of this file "
                    f"(it has: {[cat_by_id[c]['name'] for c in sorted_ids]})"
                )
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
                raise self._err(
                    f"image listed twice: file_name {name!r} is images[{j}] (id {images[j]['id']}) "
                    f"and images[{i}] (id {iid}); merge them into one entry"
                )
            index_of_id[int(iid)] = i
            index_of_name[name] = i
            file_names.append(name)
            h, w = im.get("height"), im.get("width")
            if h is None or w is None:
                hw[i] = read_image_size(os.path.join(self.image_dir, name), f"{self.ann_file}: images[{i}] (id {iid})")
            elif not (_is_num(h) and _is_num(w) and h > 0 and w > 0 and math.isfinite(h) and math.isfinite(w)):
                raise self._err(
                    f"images[{i}] (id {iid}, {name}): width/height must be positive numbers, "
                    f"got width={w!r}, height={h!r}"
                )
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
            if not (
                type(b) is list
                and len(b) == 4
                and type(b[0]) in num
                and type(b[1]) in num
                and type(b[2]) in num
                and type(b[3]) in num
            ):
                raise self._err(f"annotation id {aid}: 'bbox' must be 4 numbers [x, y, w, h], got {b!r:.100}")
            img_i = index_of_id.get(iid) if type(iid) is int else None
            if img_i is None:
                raise self._err(f"annotation id {aid}: unknown image_id {iid!r} (not in 'images')")
            if type(cid) is not int or cid not in cat_by_id:
                raise self._err(
                    f"annotation id {aid}: unknown category_id {cid!r} "
                    f"(declared categories: {sorted_ids[:20]}{' ...' if len(sorted_ids) > 20 else ''})"
                )
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
            image_root=self.image_dir,
            file_names=file_names,
            image_ids=np.array(list(index_of_id), dtype=np.int64),
            hw=hw,
            ann_image=ann_image,
            ann_ids=ann_ids,
            ann_xyxy=xyxy,
            ann_label=ann_label,
            ann_crowd=ann_crowd,
            ann_area=ann_area,
            ann_train=~ann_crowd,
            categories=categories,
            ann_xywh=boxes,
        )
