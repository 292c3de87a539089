"""Colours, object textures and cluttered backgrounds of the synthetic scenes.

All images here are float32 [h, w, 3] RGB in 0..255 and all randomness comes from the
`numpy.random.Generator` passed in, so the draws (and their order) define the output.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["object_color", "random_texture", "background"]

_TEXTURES = ("solid", "stripes", "checker", "dots", "gradient")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float32) * 255.0


def object_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour float32 [3] in 0..255 (any hue)."""
    return _hsv_to_rgb(rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0))


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.25, 0.85))


def _second_color(rng: np.random.Generator, c1: np.ndarray) -> np.ndarray:
    """An object colour clearly different from `c1` (L1 > 150), or its complement."""
    for _ in range(8):
        c2 = object_color(rng)
        if np.abs(c2 - c1).sum() > 150:
            return c2
    return 255.0 - c1


def random_texture(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """A random two-colour texture float32 [h, w, 3] in 0..255 with soft shading, and its kind."""
    kind = _TEXTURES[int(rng.integers(len(_TEXTURES)))]
    c1 = object_color(rng)
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


def background(rng: np.random.Generator, h: int, w: int, clutter: float) -> np.ndarray:
    """Cluttered, textured background float32 [h, w, 3] in 0..255: a colour gradient with
    low-frequency colour noise (both built on a coarse grid and upsampled), soft blobs, thin
    lines and a low-contrast periodic pattern (stripes or checker). `clutter` scales everything
    but the gradient (0: a plain gradient)."""
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
