"""Prediction from a checkpoint: ``Predictor`` from Python and ``retinanet predict`` on an image, a list
file and a folder (COCO results json in file pixels, drawn PNGs, the score threshold)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from model_factory import CATEGORY_IDS, CLASS_NAMES, make_checkpoint, write_image
from PIL import Image

from retinanet import Predictor
from retinanet.cli import main
from retinanet.inference.predictor import find_images

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model_final.pth")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor(ckpt, device="cpu")


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    return [[round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)] for x1, y1, x2, y2 in boxes.tolist()]


def test_predictor_python_api_path_and_array_agree(predictor, tmp_path):
    img = write_image(tmp_path / "a.png", h=48, w=64)
    det = predictor.predict(img)  # Path
    assert set(det) >= {"boxes", "scores", "labels", "names"}
    n = det["scores"].numel()
    assert n == 20  # score_thresh 0 in the stored config, detections_per_image 20
    assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
    assert det["labels"].dtype == torch.int64 and ((det["labels"] >= 0) & (det["labels"] < 3)).all()
    assert det["names"] == [CLASS_NAMES[i] for i in det["labels"].tolist()]
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])  # by decreasing score
    # boxes are in the pixels of the 64x48 file, although the network saw it at 128x96
    b = det["boxes"]
    assert b[:, 0::2].min() >= 0 and b[:, 0::2].max() <= 64 and b[:, 1::2].min() >= 0 and b[:, 1::2].max() <= 48
    assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
    assert b[:, 2].max() > 32  # not squeezed into a corner either

    arr = np.asarray(Image.open(img).convert("RGB"))
    det2 = predictor.predict(arr)  # RGB uint8 array
    det3 = predictor.predict(str(img))  # str path
    for other in (det2, det3):
        assert torch.equal(other["labels"], det["labels"])
        torch.testing.assert_close(other["boxes"], det["boxes"], rtol=0, atol=1e-5)
        torch.testing.assert_close(other["scores"], det["scores"], rtol=0, atol=1e-6)


def test_boxes_are_mapped_back_to_file_pixels(predictor):
    """The network input is the image resized x2 (48 -> 96 px); the predictor's boxes must be the
    network's boxes divided by 2 (a predictor that skipped the mapping would be off by 2x). The
    model without ``output_sizes`` returns boxes in the pixels of its input."""
    arr = np.asarray(Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)))
    target = {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "image_id": 0,
        "orig_size": (48, 64),
    }
    image, t = predictor.transforms(arr, target)
    assert tuple(image.shape[-2:]) == (96, 128) and tuple(t["size"]) == (96, 128)
    with torch.no_grad():
        raw = predictor.model([image])[0]
    det = predictor.predict(arr)
    assert raw["boxes"].numel() > 0 and torch.equal(det["labels"], raw["labels"])
    torch.testing.assert_close(det["boxes"], raw["boxes"] / 2, rtol=0, atol=1e-4)
    # a non-uniform case: 100x30 -> shorter side 96 (x3.2), longer side capped by max_size 160
    arr2 = np.random.default_rng(4).integers(0, 256, (30, 100, 3), dtype=np.uint8)
    image2, t2 = predictor.transforms(arr2, {**target, "orig_size": (30, 100)})
    h2, w2 = t2["size"]
    assert w2 == 160 and h2 == 48  # 100 * 1.6, 30 * 1.6 (the longer side limits the scale)
    with torch.no_grad():
        raw2 = predictor.model([image2])[0]
    det2 = predictor.predict(arr2)
    scale = torch.tensor([100 / w2, 30 / h2, 100 / w2, 30 / h2])
    torch.testing.assert_close(det2["boxes"], raw2["boxes"] * scale, rtol=0, atol=1e-4)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_single_image_writes_coco_results_and_png(ckpt, predictor, tmp_path, capsys):
    img = write_image(tmp_path / "in" / "scene.jpg", h=48, w=64, seed=1)
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        "predict",
        "--weights",
        str(ckpt),
        str(img),
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
        "--draw-thresh",
        "0",
    )
    assert code == 0, err
    assert "1 images, 20 detections" in stdout
    results = json.loads((out / "predictions.json").read_text())
    assert len(results) == 20
    assert {r["file_name"] for r in results} == {str(img)}
    assert {r["image_id"] for r in results} == {0}
    assert {r["category_id"] for r in results} <= set(CATEGORY_IDS)  # dataset ids, not labels 0..2
    det = predictor.predict(img)
    want = _xywh(det["boxes"])
    got = [r["bbox"] for r in results]
    assert np.allclose(got, want, atol=0.011)
    assert [r["category_id"] for r in results] == [CATEGORY_IDS[i] for i in det["labels"].tolist()]
    assert np.allclose([r["score"] for r in results], det["scores"].tolist(), atol=1e-6)
    for x, y, w, h in got:  # [x, y, w, h] inside the 64x48 file
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 64.01 and y + h <= 48.01
    png = out / "scene_pred.png"
    assert png.is_file()
    drawn = Image.open(png)
    assert drawn.size[1] >= 48 and drawn.size[0] >= 64
    original = np.asarray(Image.open(img).convert("RGB").resize(drawn.size))
    assert np.abs(np.asarray(drawn.convert("RGB")).astype(int) - original.astype(int)).max() > 100  # boxes drawn


def test_cli_list_file_and_folder_and_score_threshold(ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    a = write_image(folder / "a.png", seed=1)
    b = write_image(folder / "sub" / "b.png", h=40, w=70, seed=2)
    c = write_image(folder / "c.jpg", h=64, w=48, seed=3)
    (folder / "notes.txt.bak").write_text("not an image")  # ignored in a folder
    assert find_images([folder]) == [a, c, b]  # recursive, sorted by path

    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\n{c}\n\nimgs/sub/b.png\n")  # relative to the list file's folder
    assert find_images([listing]) == [c, folder / "sub" / "b.png"]

    out_list = tmp_path / "out_list"
    code, stdout, err = _run(
        capsys,
        "predict",
        "--weights",
        str(ckpt),
        str(listing),
        "--out",
        str(out_list),
        "--no-progress",
        "--device",
        "cpu",
    )
    assert code == 0, err
    res_list = json.loads((out_list / "predictions.json").read_text())
    assert [r["file_name"] for r in res_list] == [str(c)] * 20 + [str(folder / "sub" / "b.png")] * 20
    assert sorted(p.name for p in out_list.glob("*.png")) == ["b_pred.png", "c_pred.png"]

    out_dir = tmp_path / "out_dir"
    code, stdout, err = _run(
        capsys,
        "predict",
        "--weights",
        str(ckpt),
        str(folder),
        "--out",
        str(out_dir),
        "--no-progress",
        "--device",
        "cpu",
        "--batch-size",
        "2",
    )
    assert code == 0, err
    assert "3 images, 60 detections" in stdout
    res_dir = json.loads((out_dir / "predictions.json").read_text())
    by_file = {}
    for r in res_dir:
        by_file.setdefault(r["file_name"], []).append(r)
    assert list(by_file) == [str(a), str(c), str(b)]
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["a_pred.png", "b_pred.png", "c_pred.png"]
    assert [sorted({r["image_id"] for r in v}) for v in by_file.values()] == [[0], [1], [2]]

    # --score-thresh: only detections above it, a strict subset of the unthresholded ones
    thr = float(np.median([r["score"] for r in res_dir]))
    out_thr = tmp_path / "out_thr"
    code, stdout, err = _run(
        capsys,
        "predict",
        "--weights",
        str(ckpt),
        str(folder),
        "--out",
        str(out_thr),
        "--no-progress",
        "--device",
        "cpu",
        "--score-thresh",
        str(thr),
        "--no-draw",
    )
    assert code == 0, err
    res_thr = json.loads((out_thr / "predictions.json").read_text())
    assert 0 < len(res_thr) < len(res_dir)
    assert all(r["score"] >= thr for r in res_thr)  # >=: the json rounds scores to 6 decimals
    above = {(r["file_name"], tuple(r["bbox"])) for r in res_dir if r["score"] >= thr}
    assert {(r["file_name"], tuple(r["bbox"])) for r in res_thr} <= above
    assert not list(out_thr.glob("*.png"))  # --no-draw


def test_cli_same_file_name_in_two_folders_keeps_both_pictures(ckpt, tmp_path, capsys):
    write_image(tmp_path / "x" / "im.png", seed=1)
    write_image(tmp_path / "y" / "im.png", seed=2)
    code, _, err = _run(
        capsys,
        "predict",
        "--weights",
        str(ckpt),
        str(tmp_path / "x"),
        str(tmp_path / "y"),
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "predict: 100%" in err and "2/2" in err  # the progress bar (on by default)
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["im_1_pred.png", "im_pred.png"]


def test_list_file_with_a_missing_image_names_the_line(tmp_path):
    good = write_image(tmp_path / "ok.png")
    listing = tmp_path / "batch.txt"
    listing.write_text(f"{good}\nmissing.png\n")
    with pytest.raises(FileNotFoundError, match=r"batch.txt:2: image not found: missing.png"):
        find_images([listing])


def test_cli_onnxruntime_backend_errors_are_one_line(ckpt, tmp_path, capsys):
    """--backend onnxruntime on a checkpoint, and --config with an ONNX file: a clear error, no traceback.
    (Predictions from an exported ONNX file: tests/test_export.py.)"""
    img = write_image(tmp_path / "a.png")
    code, _, err = _run(capsys, "predict", "--weights", str(ckpt), str(img), "--backend", "onnxruntime")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"retinanet predict: error: {ckpt}: ONNX Runtime cannot load it")
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not onnx")
    code, _, err = _run(capsys, "predict", "--weights", str(onnx_path), str(img), "--config", "retinanet_R50_FPN_1x")
    assert code == 2 and "takes no config" in err
    code, _, err = _run(capsys, "predict", "--weights", str(onnx_path), str(img), "--out", str(tmp_path / "o"))
    assert code == 2 and err.startswith(f"retinanet predict: error: {onnx_path}: ONNX Runtime cannot load it")
    assert not (tmp_path / "o" / "predictions.json").exists()
