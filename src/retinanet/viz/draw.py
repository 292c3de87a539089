"""Detections on images, side-by-side rows and galleries, drawn with Pillow.

- `draw_detections(image, boxes [n, 4] (x1, y1, x2, y2) pixels, labels [n], scores [n] | None)`
  -> PIL RGB image with per-class coloured boxes and "name 0.93" tags. `image` is uint8
  [H, W, 3] / [H, W] (or float in 0..1), a PIL image, or anything `numpy.asarray` accepts
  (CPU tensors); boxes / labels / scores likewise.
- `side_by_side(images, titles)` and `make_gallery(rows, out_png=None, titles=...)`: titled grids
  (rows of ground truth | predictions for the demo).
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retinanet.utils.io import atomic_write

__all__ = ["VizError", "class_color", "draw_detections", "make_gallery", "side_by_side"]

RGB = tuple[int, int, int]
_BG: RGB = (255, 255, 255)
_INK: RGB = (30, 30, 30)


class VizError(ValueError):
    """Bad input to a drawing function (names the argument / file and the value)."""


# ----------------------------------------------------------------------------------------------
# fonts and colours


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in scalable font (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError, AttributeError):
        return ImageFont.load_default()


def _text_size(font: Any, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = font.getbbox(text)
    return int(x1 - min(x0, 0)), int(y1 - min(y0, 0))


def _line_height(font: Any) -> int:
    return _text_size(font, "Ag0.9|")[1]


def class_color(label: int) -> RGB:
    """A distinct, saturated colour per class index (golden-ratio hue steps)."""
    h = (0.03 + 0.618033988749895 * int(label)) % 1.0
    s = 0.85 if int(label) % 2 == 0 else 0.65
    v = 0.95 if int(label) % 3 != 2 else 0.8
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# ----------------------------------------------------------------------------------------------
# detections


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # always a copy for RGB input too
    if hasattr(image, "detach"):
        image = image.detach().cpu()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise VizError(f"image: expected [H, W], [H, W, 3|4] or [3, H, W], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise VizError(f"image: expected uint8 or float in 0..1, got dtype {arr.dtype}")
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def _as_array(x: Any, name: str, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise VizError(f"{name}: cannot convert to an array ({e})") from None


def draw_detections(
    image: Any,
    boxes: Any,
    labels: Any,
    scores: Any = None,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.0,
    color_map: Mapping[int, RGB] | None = None,
) -> Image.Image:
    """Draw boxes [n, 4] (x1, y1, x2, y2, pixels) with a per-class colour and a "name 0.93" tag
    on a filled background above each box (inside the image when the box touches the top).
    Boxes with score < score_thresh are skipped; higher scores are drawn last (on top).
    Returns a new RGB image; the input is not modified."""
    img = _to_pil(image)
    W, H = img.size
    b = _as_array(boxes, "boxes", np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    lab = _as_array(labels, "labels", np.int64).reshape(-1)
    if lab.shape[0] != b.shape[0]:
        raise VizError(f"labels: {lab.shape[0]} labels for {b.shape[0]} boxes")
    if scores is not None:
        sc = _as_array(scores, "scores", np.float64).reshape(-1)
        if sc.shape[0] != b.shape[0]:
            raise VizError(f"scores: {sc.shape[0]} scores for {b.shape[0]} boxes")
        keep = sc >= score_thresh
        b, lab, sc = b[keep], lab[keep], sc[keep]
        order = np.argsort(sc, kind="stable")
        b, lab, sc = b[order], lab[order], sc[order]
    else:
        sc = None
    if not np.isfinite(b).all():
        raise VizError("boxes: contain NaN or inf")
    short = min(W, H)
    width = max(1, round(short / 160))
    font = _font(int(np.clip(round(short * 0.038), 10, 48)))
    pad = max(1, width)
    draw = ImageDraw.Draw(img)
    for i in range(b.shape[0]):
        x1, y1, x2, y2 = (float(v) for v in b[i])
        k = int(lab[i])
        color = class_color(k)
        if color_map is not None and k in color_map:
            c = color_map[k]
            color = (int(c[0]), int(c[1]), int(c[2]))
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
        name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
        text = name if sc is None else f"{name} {sc[i]:.2f}"
        tw, th = _text_size(font, text)
        bw, bh = tw + 2 * pad, th + 2 * pad
        tx = min(max(0.0, x1), max(0.0, W - bw))
        ty = y1 - bh if y1 - bh >= 0 else max(0.0, y1)  # above the box, else just inside it
        draw.rectangle([tx, ty, tx + bw - 1, ty + bh - 1], fill=color)
        ink = (0, 0, 0) if _luma(color) > 140 else (255, 255, 255)
        x0, y0, _, _ = font.getbbox(text)
        draw.text((tx + pad - min(x0, 0), ty + pad - min(y0, 0)), text, fill=ink, font=font)
    return img


# ----------------------------------------------------------------------------------------------
# layouts


def _title_font(images: Sequence[Image.Image]) -> Any:
    short = min(min(im.size) for im in images) if images else 256
    return _font(int(np.clip(round(short * 0.05), 12, 32)))


def side_by_side(
    images: Sequence[Image.Image], titles: Sequence[str] | None = None, pad: int = 8, background: RGB = _BG
) -> Image.Image:
    """Images in one row with a title above each. Width = pad + sum(w_i + pad); height =
    pad + title strip (if any title) + max h_i + pad."""
    images = [_to_pil(im) for im in images]
    if not images:
        raise VizError("side_by_side: no images")
    return _grid([images], list(titles) if titles is not None else None, None, pad, background)


def make_gallery(
    rows: Sequence[Sequence[Any]],
    out_png: str | os.PathLike[str] | None = None,
    titles: Sequence[str] | None = ("ground truth", "predictions"),
    row_titles: Sequence[str] | None = None,
    pad: int = 8,
    background: RGB = _BG,
) -> Image.Image:
    """A grid: N rows of images (e.g. ground truth | predictions), column titles on top and
    optional row titles on the left. Cells take the widest image of their column and the
    tallest of their row; width = pad + [row-title column + pad] + sum(col_w + pad), height =
    pad + [title strip] + sum(row_h + pad). Saved to `out_png` (atomically) when given."""
    grid = [[_to_pil(im) for im in row] for row in rows]
    if not grid or not all(grid):
        raise VizError("make_gallery: rows must be a non-empty list of non-empty image lists")
    ncols = max(len(r) for r in grid)
    if titles is not None and len(titles) > ncols:
        raise VizError(f"make_gallery: {len(titles)} titles for {ncols} columns")
    if row_titles is not None and len(row_titles) != len(grid):
        raise VizError(f"make_gallery: {len(row_titles)} row titles for {len(grid)} rows")
    out = _grid(
        grid,
        list(titles) if titles is not None else None,
        list(row_titles) if row_titles is not None else None,
        pad,
        background,
    )
    if out_png is not None:
        fmt = Image.registered_extensions().get(Path(out_png).suffix.lower())
        if fmt is None:
            raise VizError(f"{out_png}: unknown image file extension")
        atomic_write(out_png, lambda f: out.save(f, format=fmt))
    return out


def _grid(
    grid: list[list[Image.Image]], titles: list[str] | None, row_titles: list[str] | None, pad: int, background: RGB
) -> Image.Image:
    ncols = max(len(r) for r in grid)
    col_w = [max(r[c].size[0] for r in grid if c < len(r)) for c in range(ncols)]
    row_h = [max(im.size[1] for im in r) for r in grid]
    font = _title_font([im for r in grid for im in r])
    title_h = _line_height(font) + pad if titles and any(titles) else 0
    left = 0
    if row_titles:
        left = max(_text_size(font, t)[0] for t in row_titles) + pad
    W = pad + left + sum(w + pad for w in col_w)
    H = pad + title_h + sum(h + pad for h in row_h)
    canvas = Image.new("RGB", (W, H), background)
    draw = ImageDraw.Draw(canvas)
    xs = np.cumsum([pad + left] + [w + pad for w in col_w])[:-1]
    if titles:
        for c, t in enumerate(titles):
            tw, _ = _text_size(font, t)
            tx = int(xs[c] + max(0, (col_w[c] - tw) // 2))
            draw.text((tx, pad), t, fill=_INK, font=font)
    y = pad + title_h
    for r, row in enumerate(grid):
        if row_titles:
            th = _text_size(font, row_titles[r])[1]
            draw.text((pad, y + (row_h[r] - th) // 2), row_titles[r], fill=_INK, font=font)
        for c, im in enumerate(row):
            canvas.paste(im, (int(xs[c]), y))
        y += row_h[r] + pad
    return canvas
