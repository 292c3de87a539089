"""Pillow drawings: detections, galleries and curve plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet.viz.draw import (
    VizError,
    class_color,
    draw_detections,
    make_gallery,
    plot_curves,
    plot_training_curves,
    side_by_side,
)

GREY = (128, 128, 128)
RED = (255, 0, 0)


def _grey(h: int = 200, w: int = 240) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def test_box_outline_has_the_class_colour_and_far_pixels_are_untouched() -> None:
    img = _grey()
    out = draw_detections(img, [[50, 60, 150, 140]], [2], [0.93], class_names=["a", "b", "cat"],
                          color_map={2: RED})
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
    arr = np.asarray(draw_detections(_grey(), [[20, 0, 120, 80]], [0], class_names=names,
                                     color_map={0: RED}))
    assert (arr[2:10, 22:60] == RED).all(axis=2).sum() > 100
    other = np.asarray(draw_detections(_grey(), [[20, 40, 120, 120]], [0], class_names=names,
                                       color_map={0: RED}))
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
    out = draw_detections(chw, torch.tensor([[5.0, 5.0, 40.0, 40.0]]), torch.tensor([0]),
                          torch.tensor([0.7]), color_map={0: RED})
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


def test_plot_curves_writes_a_line_plot(tmp_path: Path) -> None:
    xs = np.arange(50)
    series = {"loss": [(float(x), float(2 * np.exp(-x / 10))) for x in xs],
              "loss_cls": [(float(x), float(np.exp(-x / 10)) if x != 7 else float("nan")) for x in xs]}
    out = plot_curves(series, tmp_path / "p.png", "loss", "iteration", size=(640, 360))
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (360, 640, 3)
    non_bg = np.any(img != 255, axis=2).mean()
    assert 0.01 < non_bg < 0.5
    blue = np.all(img == (31, 119, 180), axis=2).sum()  # first series colour
    red = np.all(img == (214, 39, 40), axis=2).sum()
    assert blue > 150 and red > 150
    logp = plot_curves({"lr": [(0, 1e-4), (10, 1e-2), (20, 1e-3)]}, tmp_path / "l.png", "lr",
                       "iteration", log_y=True)
    assert Image.open(logp).size == (800, 450)
    empty = plot_curves({"x": []}, tmp_path / "e.png", "nothing", "iteration")
    assert Image.open(empty).size == (800, 450)


def test_plot_training_curves_panels(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    rows = [{"iter": i, "loss": 2.0 / (1 + i), "loss_cls": 1.5 / (1 + i), "loss_box": 0.5 / (1 + i),
             "lr": 0.01 * min(1.0, (i + 1) / 20)} for i in range(0, 200, 5)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = plot_training_curves(log, tmp_path / "c.png")
    assert Image.open(out).size == (900, 600)
    with open(log, "a") as f:
        f.write(json.dumps({"iter": 100, "bbox/AP": 0.3, "bbox/AP50": 0.6}) + "\n")
        f.write(json.dumps({"iter": 195, "bbox/AP": 0.5, "bbox/AP50": 0.8}) + "\n")
        f.write(json.dumps({"epoch": 1, "note": "ignored"}) + "\n")
    img = np.asarray(Image.open(plot_training_curves(log, tmp_path / "c3.png")).convert("RGB"))
    assert img.shape == (900, 900, 3)
    assert np.any(img[600:] != 255, axis=2).mean() > 0.01  # the AP panel is drawn
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"iter": 1, "loss": 1.0}\nnot json\n')
    with pytest.raises(VizError, match="bad.jsonl:2"):
        plot_training_curves(bad, tmp_path / "x.png")
    nothing = tmp_path / "none.jsonl"
    nothing.write_text('{"epoch": 1}\n')
    with pytest.raises(VizError, match="no rows"):
        plot_training_curves(nothing, tmp_path / "y.png")
