"""One synthetic scene: background, distractors behind, objects, distractors in front, augmentation.

`render_scene(seed, config)` returns a `Scene`: image uint8 [H, W, 3], boxes float32 [n, 4] as
(x1, y1, x2, y2) pixels (each object's full extent, also where it is partly hidden), labels int64
[n] contiguous 0..K-1, visible fractions float32 [n], distractor boxes float32 [m, 4]. Objects
are placed so that every annotated one keeps at least `min_visible` of its pixels in view.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from retinanet.apps.synth.config import DEFAULT_FASHION_MNIST_DIR, SynthConfig, synth_class_names
from retinanet.apps.synth.shapes import random_distractor, rasterize, shape_polygons
from retinanet.apps.synth.sources import crop_bank, crop_object
from retinanet.apps.synth.textures import background, random_texture

__all__ = ["Scene", "render_scene"]


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


class _Layers:
    """The canvas plus a top-most-object id map used to enforce the visibility limit."""

    def __init__(self, canvas: np.ndarray, min_visible: float):
        h, w = canvas.shape[:2]
        self.canvas = canvas
        self.owner = np.full((h, w), -1, np.int32)  # annotated object on top, -1 none
        self.full: list[int] = []  # pixel count of each object
        self.visible = np.zeros(0, np.int64)  # visible pixel count of each object
        self.min_visible = min_visible

    def fits(self, mask: np.ndarray, y: int, x: int) -> np.ndarray | None:
        """Visible counts after covering `mask` at (y, x), or None if an object gets too hidden."""
        n = len(self.full)
        if n == 0:
            return self.visible
        win = self.owner[y : y + mask.shape[0], x : x + mask.shape[1]]
        ids = win[mask]
        covered = np.bincount(ids[ids >= 0], minlength=n)
        vis = self.visible - covered
        if np.any(vis < self.min_visible * np.asarray(self.full)):
            return None
        return vis

    def paint(self, alpha: np.ndarray, tex: np.ndarray, y: int, x: int, vis: np.ndarray, obj_id: int | None) -> None:
        """Blend `tex` through `alpha` at (y, x); `vis` are the counts `fits` returned, obj_id
        the new object's index (None: a distractor)."""
        h, w = alpha.shape
        a = (alpha.astype(np.float32) / 255.0)[..., None]
        win = self.canvas[y : y + h, x : x + w]
        win *= 1.0 - a
        win += tex * a
        mask = alpha >= 128
        owner = self.owner[y : y + h, x : x + w]
        owner[mask] = -1 if obj_id is None else obj_id
        self.visible = vis
        if obj_id is not None:
            self.full.append(int(mask.sum()))
            self.visible = np.append(vis, int(mask.sum()))


def _place(
    layers: _Layers,
    rng: np.random.Generator,
    alpha: np.ndarray,
    anchors: list[np.ndarray],
    tries: int = 25,
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
    layers: _Layers,
    rng: np.random.Generator,
    cfg: SynthConfig,
    front: bool,
) -> tuple[np.ndarray, str] | None:
    """Draw one distractor in front of the objects drawn so far, or anywhere behind (front=False:
    before any object); returns its box and kind, or None when it did not fit."""
    H, W = cfg.image_size
    kind, polys, strokes, sw = random_distractor(rng)
    lo = cfg.min_size * (2.0 if kind == "cog" else 1.0)  # tiny cogs would be indistinguishable from discs
    hi = max(lo + 1, 0.35 * min(H, W))
    side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    theta = rng.uniform(0, 2 * math.pi) if kind != "letter" else math.radians(rng.uniform(-30, 30))
    aspect = 1.0 if kind in ("rod", "cog") else rng.uniform(0.7, 1.3)  # keep rods long, cogs round
    alpha = rasterize(polys, strokes, sw, side / 2, side / 2 * aspect, theta)
    if alpha.size == 0:
        return None
    tex, _ = random_texture(rng, *alpha.shape)
    if front:
        spot = _place(layers, rng, alpha, [], tries=10)
        if spot is None:
            return None
        y, x, vis = spot
    else:
        if alpha.shape[0] > H or alpha.shape[1] > W:
            return None
        y = int(rng.integers(0, H - alpha.shape[0] + 1))
        x = int(rng.integers(0, W - alpha.shape[1] + 1))
        vis = layers.visible
    tex = _contrast_fix(tex, alpha, layers.canvas[y : y + alpha.shape[0], x : x + alpha.shape[1]])
    box = _mask_box(alpha, y, x)
    layers.paint(alpha, tex, y, x, vis, None)
    return (box if box is not None else np.zeros(4, np.float32)), kind


def _augment(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Mild photometric augmentation of a float image [H, W, 3] (modified in place) -> uint8:
    brightness, contrast, sometimes a slight blur, then sensor noise."""
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
    bank = crop_bank(config.objects, fashion_mnist_dir, node_modules_dirs)

    layers = _Layers(background(r_bg, H, W, config.clutter), config.min_visible)

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
            polys, max_rot = shape_polygons(names[cls], r_obj)
            aspect = r_obj.uniform(0.8, 1.25)
            theta = math.radians(r_obj.uniform(-max_rot, max_rot))
            alpha = rasterize(polys, [], 0.0, side / 2 * math.sqrt(aspect), side / 2 / math.sqrt(aspect), theta)
            tex, tkind = random_texture(r_obj, *alpha.shape) if alpha.size else (None, "")
        else:
            alpha, tex = crop_object(bank, source_index[cls], side, r_obj)
            tkind = "crop"
            if tex is None:
                tex, tkind = random_texture(r_obj, *alpha.shape)
        if tex is None or not (alpha >= 128).any():  # empty or too faint a mask
            continue
        spot = _place(layers, r_obj, alpha, boxes)
        if spot is None:
            continue
        y, x, vis = spot
        tex = _contrast_fix(tex, alpha, layers.canvas[y : y + alpha.shape[0], x : x + alpha.shape[1]])
        box = _mask_box(alpha, y, x)
        assert box is not None  # the mask has pixels >= 128 (checked above)
        layers.paint(alpha, tex, y, x, vis, len(boxes))
        boxes.append(box)
        labels.append(cls)
        textures.append(tkind)

    for _ in range(int(front.sum())):
        got = _draw_distractor(layers, r_dis, config, front=True)
        if got is not None:
            d_boxes.append(got[0])
            d_kinds.append(got[1])

    image = _augment(r_aug, layers.canvas) if config.augment else np.clip(layers.canvas + 0.5, 0, 255).astype(np.uint8)
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
