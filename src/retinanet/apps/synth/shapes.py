"""Outlines of the shape classes and of the unannotated distractors, and their rasterization.

Outlines are in unit size (about [-1, 1]^2): `Polygons` is a list of (vertices float [k, 2], fill),
where fill 255 adds and fill 0 cuts out (a ring's hole); strokes are polylines float [k, 2] drawn
with a width. `rasterize` scales, rotates and draws them into an alpha mask uint8 [h, w].
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from retinanet.apps.synth.config import SynthDataError

__all__ = ["Polygons", "shape_polygons", "random_distractor", "rasterize"]

Polygons = list[tuple[np.ndarray, int]]

_DISTRACTORS = ("rod", "cog", "segments", "letter")

# stroke letters as distractors (no O, X, C, T, V that could pass for a ring, cross, crescent or triangle)
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


def _circle(n: int = 64, r: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _star(points: int, inner: float) -> np.ndarray:
    t = np.arange(2 * points) * math.pi / points - math.pi / 2
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def shape_polygons(name: str, rng: np.random.Generator) -> tuple[Polygons, float]:
    """Unit-size polygons of a shape class (randomly varied), and its max rotation in degrees."""
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
        p = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
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


def random_distractor(rng: np.random.Generator) -> tuple[str, Polygons, list[np.ndarray], float]:
    """A random unannotated distractor, shaped so that it cannot pass for a class: its kind
    ("rod", "cog", "segments", "letter"), unit-size polygons, stroke polylines and stroke width."""
    kind = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
    if kind == "rod":  # capsule 3-5x longer than wide: no class is elongated
        hw = rng.uniform(0.2, 0.33)
        t = np.linspace(-math.pi / 2, math.pi / 2, 16)
        right = np.stack([(1 - hw) + hw * np.cos(t), hw * np.sin(t)], 1)
        return kind, [(np.concatenate([right, -right]), 255)], [], 0.0
    if kind == "cog":  # 7-10 shallow rounded lobes: not a disc (wavy), not a star (5 deep sharp points)
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        k = int(rng.integers(7, 11))
        r = 1.0 + rng.uniform(0.12, 0.18) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        r = r / r.max()
        return kind, [(np.stack([r * np.cos(t), r * np.sin(t)], 1), 255)], [], 0.0
    if kind == "segments":
        n = int(rng.integers(2, 5))
        return kind, [], [rng.uniform(-1, 1, (n, 2))], rng.uniform(0.06, 0.14)
    strokes = _LETTERS[list(_LETTERS)[int(rng.integers(len(_LETTERS)))]]
    return kind, [], [np.asarray(s, np.float64) for s in strokes], rng.uniform(0.14, 0.22)


def rasterize(
    polys: Polygons,
    strokes: list[np.ndarray],
    stroke_w: float,
    rx: float,
    ry: float,
    theta: float,
) -> np.ndarray:
    """Draw unit polygons and strokes scaled by (rx, ry) and rotated by theta (radians): alpha
    uint8 [h, w] cropped to its nonzero pixels (anti-aliased by 2-4x supersampling)."""
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
    return alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
