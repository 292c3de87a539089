"""Export for deployment: the TorchScript detector and the torch.export (pt2) network wrapped with the
model's post-processing give the eager model's detections from raw images; ONNX without its packages
is a clear error."""

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
from retinanet.data.image_io import load_image
from retinanet.export import ExportError, export_model, load_exported, read_metadata

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


def _batch(seed: int = 5):
    """Two raw 0-1 images of different sizes, stacked at the top-left of one batch."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(3, 200, 100, generator=g), torch.rand(3, 250, 130, generator=g)
    images = torch.zeros(2, 3, 250, 130)
    images[0, :, :200, :100], images[1] = a, b
    return [a, b], images, torch.tensor([[200, 100], [250, 130]])


def test_torchscript_gives_the_eager_models_detections(scripted, predictor):
    ts = torch.jit.load(str(scripted))
    listed, images, sizes = _batch()
    out_sizes = [(400, 50), (250, 130)]  # boxes mapped to another size, per axis
    with torch.no_grad():
        want = predictor.model(listed, output_sizes=out_sizes)
        got = ts(images, sizes, torch.tensor(out_sizes))
        got_default = ts(images[1:])  # one image, no sizes: its own size, padded inside
        want_default = predictor.model(images[1:])
    _assert_same(got, want)
    _assert_same(got_default, want_default)
    assert got[0]["boxes"][:, 2].max() <= 50 and got[0]["boxes"][:, 3].max() <= 400  # clipped to output size


def test_torchscript_takes_uint8_like_the_model(scripted, predictor):
    ts = torch.jit.load(str(scripted))
    raw = (torch.rand(1, 3, 96, 120, generator=torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    with torch.no_grad():
        _assert_same(ts(raw), predictor.model(raw))
        _assert_same(ts(raw), predictor.model(raw.float() / 255))


def test_torchscript_on_a_real_image_matches_predictor(scripted, predictor, tmp_path):
    """Resize as the metadata says, run the artifact with the original size, compare with predict()."""
    img = write_image(tmp_path / "x.png", h=48, w=64, seed=4)
    arr = load_image(img)
    target = {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "image_id": 0,
        "orig_size": arr.shape[:2],
    }
    image, _ = predictor.transforms(arr, target)
    ts, meta = load_exported(scripted)
    assert meta["test_min_size"] == min(image.shape[-2:])
    with torch.no_grad():
        out = ts(image[None], None, torch.tensor([arr.shape[:2]]))[0]
    want = predictor.predict(img)
    assert torch.equal(out["labels"], want["labels"])
    torch.testing.assert_close(out["boxes"], want["boxes"], rtol=0, atol=BOX_ATOL)
    torch.testing.assert_close(out["scores"], want["scores"], rtol=0, atol=SCORE_ATOL)


def test_metadata_describes_inputs_and_classes(scripted, predictor):
    meta = read_metadata(scripted)
    assert meta["format"] == "torchscript"
    assert meta["class_names"] == CLASS_NAMES and meta["label_to_category_id"] == CATEGORY_IDS
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert (meta["size_divisibility"], meta["test_min_size"], meta["max_size"]) == (128, 96, 160)
    assert (meta["score_thresh"], meta["detections_per_image"], meta["export_size"]) == (0.0, 20, [128, 128])
    assert meta["spec"]["strides"] == [8, 16, 32, 64, 128] and len(meta["spec"]["cell_anchors"][0]) == 9
    # the metadata is a plain extra file of the TorchScript archive, readable without retinanet
    extra = {"retinanet.json": ""}
    torch.jit.load(str(scripted), _extra_files=extra)
    assert json.loads(extra["retinanet.json"]) == meta


def test_torchscript_rejects_a_wrong_shape(scripted):
    ts = torch.jit.load(str(scripted))
    with pytest.raises(Exception, match=r"\[B, 3, H, W\]"):
        ts(torch.rand(3, 128, 128))
    with pytest.raises(Exception, match=r"image_sizes must be a \[B, 2\]"):
        ts(torch.rand(2, 3, 128, 128), torch.tensor([[128, 128]]))


def test_torchscript_runs_without_the_retinanet_package(scripted):
    code = (
        "import sys; sys.modules['retinanet'] = None\n"  # any import of retinanet would fail
        "import torch\n"
        f"m = torch.jit.load({str(scripted)!r})\n"
        "out = m(torch.zeros(1, 3, 100, 90, dtype=torch.uint8))\n"
        "print(len(out), sorted(out[0]), out[0]['boxes'].shape[1])\n"
    )
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["1", "['boxes',", "'labels',", "'scores']", "4"]


def test_cli_export_torchscript(ckpt, tmp_path, capsys):
    out = tmp_path / "cli" / "model.pt"
    code = main(["export", "--weights", str(ckpt), "--out", str(out), "--height", "100", "--width", "130"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"exported torchscript model to {out} (checked" in captured.out
    assert read_metadata(out)["export_size"] == [100, 130]
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]  # no temporary file left


@pytest.mark.slow
def test_pt2_with_the_models_postprocessing_dynamic_sizes(ckpt, predictor, tmp_path):
    """torch.export with dynamic batch and size: another batch and image size than the example."""
    out = export_model(ckpt, tmp_path / "model.pt2", fmt="pt2", height=128, width=128, check=False)
    detector, meta = load_exported(out)
    assert meta["format"] == "pt2" and meta["dynamic"] is True and meta["export_size"] == [384, 384]
    listed, images, sizes = _batch(8)
    listed.append(torch.rand(3, 250, 130, generator=torch.Generator().manual_seed(9)))
    images = torch.cat([images, listed[2][None]])
    sizes = torch.cat([sizes, torch.tensor([[250, 130]])])
    with torch.no_grad():
        _assert_same(detector(images, sizes), predictor.model(listed))


def test_a_failed_check_keeps_no_file(ckpt, tmp_path, monkeypatch):
    import retinanet.export.exporter as exporter

    def differ(run, model, what, examples):
        raise ExportError(f"{what}: boxes differ")

    monkeypatch.setattr(exporter, "_compare", differ)
    out = tmp_path / "model.pt"
    with pytest.raises(ExportError, match="boxes differ"):
        export_model(ckpt, out, height=128, width=128)
    assert not out.exists() and list(tmp_path.iterdir()) == []


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


def test_onnx_network_matches_pt2_when_available(ckpt, tmp_path):  # pragma: no cover - needs onnx + onnxruntime
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    out = export_model(ckpt, tmp_path / "model.onnx", fmt="onnx", height=256, width=256, dynamic=False)
    assert read_metadata(out)["class_names"] == CLASS_NAMES
    pt2 = export_model(ckpt, tmp_path / "m.pt2", fmt="pt2", height=256, width=256, dynamic=False, check=False)
    network = torch.export.load(str(pt2)).module()
    images = np.random.default_rng(0).random((2, 3, 384, 384)).astype(np.float32)
    sizes = np.array([[384, 384], [300, 384]], dtype=np.int64)
    logits, deltas = ort.InferenceSession(str(out)).run(None, {"images": images, "image_sizes": sizes})
    with torch.no_grad():
        want_logits, want_deltas = network(torch.from_numpy(images), torch.from_numpy(sizes))
    np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(deltas, want_deltas.numpy(), atol=1e-4)


def test_load_exported_refuses_a_checkpoint(ckpt):
    with pytest.raises(ExportError, match="not a model exported by retinanet"):
        load_exported(ckpt)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(ckpt, "x.tflite", fmt="tflite")
