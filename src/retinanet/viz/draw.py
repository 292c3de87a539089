"""Pictures, drawn with Pillow only: detections on images, galleries, loss / lr / AP curves.

- `draw_detections(image, boxes [n, 4] (x1, y1, x2, y2) pixels, labels [n], scores [n] | None)`
  -> PIL RGB image with per-class coloured boxes and "name 0.93" tags. `image` is uint8
  [H, W, 3] / [H, W] (or float in 0..1), a PIL image, or anything `numpy.asarray` accepts
  (CPU tensors); boxes / labels / scores likewise.
- `side_by_side(images, titles)` and `make_gallery(rows, out_png=None, titles=...)`: titled grids
  (rows of ground truth | predictions for the demo).
- `plot_curves(series {name: [(x, y), ...]}, out_png, title, xlabel)`: a line plot with axes,
  numbered ticks, grid and legend; `plot_training_curves(metrics.jsonl, out_png)`: loss panel,
  learning-rate panel and, when the log has "bbox/AP" rows, an AP panel.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "VizError",
    "class_color",
    "draw_detections",
    "side_by_side",
    "make_gallery",
    "plot_curves",
    "plot_training_curves",
]

RGB = tuple[int, int, int]
_BG: RGB = (255, 255, 255)
_INK: RGB = (30, 30, 30)
_GRID: RGB = (225, 225, 225)
_SERIES_COLORS: tuple[RGB, ...] = (
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


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
    width = max(1, int(round(short / 160)))
    font = _font(int(np.clip(round(short * 0.038), 10, 48)))
    pad = max(1, width)
    draw = ImageDraw.Draw(img)
    for i in range(b.shape[0]):
        x1, y1, x2, y2 = (float(v) for v in b[i])
        k = int(lab[i])
        color = tuple(color_map[k]) if color_map is not None and k in color_map else class_color(k)
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


def side_by_side(images: Sequence[Image.Image], titles: Sequence[str] | None = None,
                 pad: int = 8, background: RGB = _BG) -> Image.Image:
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
    pad + [title strip] + sum(row_h + pad). Saved to `out_png` when given."""
    grid = [[_to_pil(im) for im in row] for row in rows]
    if not grid or not all(grid):
        raise VizError("make_gallery: rows must be a non-empty list of non-empty image lists")
    ncols = max(len(r) for r in grid)
    if titles is not None and len(titles) > ncols:
        raise VizError(f"make_gallery: {len(titles)} titles for {ncols} columns")
    if row_titles is not None and len(row_titles) != len(grid):
        raise VizError(f"make_gallery: {len(row_titles)} row titles for {len(grid)} rows")
    out = _grid(grid, list(titles) if titles is not None else None,
                list(row_titles) if row_titles is not None else None, pad, background)
    if out_png is not None:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        out.save(out_png)
    return out


def _grid(grid: list[list[Image.Image]], titles: list[str] | None, row_titles: list[str] | None,
          pad: int, background: RGB) -> Image.Image:
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


# ----------------------------------------------------------------------------------------------
# plots


def _nice_ticks(lo: float, hi: float, target: int = 6) -> np.ndarray:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        lo, hi = (lo - 1, hi + 1) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    raw = (hi - lo) / max(1, target - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step + 1e-9) * step
    stop = math.ceil(hi / step - 1e-9) * step
    n = int(round((stop - start) / step)) + 1
    return start + step * np.arange(n)


def _log_ticks(lo: float, hi: float) -> np.ndarray:
    """Decades (with 2 and 5 when the range is under three decades) covering [lo, hi] > 0."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if b == a:
        b = a + 1
    mult = (1, 2, 5) if b - a <= 3 else (1,)
    t = np.array([m * 10.0 ** e for e in range(a, b + 1) for m in mult])
    inside = t[(t >= lo * (1 - 1e-9)) & (t <= hi * (1 + 1e-9))]
    first = t[t <= lo * (1 + 1e-9)].max(initial=10.0 ** a)
    last = t[t >= hi * (1 - 1e-9)].min(initial=10.0 ** b)
    return np.unique(np.concatenate([[first], inside, [last]]))


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        m, e = f"{v:.1e}".split("e")
        return f"{m.rstrip('0').rstrip('.')}e{int(e)}"
    return f"{v:.4g}"


def _lighten(c: RGB, f: float) -> RGB:
    return tuple(int(round(v + (255 - v) * f)) for v in c)  # type: ignore[return-value]


def _draw_panel(
    img: Image.Image,
    rect: tuple[int, int, int, int],
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str = "",
    log_y: bool = False,
    markers: bool = False,
    smooth: bool = False,
    font_size: int = 13,
) -> None:
    """One plot inside rect (x0, y0, x1, y1) of `img`."""
    draw = ImageDraw.Draw(img)
    font, small = _font(font_size + 2), _font(font_size)
    x0, y0, x1, y1 = rect
    lh = _line_height(small)
    data: dict[str, np.ndarray] = {}
    for name, pts in series.items():
        arr = np.asarray(list(pts), np.float64).reshape(-1, 2) if len(pts) else np.zeros((0, 2))
        ok = np.isfinite(arr).all(1)
        if log_y:
            ok &= arr[:, 1] > 0
        arr = arr[ok]
        if arr.size:
            data[name] = arr[np.argsort(arr[:, 0], kind="stable")]
    tw, _ = _text_size(font, title)
    draw.text((x0 + (x1 - x0 - tw) // 2, y0), title, fill=_INK, font=font)
    top = y0 + _line_height(font) + 8
    bottom = y1 - 2 * lh - 14
    if not data:
        draw.text((x0 + 80, (top + bottom) // 2), "no data", fill=_INK, font=small)
        return
    allp = np.concatenate(list(data.values()))
    xt = _nice_ticks(float(allp[:, 0].min()), float(allp[:, 0].max()))
    ys = np.log10(allp[:, 1]) if log_y else allp[:, 1]
    if log_y:
        yt = _log_ticks(float(allp[:, 1].min()), float(allp[:, 1].max()))
        ylo, yhi = math.log10(yt[0]), math.log10(yt[-1])
    else:
        yt = _nice_ticks(float(ys.min()), float(ys.max()))
        ylo, yhi = float(yt[0]), float(yt[-1])
    labels_y = [_fmt(v) for v in yt]
    left = x0 + max(_text_size(small, t)[0] for t in labels_y) + 10 + (lh + 6 if ylabel else 0)
    right = x1 - 10
    xlo, xhi = float(xt[0]), float(xt[-1])

    def px(x: np.ndarray) -> np.ndarray:
        return left + (x - xlo) / (xhi - xlo) * (right - left)

    def py(y: np.ndarray) -> np.ndarray:
        yy = np.log10(y) if log_y else y
        return bottom - (yy - ylo) / max(yhi - ylo, 1e-12) * (bottom - top)

    # grid, ticks and numbers
    for v, t in zip(yt, labels_y):
        yv = float(py(np.array(v)))
        draw.line([(left, yv), (right, yv)], fill=_GRID, width=1)
        draw.line([(left - 4, yv), (left, yv)], fill=_INK, width=1)
        w_, h_ = _text_size(small, t)
        draw.text((left - 6 - w_, yv - h_ / 2 - 1), t, fill=_INK, font=small)
    for v in xt:
        xv = float(px(np.array(v)))
        draw.line([(xv, top), (xv, bottom)], fill=_GRID, width=1)
        draw.line([(xv, bottom), (xv, bottom + 4)], fill=_INK, width=1)
        t = _fmt(v)
        w_, _ = _text_size(small, t)
        draw.text((xv - w_ / 2, bottom + 6), t, fill=_INK, font=small)
    draw.rectangle([left, top, right, bottom], outline=_INK, width=1)
    w_, _ = _text_size(small, xlabel)
    draw.text(((left + right) / 2 - w_ / 2, bottom + 8 + lh), xlabel, fill=_INK, font=small)
    if ylabel:
        w_, h_ = _text_size(small, ylabel)
        lbl = Image.new("L", (w_ + 2, h_ + 2), 0)
        ImageDraw.Draw(lbl).text((1, 1), ylabel, fill=255, font=small)
        lbl = lbl.rotate(90, expand=True)
        img.paste(_INK, (x0, int((top + bottom) / 2 - lbl.size[1] / 2)), lbl)

    # lines
    colors = {}
    for k, (name, arr) in enumerate(data.items()):
        c = _SERIES_COLORS[k % len(_SERIES_COLORS)]
        colors[name] = c
        xy = np.stack([px(arr[:, 0]), py(arr[:, 1])], 1)
        if smooth and len(arr) >= 20:
            draw.line([tuple(p) for p in xy.tolist()], fill=_lighten(c, 0.65), width=1)
            win = max(2, len(arr) // 25)
            cs = np.cumsum(np.concatenate([[0.0], arr[:, 1]]))
            lo_i = np.maximum(np.arange(len(arr)) - win + 1, 0)
            avg = (cs[1:] - cs[lo_i]) / (np.arange(len(arr)) - lo_i + 1)
            xy = np.stack([px(arr[:, 0]), py(avg)], 1)
        if len(xy) > 1:
            draw.line([tuple(p) for p in xy.tolist()], fill=c, width=2, joint="curve")
        if markers or len(xy) == 1:
            for xv, yv in xy.tolist():
                draw.ellipse([xv - 3.5, yv - 3.5, xv + 3.5, yv + 3.5], fill=c)

    # legend (top right, inside the axes)
    names = list(data)
    lw = max(_text_size(small, n)[0] for n in names) + 34
    lx, ly = right - lw - 8, top + 8
    draw.rectangle([lx, ly, lx + lw, ly + len(names) * (lh + 6) + 6], fill=(255, 255, 255),
                   outline=(180, 180, 180))
    for k, n in enumerate(names):
        yy = ly + 6 + k * (lh + 6) + lh / 2
        draw.line([(lx + 6, yy), (lx + 24, yy)], fill=colors[n], width=3)
        draw.text((lx + 30, yy - lh / 2 - 1), n, fill=_INK, font=small)


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    out_png: str | os.PathLike[str],
    title: str = "",
    xlabel: str = "iteration",
    log_y: bool = False,
    ylabel: str = "",
    size: tuple[int, int] = (800, 450),
    markers: bool = False,
) -> Path:
    """A line plot of named (x, y) series: axes, numbered ticks, grid, legend. Non-finite points
    (and non-positive ones with log_y) are skipped. Writes `out_png` (size = (W, H)); returns it."""
    if not isinstance(series, Mapping):
        raise VizError(f"series: expected a dict name -> [(x, y), ...], got {type(series).__name__}")
    W, H = int(size[0]), int(size[1])
    if W < 200 or H < 150:
        raise VizError(f"size={size!r}: need at least 200 x 150")
    img = Image.new("RGB", (W, H), _BG)
    _draw_panel(img, (10, 10, W - 10, H - 10), series, title, xlabel, ylabel,
                log_y=log_y, markers=markers, font_size=max(11, H // 36))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise VizError(f"{path}: cannot read the metrics log ({e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise VizError(f"{path}:{n}: not a JSON line ({e})") from None
        if not isinstance(row, dict):
            raise VizError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def plot_training_curves(
    metrics_jsonl_path: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    size: tuple[int, int] = (900, 0),
    log_loss: bool = False,
) -> Path:
    """Training curves from a JSONL log of {"iter", "loss", "loss_cls", "loss_box", "lr", ...}
    rows (any "loss*" key is plotted, smoothed with the raw values faded behind): a loss panel,
    a learning-rate panel, and an AP panel (points) when rows carry "bbox/AP" (also AP50, AP75
    when present). Rows without "iter" are ignored. Height 0 = 300 px per panel."""
    path = Path(metrics_jsonl_path)
    rows = [r for r in _read_jsonl(path) if _num(r.get("iter")) is not None]
    losses: dict[str, list[tuple[float, float]]] = {}
    lr: list[tuple[float, float]] = []
    ap: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        it = float(r["iter"])
        for k, v in r.items():
            fv = _num(v)
            if fv is None:
                continue
            if k.startswith("loss"):
                losses.setdefault(k, []).append((it, fv))
            elif k == "lr":
                lr.append((it, fv))
            elif k in ("bbox/AP", "bbox/AP50", "bbox/AP75"):
                ap.setdefault(k.split("/", 1)[1], []).append((it, fv))
    if not losses and not lr and not ap:
        raise VizError(f"{path}: no rows with 'iter' and 'loss*', 'lr' or 'bbox/AP' values")
    order = sorted(losses, key=lambda k: (k != "loss", k))
    losses = {k: losses[k] for k in order}
    panels: list[tuple[str, dict[str, list[tuple[float, float]]], dict[str, Any]]] = [
        ("training loss", losses, {"log_y": log_loss, "smooth": True}),
        ("learning rate", {"lr": lr}, {}),
    ]
    if ap:
        panels.append(("COCO box AP (validation)", ap, {"markers": True}))
    W = int(size[0])
    H = int(size[1]) or 300 * len(panels)
    if W < 300 or H < 150 * len(panels):
        raise VizError(f"size={size!r}: need width >= 300 and >= 150 px height per panel")
    img = Image.new("RGB", (W, H), _BG)
    ph = H // len(panels)
    for i, (title, ser, kw) in enumerate(panels):
        _draw_panel(img, (10, i * ph + 10, W - 10, (i + 1) * ph - 6), ser, title, "iteration",
                    font_size=max(11, min(16, ph // 22)), **kw)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
