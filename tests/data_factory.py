"""Writers of tiny on-disk datasets and image files for tests (COCO json, Pascal VOC, odd images).

``make_coco(tmp)`` writes three 64x48 PNG images and a COCO json with known boxes (category ids
unsorted and non-contiguous, a crowd box, an image without boxes); ``make_voc(tmp)`` writes the same
kind of data in VOC layout (1-based coordinates, a difficult object, an image without objects).
``shapes_coco(n, seed)`` draws a learnable set: coloured squares, disks and crosses on grey noise.
The ``write_*`` helpers make single image files in the formats the bad-input tests need.
Everything is deterministic.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import ExifTags, Image

W, H = 64, 48  # size of every factory image (width, height)

# json order is deliberately not sorted by id: labels must follow the ids (3 -> 0, 7 -> 1, 11 -> 2)
COCO_CATEGORIES = [
    {"id": 7, "name": "dog", "supercategory": "animal"},
    {"id": 3, "name": "cat", "supercategory": "animal"},
    {"id": 11, "name": "bird", "supercategory": "animal"},
]

# expected training targets of make_coco, per image index: (boxes xyxy, labels)
COCO_EXPECTED = {
    0: ([[10.0, 5.0, 30.0, 20.0], [0.0, 0.0, 64.0, 48.0]], [0, 1]),
    1: ([[5.5, 6.5, 15.5, 18.5]], [2]),
    2: ([], []),
}


def pattern_image(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 [h, w, 3] RGB image (noise, so flips and crops are visible)."""
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def coco_dict() -> dict[str, Any]:
    """The default tiny COCO dataset (a fresh copy each call, edit it freely)."""
    return copy.deepcopy(
        {
            "info": {"description": "retinanet test data"},
            "images": [
                {"id": 1, "file_name": "a.png", "width": W, "height": H},
                {"id": 2, "file_name": "b.png", "width": W, "height": H},
                {"id": 5, "file_name": "c.png", "width": W, "height": H},
            ],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 3, "bbox": [10, 5, 20, 15], "area": 300, "iscrowd": 0},
                {"id": 11, "image_id": 1, "category_id": 7, "bbox": [0, 0, 64, 48], "iscrowd": 0},
                {"id": 12, "image_id": 1, "category_id": 3, "bbox": [30, 20, 10, 10], "area": 80, "iscrowd": 1},
                {"id": 20, "image_id": 2, "category_id": 11, "bbox": [5.5, 6.5, 10, 12]},
            ],
            "categories": COCO_CATEGORIES,
        }
    )


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))  # NaN / Infinity are written as JSON literals, which Python reads
    return path


def make_coco(
    root: Path,
    data: Optional[dict[str, Any]] = None,
    images: Optional[dict[str, np.ndarray]] = None,
    write_images: bool = True,
) -> tuple[Path, Path]:
    """Write ``data`` (default :func:`coco_dict`) to ``root/annotations.json`` and its images to
    ``root/images`` (PNG, pattern content sized from each entry; ``images`` overrides by file name).
    Returns ``(image_dir, ann_file)``."""
    data = coco_dict() if data is None else data
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if write_images:
        for k, im in enumerate(data.get("images", [])):
            name = im.get("file_name")
            if not isinstance(name, str) or (image_dir / name).exists():
                continue
            arr = (images or {}).get(name)
            if arr is None:
                arr = pattern_image(int(im.get("height", H)), int(im.get("width", W)), seed=k)
            Image.fromarray(arr).save(image_dir / name)
    return image_dir, write_json(root / "annotations.json", data)


def voc_xml(filename: str, objects: Sequence[dict[str, Any]], w: int = W, h: int = H) -> str:
    """VOC annotation xml; objects: {"name", "box": (xmin, ymin, xmax, ymax) 1-based, "difficult"}."""
    parts = [
        f"<annotation><folder>VOC</folder><filename>{filename}</filename>",
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>",
    ]
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        parts.append(
            f"<object><name>{o['name']}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{int(o.get('difficult', 0))}</difficult>"
            f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


# default VOC dataset: id -> objects (1-based inclusive pixel coordinates)
VOC_OBJECTS: dict[str, list[dict[str, Any]]] = {
    "000001": [{"name": "dog", "box": (11, 6, 30, 20)}, {"name": "person", "box": (1, 1, 64, 48)}],
    "000002": [{"name": "cat", "box": (21, 11, 40, 30), "difficult": 1}, {"name": "cat", "box": (5, 5, 10, 10)}],
    "000003": [],
}


def make_voc(
    root: Path,
    objects: Optional[dict[str, list[dict[str, Any]]]] = None,
    splits: Optional[dict[str, Sequence[str]]] = None,
    xml_text: Optional[dict[str, str]] = None,
) -> Path:
    """Write a VOC folder (JPEGImages/*.jpg, Annotations/*.xml, ImageSets/Main/*.txt) and return it.

    ``splits`` defaults to ``{"train": all ids, "val": first id}``; ``xml_text`` replaces the xml of
    the given ids verbatim (for malformed-file tests)."""
    objects = VOC_OBJECTS if objects is None else objects
    ids = list(objects)
    splits = {"train": ids, "val": ids[:1]} if splits is None else splits
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, image_id in enumerate(ids):
        Image.fromarray(pattern_image(seed=100 + k)).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        text = (xml_text or {}).get(image_id) or voc_xml(f"{image_id}.jpg", objects[image_id])
        (root / "Annotations" / f"{image_id}.xml").write_text(text)
    for name, members in splits.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in members))
    return root


# -------------------------------------------------------------------------------------- image files


def write_truncated(path: Path, fmt: str = "JPEG", keep: float = 0.5) -> Path:
    """A noise image in ``fmt`` cut to ``keep`` of its bytes (header intact, data missing)."""
    Image.fromarray(pattern_image(seed=7)).save(path, format=fmt)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


def write_exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 64x48 (w x h) stored JPEG, black with a red patch at stored x 0..10, y 0..8, EXIF ``orientation``.

    With orientation 6 a viewer rotates it 90 degrees clockwise: the displayed image is 48 wide and
    64 high, and stored pixel (x, y) shows at (47 - y, x), so the patch is at x 40..48, y 0..10.
    """
    a = np.zeros((H, W, 3), dtype=np.uint8)
    a[0:8, 0:10] = (255, 0, 0)
    exif = Image.Exif()
    exif[int(ExifTags.Base.Orientation)] = orientation
    Image.fromarray(a).save(path, format="JPEG", quality=98, exif=exif)
    return path


def write_16bit_png(path: Path, values: Sequence[int]) -> Path:
    """A 1-row 16-bit grayscale PNG (mode I;16) holding ``values``."""
    Image.fromarray(np.asarray([values], dtype=np.uint16)).save(path)
    return path


# ---------------------------------------------------------------------------------- learnable shapes

#: the classes of :func:`shapes_coco`: (category id, name, RGB colour); each has its own shape too
SHAPE_CLASSES = [(1, "red_square", (220, 40, 40)), (2, "green_disk", (40, 200, 60)), (3, "blue_cross", (50, 70, 230))]


def _shape_mask(k: int, size: int, x: int, y: int, side: int) -> np.ndarray:
    """Boolean [size, size] mask of shape ``k`` (square, disk, cross) filling the box x, y, side."""
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (yy >= y) & (yy < y + side) & (xx >= x) & (xx < x + side)
    cy, cx, r = y + side / 2 - 0.5, x + side / 2 - 0.5, side / 2
    if k == 1:
        mask &= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif k == 2:
        mask &= (np.abs(yy - cy) <= side / 6) | (np.abs(xx - cx) <= side / 6)
    return mask


def shapes_coco(
    num_images: int,
    seed: int,
    prefix: str = "s",
    size: int = 64,
    sides: tuple[int, int] = (12, 28),
    max_objects: int = 3,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A COCO dict of ``num_images`` square ``size`` px images (ids 1..n, files ``{prefix}NNN.png``),
    each with 1..``max_objects`` non-overlapping objects of :data:`SHAPE_CLASSES` (sides in ``sides``,
    tight boxes), and the images as uint8 [size, size, 3] arrays by file name (for :func:`make_coco`).
    Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for i in range(num_images):
        img = rng.normal(128, 20, size=(size, size, 3)).clip(0, 255)
        taken = np.zeros((size, size), dtype=bool)  # objects and a 2 px margin around them
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):
                side = int(rng.integers(sides[0], sides[1] + 1))
                x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                if not taken[y : y + side, x : x + side].any():
                    break
            else:
                continue  # no free place found: one object fewer in this image
            taken[max(0, y - 2) : y + side + 2, max(0, x - 2) : x + side + 2] = True
            k = int(rng.integers(len(SHAPE_CLASSES)))
            cid, _, rgb = SHAPE_CLASSES[k]
            img[_shape_mask(k, size, x, y, side)] = rgb
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": cid,
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        name = f"{prefix}{i:03d}.png"
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        arrays[name] = img.astype(np.uint8)
    categories = [{"id": c, "name": n, "supercategory": "shape"} for c, n, _ in SHAPE_CLASSES]
    return {"images": images, "annotations": anns, "categories": categories}, arrays
