"""Training curves from a run's ``metrics.jsonl``, drawn with matplotlib.

- `read_training_curves(metrics.jsonl) -> TrainingCurves`: the loss terms ("loss*" keys), the
  learning rate ("lr") and, when evaluation rows are present, "bbox/AP", "bbox/AP50", "bbox/AP75",
  each as an array [n, 2] of (iteration, value) sorted by iteration, non-finite values dropped.
- `plot_training_curves(metrics.jsonl, out_png)`: a PNG of W x H pixels with a loss panel (raw values
  faded, a moving average on top), a learning-rate panel and, when the log has AP rows, an AP panel.
- `plot_loss_cdf(fractions [P], gammas [G], positive [G, P], negative [G, P], out_png)`: the focal
  paper's Figure 4, cumulative normalized loss of positive and negative examples, a line per gamma.

matplotlib is imported inside `plot_training_curves` (Agg canvas, no display, no pyplot state), so
importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retinanet.utils.io import atomic_write
from retinanet.viz.draw import VizError

__all__ = ["TrainingCurves", "plot_loss_cdf", "plot_training_curves", "read_training_curves"]

_AP_KEYS = ("bbox/AP", "bbox/AP50", "bbox/AP75")
_DPI = 100


@dataclass
class TrainingCurves:
    """Named (iteration, value) series [n, 2]; `ap` is empty when the log has no evaluation rows."""

    losses: dict[str, np.ndarray] = field(default_factory=dict)  # "loss" first, then by name
    lr: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    ap: dict[str, np.ndarray] = field(default_factory=dict)  # "AP", "AP50", "AP75"


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


def _series(points: list[tuple[float, float]]) -> np.ndarray:
    arr = np.asarray(points, np.float64).reshape(-1, 2)
    arr = arr[np.isfinite(arr).all(1)]
    return arr[np.argsort(arr[:, 0], kind="stable")]


def read_training_curves(metrics_jsonl_path: str | os.PathLike[str]) -> TrainingCurves:
    """Read the curves of a JSONL log of {"iter", "loss", "loss_cls", "lr", "bbox/AP", ...} rows.
    Rows without a numeric "iter" and non-numeric values are ignored. Raises `VizError` naming the
    file (and line) when it cannot be read or parsed, or has no loss, lr or AP value at all."""
    path = Path(metrics_jsonl_path)
    losses: dict[str, list[tuple[float, float]]] = {}
    lr: list[tuple[float, float]] = []
    ap: dict[str, list[tuple[float, float]]] = {}
    for r in _read_jsonl(path):
        it = _num(r.get("iter"))
        if it is None:
            continue
        for k, v in r.items():
            fv = _num(v)
            if fv is None:
                continue
            if k.startswith("loss"):
                losses.setdefault(k, []).append((it, fv))
            elif k == "lr":
                lr.append((it, fv))
            elif k in _AP_KEYS:
                ap.setdefault(k.split("/", 1)[1], []).append((it, fv))
    if not losses and not lr and not ap:
        raise VizError(f"{path}: no rows with 'iter' and 'loss*', 'lr' or 'bbox/AP' values")
    return TrainingCurves(
        losses={k: _series(losses[k]) for k in sorted(losses, key=lambda k: (k != "loss", k))},
        lr=_series(lr),
        ap={k: _series(v) for k, v in ap.items()},
    )


def _moving_average(y: np.ndarray) -> np.ndarray:
    """Trailing mean over max(2, n // 25) points (fewer at the start)."""
    win = max(2, len(y) // 25)
    cs = np.concatenate([[0.0], np.cumsum(y)])
    lo = np.maximum(np.arange(len(y)) - win + 1, 0)
    return (cs[1:] - cs[lo]) / (np.arange(len(y)) - lo + 1)


def _panel(
    ax: Any, series: dict[str, np.ndarray], title: str, log_y: bool = False, smooth: bool = False, markers: bool = False
) -> None:
    """One axes: a line per series (tab10 colours in order), grid, legend; "no data" when empty."""
    ax.set_title(title)
    ax.grid(True, color="0.88")
    drawn = 0
    for k, (name, arr) in enumerate(series.items()):
        if log_y:
            arr = arr[arr[:, 1] > 0]
        if not len(arr):
            continue
        x, y = arr[:, 0], arr[:, 1]
        color = f"C{k % 10}"
        if smooth and len(arr) >= 20:
            ax.plot(x, y, color=color, alpha=0.3, linewidth=1)
            y = _moving_average(y)
        ax.plot(
            x, y, color=color, linewidth=2, label=name, marker="o" if markers or len(arr) == 1 else None, markersize=5
        )
        drawn += 1
    if log_y:
        ax.set_yscale("log")
    if drawn:
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")


def plot_training_curves(
    metrics_jsonl_path: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    size: tuple[int, int] = (900, 0),
    log_loss: bool = False,
) -> Path:
    """Write the training curves of `metrics_jsonl_path` (see `read_training_curves`) to `out_png`
    (atomically, parent folders created; the suffix picks the format) and return its path.
    `size` = (W, H) pixels; H = 0 gives 300 px per panel. Panels: training loss (log scale with
    `log_loss`), learning rate, and COCO box AP (points joined by lines) when the log has AP rows;
    all against the iteration."""
    curves = read_training_curves(metrics_jsonl_path)
    panels: list[tuple[str, dict[str, np.ndarray], dict[str, bool]]] = [
        ("training loss", curves.losses, {"log_y": log_loss, "smooth": True}),
        ("learning rate", {"lr": curves.lr}, {}),
    ]
    if curves.ap:
        panels.append(("COCO box AP (validation)", curves.ap, {"markers": True}))
    W = int(size[0])
    H = int(size[1]) or 300 * len(panels)
    if W < 300 or H < 150 * len(panels):
        raise VizError(f"size={size!r}: need width >= 300 and >= 150 px height per panel")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(W / _DPI, H / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, series, kw) in zip(axes, panels):
        _panel(ax, series, title, **kw)
    axes[-1].set_xlabel("iteration")
    out = Path(out_png)
    return atomic_write(out, lambda f: fig.savefig(f, format=out.suffix[1:].lower() or "png"))


def plot_loss_cdf(
    fractions: np.ndarray,
    gammas: Sequence[float],
    positive: np.ndarray,
    negative: np.ndarray,
    out_png: str | os.PathLike[str],
    size: tuple[int, int] = (1000, 420),
) -> Path:
    """Write the cumulative normalized loss curves (``positive`` / ``negative`` ``[G, P]`` on ``fractions``
    ``[P]``, a row per gamma) as two panels side by side to `out_png` (atomically) and return its path."""
    fr = np.asarray(fractions, np.float64)
    rows = {"positive": np.asarray(positive, np.float64), "negative": np.asarray(negative, np.float64)}
    for name, arr in rows.items():
        if arr.shape != (len(gammas), fr.size):
            raise VizError(f"{name} curves: shape {arr.shape}, expected ({len(gammas)}, {fr.size})")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, squeeze=True)
    for ax, (name, arr) in zip(axes, rows.items()):
        series = {f"γ = {g:g}": np.stack([fr, row], 1)[np.isfinite(row)] for g, row in zip(gammas, arr)}
        _panel(ax, series, f"{name} examples")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"fraction of {'foreground' if name == 'positive' else 'background'} examples")
        ax.set_ylabel("cumulative normalized loss")
    out = Path(out_png)
    return atomic_write(out, lambda f: fig.savefig(f, format=out.suffix[1:].lower() or "png"))
