"""Export for deployment: the TorchScript detector and the torch.export (pt2) network give the Python
model's detections; ONNX without its packages is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model_factory import CATEGORY_IDS, CLASS_NAMES, make_checkpoint, write_image
from retinanet import Predictor
from retinanet.cli import main
from retinanet.data.collate import IMAGENET_MEAN, IMAGENET_STD, collate
from retinanet.data.transforms import map_boxes_to_original
from retinanet.export.exporter import (ExportError, export_model, load_exported, num_anchors_per_level,
                                     postprocess_dense, read_metadata)

torch.set_num_threads(1)

# tolerances of "same detections": labels and order identical, boxes to 1e-4 px, scores to 1e-6
BOX_ATOL, SCORE_ATOL = 1e-4, 1e-6


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model_final.pth")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor(ckpt, device="cpu")


@pytest.fixture(scope="module")
def scripted(ckpt, tmp_path_factory) -> Path:
    return export_model(ckpt, tmp_path_factory.mktemp("export") / "model.pt", height=128, width=128)


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert w["labels"].numel() > 0
        assert torch.equal(g["labels"], w["labels"])
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=0, atol=BOX_ATOL)
        torch.testing.assert_close(g["scores"], w["scores"], rtol=0, atol=SCORE_ATOL)


def test_torchscript_gives_the_python_models_detections(scripted, predictor):
    ts = torch.jit.load(str(scripted))
    g = torch.Generator().manual_seed(5)
    # another batch size and image size than the 1 x 128 x 128 example it was traced with
    images = torch.randn(2, 3, 256, 128, generator=g)
    sizes = [(200, 100), (256, 128)]
    with torch.no_grad():
        want = predictor.model(images, image_sizes=sizes)
        got = ts(images, torch.tensor(sizes))
        got_default = ts(images)
        want_default = predictor.model(images)
    _assert_same(got, want)
    _assert_same(got_default, want_default)
    assert got[0]["boxes"][:, 2].max() <= 100 and got[0]["boxes"][:, 3].max() <= 200  # clipped to image_sizes


def test_torchscript_on_a_real_image_matches_predictor(scripted, predictor, tmp_path):
    """Preprocess as documented (resize, normalize, pad), run the artifact, map boxes back."""
    img = write_image(tmp_path / "x.png", h=48, w=64, seed=4)
    from retinanet.data.image_io import load_image
    arr = load_image(img)
    target = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64), "image_id": 0,
              "orig_size": arr.shape[:2]}
    image, t = predictor.transforms(arr, target)
    batch = collate([(image, t)], size_divisibility=128)
    ts, meta = load_exported(scripted)
    with torch.no_grad():
        out = ts(batch.images, torch.tensor(batch.image_sizes))[0]
    want = predictor.predict(img)
    assert torch.equal(out["labels"], want["labels"])
    torch.testing.assert_close(map_boxes_to_original(out["boxes"], t), want["boxes"], rtol=0, atol=BOX_ATOL)
    torch.testing.assert_close(out["scores"], want["scores"], rtol=0, atol=SCORE_ATOL)


def test_metadata_describes_inputs_and_classes(scripted):
    meta = read_metadata(scripted)
    assert meta["format"] == "torchscript"
    assert meta["class_names"] == CLASS_NAMES and meta["label_to_category_id"] == CATEGORY_IDS
    assert meta["mean"] == list(IMAGENET_MEAN) and meta["std"] == list(IMAGENET_STD)
    assert (meta["size_divisibility"], meta["test_min_size"], meta["max_size"]) == (128, 96, 160)
    assert (meta["score_thresh"], meta["detections_per_image"], meta["export_size"]) == (0.0, 20, [128, 128])
    # the metadata is a plain extra file of the TorchScript archive, readable without retinanet
    extra = {"retinanet.json": ""}
    torch.jit.load(str(scripted), _extra_files=extra)
    assert json.loads(extra["retinanet.json"]) == meta


def test_torchscript_rejects_unpadded_input(scripted):
    ts = torch.jit.load(str(scripted))
    with pytest.raises(Exception, match="multiples of size_divisibility"):
        ts(torch.randn(1, 3, 100, 128))
    with pytest.raises(Exception, match=r"\[B, 3, H, W\]"):
        ts(torch.randn(3, 128, 128))


def test_torchscript_runs_without_the_retinanet_package(scripted):
    code = ("import sys; sys.modules['retinanet'] = None\n"  # any import of retinanet would fail
            "import torch\n"
            f"m = torch.jit.load({str(scripted)!r})\n"
            "out = m(torch.zeros(1, 3, 128, 128))\n"
            "print(len(out), sorted(out[0]), out[0]['boxes'].shape[1])\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["1", "['boxes',", "'labels',", "'scores']", "4"]


def test_cli_export_torchscript(ckpt, tmp_path, capsys):
    out = tmp_path / "cli" / "model.pt"
    code = main(["export", "--weights", str(ckpt), "--out", str(out), "--height", "100", "--width", "130"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"exported torchscript model to {out} (checked" in captured.out
    assert read_metadata(out)["export_size"] == [128, 256]  # rounded up to multiples of 128
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]  # no temporary file left


def _dense_check(ckpt, predictor, out, images, **kw):
    export_model(ckpt, out, fmt="pt2", height=128, width=128, check=False, **kw)  # checked here
    module, meta = load_exported(out)
    assert meta["format"] == "pt2"
    with torch.no_grad():
        boxes, logits = module(images)
        want = predictor.model(images)
    h, w = images.shape[-2:]
    levels = num_anchors_per_level(h, w, meta["num_anchors"], meta["strides"])
    assert boxes.shape == (images.shape[0], sum(levels), 4) and logits.shape == (images.shape[0], sum(levels), 3)
    got = postprocess_dense(boxes, logits, levels, [(h, w)] * images.shape[0], score_thresh=meta["score_thresh"],
                            nms_thresh=meta["nms_thresh"], topk_candidates=meta["topk_candidates"],
                            detections_per_image=meta["detections_per_image"])
    _assert_same(got, want)
    return meta


@pytest.mark.slow
def test_pt2_network_with_python_postprocessing_dynamic_sizes(ckpt, predictor, tmp_path):
    """torch.export with dynamic batch and size (the default; ``--static`` skips this slower export,
    ~12 s on 2 CPUs): another batch size and image size than the 2 x 256 x 256 example."""
    images = torch.randn(3, 3, 384, 256, generator=torch.Generator().manual_seed(8))
    meta = _dense_check(ckpt, predictor, tmp_path / "model.pt2", images)
    assert meta["dynamic"] is True and meta["export_size"] == [256, 256]


def test_onnx_without_the_onnx_package_is_a_clear_error(ckpt, tmp_path, capsys):
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        pytest.skip("onnx is installed here: the error path cannot be shown")
    except ImportError:
        pass
    out = tmp_path / "model.onnx"
    code = main(["export", "--weights", str(ckpt), "--out", str(out), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("retinanet export: error: ONNX export needs the onnx")
    assert "pip install onnx" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_onnx_export_when_available(ckpt, tmp_path):  # pragma: no cover - needs onnx + onnxruntime
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = export_model(ckpt, tmp_path / "model.onnx", fmt="onnx", height=128, width=128, dynamic=False)
    assert read_metadata(out)["class_names"] == CLASS_NAMES
    images = np.random.default_rng(0).standard_normal((1, 3, 128, 128)).astype(np.float32)
    boxes, logits = ort.InferenceSession(str(out)).run(None, {"images": images})
    module, _ = load_exported(export_model(ckpt, tmp_path / "m.pt2", fmt="pt2", height=128, width=128,
                                           dynamic=False))
    want_boxes, want_logits = module(torch.from_numpy(images))
    np.testing.assert_allclose(boxes, want_boxes.numpy(), atol=1e-3)
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)


def test_load_exported_refuses_a_checkpoint(ckpt):
    with pytest.raises(ExportError, match="not a model exported by retinanet"):
        load_exported(ckpt)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(ckpt, "x.tflite", fmt="tflite")
