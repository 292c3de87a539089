"""Pascal VOC detection dataset, with the same API as :class:`~retinanet.data.coco.CocoDetection`.

``VOCDetection(root, split="train", class_names=VOC_CLASSES, use_difficult=False, transforms=None)``
reads ``root/ImageSets/Main/{split}.txt`` (one image id per line; only the first token is used),
``root/Annotations/{id}.xml`` and ``root/JPEGImages/{id}.jpg``. Items are ``(image, target)`` exactly
as for COCO (see :mod:`retinanet.data.dataset`).

- Coordinates: VOC pixels are 1-based and inclusive; a box becomes
  ``(xmin - 1, ymin - 1, xmax, ymax)`` in our 0-based, exclusive-end convention (as detectron2 and
  torchvision read VOC). Boxes then go through the same checks as COCO (NaN/inf or empty: dropped;
  partly outside: clipped; all counted and logged).
- ``difficult`` objects are not training targets unless ``use_difficult``. In ``coco_gt()`` they are
  always ``iscrowd=1``, so pycocotools ignores detections on them instead of counting them as false
  positives, and missing them costs nothing. This approximates the VOC protocol: pycocotools
  matches a detection to a crowd box by intersection over the *detection's* area (not IoU), so it is
  a little more lenient than VOC's "difficult" handling; AP is computed the COCO way (101-point).
- Categories: ``label_to_category_id = [1..K]``, ``class_names`` as given. An object whose name is
  not in ``class_names`` is an error naming the xml file and the name (so a typo is not silently
  dropped); malformed xml is an error naming the file, line and column.
- ``image_id`` is the position of the id in the split file (0-based); ``image_info(i).file_name``
  is ``{id}.jpg``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Optional, Sequence

import numpy as np

from retinanet.data.dataset import DetectionDataset, Transform
from retinanet.data.errors import DataError
from retinanet.data.image_io import PathLike, read_image_size

__all__ = ["VOCDetection", "VOC_CLASSES"]

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


class VOCDetection(DetectionDataset):
    """Pascal VOC-format detection dataset (see the module docstring).

    ``image_ext``: extension of the files in ``JPEGImages`` (default ``.jpg``).
    ``skip_bad_images``: as for :class:`~retinanet.data.coco.CocoDetection`.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        class_names: Sequence[str] = VOC_CLASSES,
        use_difficult: bool = False,
        transforms: Optional[Transform] = None,
        skip_bad_images: bool = False,
        image_ext: str = ".jpg",
    ) -> None:
        super().__init__(transforms, skip_bad_images)
        self.root = os.fspath(root)
        self.split = split
        self.use_difficult = bool(use_difficult)
        names = list(class_names)
        if not names:
            raise DataError(f"{self.root}: class_names is empty")
        if len(set(names)) != len(names):
            raise DataError(f"{self.root}: class_names has duplicates: {names}")
        self.class_names = names
        self.label_to_category_id = list(range(1, len(names) + 1))
        self.category_id_to_label = {c: i for i, c in enumerate(self.label_to_category_id)}
        self.split_file = os.path.join(self.root, "ImageSets", "Main", f"{split}.txt")
        self.source = self.split_file
        ids = self._read_split()
        self._ids = ids
        self._parse(ids, image_ext)

    def _read_split(self) -> list[str]:
        p = self.split_file
        try:
            with open(p, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            folder = os.path.dirname(p)
            have = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".txt")) if os.path.isdir(folder) else []
            hint = f"; splits found: {have[:10]}" if have else f" (is {self.root} a VOC folder with ImageSets/Main/?)"
            raise DataError(f"{p}: split file not found{hint}", p) from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: cannot read split file ({e})", p) from None
        ids: list[str] = []
        seen: dict[str, int] = {}
        for n, line in enumerate(lines, 1):
            tok = line.split()
            if not tok:
                continue
            if tok[0] in seen:
                raise DataError(f"{p}:{n}: image listed twice: {tok[0]!r} (first on line {seen[tok[0]]})", p)
            seen[tok[0]] = n
            ids.append(tok[0])
        if not ids:
            raise DataError(f"{p}: no image ids in the split file: nothing to train or evaluate on", p)
        return ids

    def _parse(self, ids: list[str], image_ext: str) -> None:
        label_of = {n: i for i, n in enumerate(self.class_names)}
        image_dir = os.path.join(self.root, "JPEGImages")
        hw = np.zeros((len(ids), 2), dtype=np.int64)
        ann_image: list[int] = []
        ann_obj: list[int] = []
        ann_label: list[int] = []
        difficult: list[bool] = []
        boxes: list[tuple[float, float, float, float]] = []
        for i, image_id in enumerate(ids):
            xml_path = os.path.join(self.root, "Annotations", f"{image_id}.xml")
            root = _parse_xml(xml_path)
            size = _read_size(root)
            hw[i] = size if size else read_image_size(os.path.join(image_dir, image_id + image_ext), xml_path)
            for k, obj in enumerate(root.findall("object")):
                name = (obj.findtext("name") or "").strip()
                if not name:
                    raise DataError(f"{xml_path}: object {k} has no <name>", xml_path)
                if name not in label_of:
                    raise DataError(
                        f"{xml_path}: object {k}: class name {name!r} is not in the class list "
                        f"({len(self.class_names)} classes: {', '.join(self.class_names[:25])}"
                        f"{' ...' if len(self.class_names) > 25 else ''}); pass class_names=[...] "
                        "with every class of the dataset",
                        xml_path,
                    )
                bb = obj.find("bndbox")
                if bb is None:
                    raise DataError(f"{xml_path}: object {k} ({name}) has no <bndbox>", xml_path)
                coords = [_number(bb, tag, xml_path, k) for tag in ("xmin", "ymin", "xmax", "ymax")]
                d = (obj.findtext("difficult") or "0").strip()
                ann_image.append(i)
                ann_obj.append(k)
                ann_label.append(label_of[name])
                difficult.append(d not in ("0", "", "false", "False"))
                boxes.append((coords[0] - 1.0, coords[1] - 1.0, coords[2], coords[3]))
        m = len(boxes)
        self._ann_obj = np.asarray(ann_obj, dtype=np.int64)
        diff = np.asarray(difficult, dtype=bool)
        xyxy = np.asarray(boxes, dtype=np.float64).reshape(m, 4)
        categories = [{"id": c, "name": n} for c, n in zip(self.label_to_category_id, self.class_names)]
        self._build(
            image_root=image_dir,
            file_names=[i + image_ext for i in ids],
            image_ids=np.arange(len(ids), dtype=np.int64),
            hw=hw,
            ann_image=np.asarray(ann_image, dtype=np.int64),
            ann_ids=np.arange(1, m + 1, dtype=np.int64),
            ann_xyxy=xyxy,
            ann_label=np.asarray(ann_label, dtype=np.int64),
            ann_crowd=diff,
            ann_area=np.full(m, np.nan),
            ann_train=np.ones(m, dtype=bool) if self.use_difficult else ~diff,
            categories=categories,
        )
        self.stats["difficult"] = int(self._gt_crowd.sum())
        self.stats["crowd"] = 0

    def _describe_ann(self, j: int, ann_image: np.ndarray, ann_ids: np.ndarray) -> str:
        image_id = self._ids[int(ann_image[j])]
        return f"{os.path.join(self.root, 'Annotations', image_id + '.xml')} object {int(self._ann_obj[j])}"


def _parse_xml(path: str) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found", path) from None
    except ET.ParseError as e:
        line, col = e.position
        raise DataError(f"{path}:{line}:{col}: malformed XML: {e}", path) from None
    except OSError as e:
        raise DataError(f"{path}: cannot read annotation file ({e.strerror or e})", path) from None


def _read_size(root: ET.Element) -> Optional[tuple[int, int]]:
    """(h, w) from <size>, or None when missing or not positive (then the image header is read)."""
    size = root.find("size")
    if size is None:
        return None
    try:
        w = int(float(size.findtext("width") or "0"))
        h = int(float(size.findtext("height") or "0"))
    except ValueError:
        return None
    return (h, w) if h > 0 and w > 0 else None


def _number(bb: ET.Element, tag: str, path: str, k: int) -> float:
    text = bb.findtext(tag)
    if text is None:
        raise DataError(f"{path}: object {k}: <bndbox> has no <{tag}>", path)
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{path}: object {k}: <{tag}> is not a number: {text.strip()!r}", path) from None
