"""Pictures: detections and galleries (Pillow), training curves (matplotlib)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet.viz import (
    VizError,
    class_color,
    draw_detections,
    make_gallery,
    plot_training_curves,
    read_training_curves,
    side_by_side,
)

GREY = (128, 128, 128)
RED = (255, 0, 0)


def _grey(h: int = 200, w: int = 240) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def test_box_outline_has_the_class_colour_and_far_pixels_are_untouched() -> None:
    img = _grey()
    out = draw_detections(img, [[50, 60, 150, 140]], [2], [0.93], class_names=["a", "b", "cat"], color_map={2: RED})
    arr = np.asarray(out)
    assert out.size == (240, 200)
    assert tuple(arr[139, 100]) == RED  # bottom edge (x2, y2 exclusive)
    assert tuple(arr[100, 50]) == RED and tuple(arr[100, 149]) == RED  # left and right edges
    assert tuple(arr[100, 100]) == GREY  # inside the box
    assert tuple(arr[195, 235]) == GREY  # far away
    assert (img == 128).all()  # input not modified
    # the tag sits on a filled background just above the box
    above = arr[40:60, 50:90]
    assert (above == RED).all(axis=2).sum() > 100
    assert (above != RED).any(axis=2).sum() > 10  # text pixels on it


def test_tag_moves_inside_when_the_box_touches_the_top() -> None:
    names = ["a-long-name"]
    arr = np.asarray(draw_detections(_grey(), [[20, 0, 120, 80]], [0], class_names=names, color_map={0: RED}))
    assert (arr[2:10, 22:60] == RED).all(axis=2).sum() > 100
    other = np.asarray(draw_detections(_grey(), [[20, 40, 120, 120]], [0], class_names=names, color_map={0: RED}))
    assert (other[0:40, 22:60] == RED).all(axis=2).sum() > 100  # above when there is room
    assert (other[42:50, 22:60] == GREY).all()  # and not inside
    assert tuple(other[60, 70]) == GREY


def test_score_threshold_and_default_colours() -> None:
    img = _grey()
    same = np.asarray(draw_detections(img, [[10, 10, 100, 100]], [1], [0.1], score_thresh=0.5))
    assert (same == img).all()
    drawn = np.asarray(draw_detections(img, [[10, 10, 100, 100]], [1], [0.9], score_thresh=0.5))
    assert tuple(drawn[99, 50]) == class_color(1)
    colors = {class_color(k) for k in range(20)}
    assert len(colors) == 20
    empty = draw_detections(Image.fromarray(img), np.zeros((0, 4)), [])
    assert (np.asarray(empty) == img).all()


def test_accepts_float_chw_and_tensors() -> None:
    torch = pytest.importorskip("torch")
    chw = torch.full((3, 50, 60), 0.5)
    out = draw_detections(
        chw, torch.tensor([[5.0, 5.0, 40.0, 40.0]]), torch.tensor([0]), torch.tensor([0.7]), color_map={0: RED}
    )
    assert out.size == (60, 50)
    assert tuple(np.asarray(out)[39, 20]) == RED


def test_bad_inputs_raise_viz_errors() -> None:
    with pytest.raises(VizError, match="labels"):
        draw_detections(_grey(), [[0, 0, 10, 10]], [0, 1])
    with pytest.raises(VizError, match="scores"):
        draw_detections(_grey(), [[0, 0, 10, 10]], [0], [0.5, 0.2])
    with pytest.raises(VizError, match="image"):
        draw_detections(np.zeros((4, 5, 6, 7)), [], [])
    with pytest.raises(VizError, match="NaN"):
        draw_detections(_grey(), [[0, 0, float("nan"), 10]], [0])


def test_gallery_and_side_by_side_size_arithmetic(tmp_path: Path) -> None:
    a = Image.new("RGB", (100, 80), "red")
    b = Image.new("RGB", (100, 80), "blue")
    pad = 8
    g3 = make_gallery([(a, b)] * 3, tmp_path / "g.png", titles=("ground truth", "predictions"))
    g1 = make_gallery([(a, b)], titles=("ground truth", "predictions"))
    assert g3.size[0] == pad + 2 * (100 + pad)
    assert g3.size[1] - g1.size[1] == 2 * (80 + pad)
    assert Image.open(tmp_path / "g.png").size == g3.size
    plain = make_gallery([(a, b)] * 3, titles=None)
    assert plain.size == (pad + 2 * (100 + pad), pad + 3 * (80 + pad))
    # cells land where the arithmetic says
    arr = np.asarray(plain)
    assert tuple(arr[pad + 1, pad + 1]) == (255, 0, 0)
    assert tuple(arr[pad + 1, 2 * pad + 100 + 1]) == (0, 0, 255)
    assert tuple(arr[pad + 80 + pad // 2, pad + 1]) == (255, 255, 255)
    titled = make_gallery([(a, b)], titles=None, row_titles=["image 1"])
    assert titled.size[0] > plain.size[0]
    s = side_by_side([Image.new("RGB", (50, 40)), Image.new("RGB", (70, 60))])
    assert s.size == (pad + 50 + pad + 70 + pad, pad + 60 + pad)
    st = side_by_side([Image.new("RGB", (50, 40)), Image.new("RGB", (70, 60))], ["x", "y"])
    assert st.size[0] == s.size[0] and st.size[1] > s.size[1]
    with pytest.raises(VizError):
        make_gallery([])
    with pytest.raises(VizError, match="extension"):
        make_gallery([(a, b)], tmp_path / "g.unknown")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]  # no temporary files left


def _write_log(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _train_rows(n: int = 200, step: int = 5) -> list[dict]:
    return [
        {
            "iter": i,
            "loss": 2.0 / (1 + i),
            "loss_cls": 1.5 / (1 + i),
            "loss_box": 0.5 / (1 + i),
            "lr": 0.01 * min(1.0, (i + 1) / 20),
        }
        for i in range(0, n, step)
    ]


def _ink(img: np.ndarray) -> float:
    """Fraction of pixels that are not white."""
    return float(np.any(img < 250, axis=2).mean())


def _has_colour(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    return int((np.abs(img.astype(int) - rgb).max(axis=2) <= tol).sum())


# matplotlib's first two default line colours ("C0", "C1")
C0, C1 = (31, 119, 180), (255, 127, 14)


def test_read_training_curves_series(tmp_path: Path) -> None:
    rows = [
        {"iter": 10, "loss_cls": 0.8, "loss": 1.0, "lr": 0.01, "data_time": 0.1},
        {"iter": 0, "loss_cls": 1.6, "loss": 2.0, "lr": 0.001},
        {"iter": 5, "loss": float("nan"), "loss_cls": float("inf"), "lr": 0.005, "skipped": True},
        {"epoch": 1, "loss": 9.0},  # no "iter": ignored
        {"iter": "x", "loss": 9.0},  # non-numeric "iter": ignored
        {"iter": 15, "loss": "n/a", "lr": None, "note": "text"},
    ]
    c = read_training_curves(_write_log(tmp_path / "m.jsonl", rows))
    assert list(c.losses) == ["loss", "loss_cls"]  # "loss" first, then by name
    np.testing.assert_array_equal(c.losses["loss"], [[0, 2.0], [10, 1.0]])  # sorted, NaN dropped
    np.testing.assert_array_equal(c.losses["loss_cls"], [[0, 1.6], [10, 0.8]])  # inf dropped
    np.testing.assert_array_equal(c.lr, [[0, 0.001], [5, 0.005], [10, 0.01]])
    assert c.ap == {}
    ev = rows + [
        {"iter": 10, "bbox/AP": 0.3, "bbox/AP50": 0.6, "bbox/APs": 0.1},
        {"iter": 5, "bbox/AP": float("nan"), "bbox/AP50": 0.5},
    ]
    c = read_training_curves(_write_log(tmp_path / "e.jsonl", ev))
    assert sorted(c.ap) == ["AP", "AP50"]  # AP75 absent, APs not plotted
    np.testing.assert_array_equal(c.ap["AP"], [[10, 0.3]])
    np.testing.assert_array_equal(c.ap["AP50"], [[5, 0.5], [10, 0.6]])
    only_nan = read_training_curves(_write_log(tmp_path / "n.jsonl", [{"iter": 1, "loss": float("nan")}]))
    assert only_nan.losses["loss"].shape == (0, 2) and only_nan.lr.shape == (0, 2)


def test_plot_training_curves_png(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "metrics.jsonl", _train_rows())
    out = plot_training_curves(log, tmp_path / "sub" / "c.png")
    assert out == tmp_path / "sub" / "c.png"
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (600, 900, 3)  # 300 px per panel
    loss, lr = img[:300], img[300:]
    for panel in (loss, lr):
        assert 0.02 < _ink(panel) < 0.5  # axes, text and lines, mostly white
    assert _has_colour(loss, C0) > 300 and _has_colour(loss, C1) > 300  # loss, loss_box lines
    assert _has_colour(lr, C0) > 300  # the lr line

    with open(log, "a") as f:
        f.write(json.dumps({"iter": 100, "bbox/AP": 0.3, "bbox/AP50": 0.6}) + "\n")
        f.write(json.dumps({"iter": 195, "bbox/AP": 0.5, "bbox/AP50": 0.8}) + "\n")
        f.write(json.dumps({"iter": 150, "loss": float("nan"), "lr": float("inf")}) + "\n")
        f.write(json.dumps({"epoch": 1, "note": "ignored"}) + "\n")
    img3 = np.asarray(Image.open(plot_training_curves(log, tmp_path / "c3.png")).convert("RGB"))
    assert img3.shape == (900, 900, 3)
    ap = img3[600:]
    assert 0.02 < _ink(ap) < 0.5
    assert _has_colour(ap, C0) > 100 and _has_colour(ap, C1) > 100  # AP and AP50 points and lines

    sized = plot_training_curves(log, tmp_path / "s.png", size=(640, 480), log_loss=True)
    assert Image.open(sized).size == (640, 480)
    with pytest.raises(VizError, match="size"):
        plot_training_curves(log, tmp_path / "small.png", size=(640, 300))  # 3 panels need 450


def test_plot_training_curves_empty_panels_and_errors(tmp_path: Path) -> None:
    nan_only = _write_log(tmp_path / "nan.jsonl", [{"iter": 1, "loss": float("nan")}])
    img = np.asarray(Image.open(plot_training_curves(nan_only, tmp_path / "n.png")).convert("RGB"))
    assert img.shape == (600, 900, 3)  # drawn with "no data" panels, not an error
    assert _has_colour(img, C0) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"iter": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(VizError, match="bad.jsonl:2"):
        plot_training_curves(bad, tmp_path / "x.png")
    with pytest.raises(VizError, match="expected a JSON object"):
        plot_training_curves(_write_log(tmp_path / "list.jsonl", [[1, 2]]), tmp_path / "x.png")
    nothing = _write_log(tmp_path / "none.jsonl", [{"epoch": 1}])
    with pytest.raises(VizError, match="no rows"):
        plot_training_curves(nothing, tmp_path / "y.png")
    with pytest.raises(VizError, match="cannot read"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "z.png")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".jsonl")) == ["n.png"]


def test_matplotlib_is_imported_only_to_plot() -> None:
    code = (
        "import sys, retinanet, retinanet.viz\nassert 'matplotlib' not in sys.modules, 'imported with retinanet.viz'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
