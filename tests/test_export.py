"""Export for deployment: TorchScript, pt2 and ONNX files hold the whole detector (post-processing
included) and give the eager model's detections on two image sizes at batch 1 and 2; the ONNX file runs
in ONNX Runtime with NMS inside; the export check fails loudly on a tampered file."""

from __future__ import annotations

import json
import re
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
from retinanet.export import (
    ExportError,
    check_exported,
    export,
    export_model,
    format_for_path,
    load_exported,
    read_metadata,
)

torch.set_num_threads(1)

# tolerances of "same detections": labels and order identical; torch formats to 1e-4 px / 1e-6 (they run
# the same kernels), ONNX Runtime to 1e-3 px / 1e-5 (its own convolutions)
BOX_ATOL, SCORE_ATOL = 1e-4, 1e-6
ORT_BOX_ATOL, ORT_SCORE_ATOL = 1e-3, 1e-5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model_final.pth")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor(ckpt, device="cpu")


@pytest.fixture(scope="module")
def scripted(ckpt, tmp_path_factory) -> Path:
    return export_model(ckpt, tmp_path_factory.mktemp("export") / "model.pt", height=128, width=128)


@pytest.fixture(scope="module")
def pt2_report(ckpt, tmp_path_factory):
    return export(ckpt, tmp_path_factory.mktemp("pt2") / "model.pt2", "pt2", height=128, width=128)


@pytest.fixture(scope="module")
def onnx_cli(ckpt, tmp_path_factory):
    """``retinanet export --format onnx`` (with its check in ONNX Runtime): the file and what it printed."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    args = ["export", "--weights", str(ckpt), "--out", str(out), "--format", "onnx", "--height", "128"]
    res = subprocess.run(
        [sys.executable, "-m", "retinanet", *args, "--width", "128"], capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stdout


def _assert_same(got, want, box_atol=BOX_ATOL, score_atol=SCORE_ATOL):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert w["labels"].numel() > 0
        assert torch.equal(g["labels"].to(torch.int64), w["labels"])
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=0, atol=box_atol)
        torch.testing.assert_close(g["scores"], w["scores"], rtol=0, atol=score_atol)


def _batch(seed: int = 5, dtype=torch.float32):
    """Two raw images of different sizes, stacked at the top-left of one batch (uint8 or 0-1)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(3, 200, 100, generator=g), torch.rand(3, 250, 130, generator=g)
    if dtype == torch.uint8:
        a, b = (a * 255).round().to(torch.uint8), (b * 255).round().to(torch.uint8)
    images = torch.zeros(2, 3, 250, 130, dtype=dtype)
    images[0, :, :200, :100], images[1] = a, b
    return [a, b], images, torch.tensor([[200, 100], [250, 130]])


def _small(seed: int = 2) -> torch.Tensor:
    """One uint8 image smaller than size_divisibility (128): one block, size-1 top pyramid level."""
    return (torch.rand(1, 3, 96, 120, generator=torch.Generator().manual_seed(seed)) * 255).round().to(torch.uint8)


def _unpad(boxes, scores, labels, num):
    """The padded outputs of pt2/ONNX as the eager model's list of dicts; padding slots must be empty."""
    out = []
    for i in range(len(num)):
        n = int(num[i])
        assert (np.asarray(labels[i, n:]) == -1).all() and (np.asarray(scores[i, n:]) == 0).all()
        assert (np.asarray(boxes[i, n:]) == 0).all()
        out.append(
            {
                "boxes": torch.as_tensor(np.asarray(boxes[i, :n])),
                "scores": torch.as_tensor(np.asarray(scores[i, :n])),
                "labels": torch.as_tensor(np.asarray(labels[i, :n])),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------- TorchScript
def test_torchscript_gives_the_eager_models_detections(scripted, predictor):
    ts = torch.jit.load(str(scripted))
    listed, images, sizes = _batch()
    out_sizes = [(400, 50), (250, 130)]  # boxes mapped to another size, per axis
    with torch.no_grad():
        want = predictor.model(listed, output_sizes=out_sizes)
        got = ts(images, sizes, torch.tensor(out_sizes))
        got_default = ts(images[1:])  # one image, no sizes: its own size, padded inside
        want_default = predictor.model(images[1:])
        _assert_same(ts(_small()), predictor.model(_small()))
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
    assert meta["format"] == "torchscript" and meta["outputs_layout"] == "list"
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


def test_cli_export_torchscript_prints_the_measured_deviation(ckpt, tmp_path, capsys):
    out = tmp_path / "cli" / "model.pt"
    code = main(["export", "--weights", str(ckpt), "--out", str(out), "--height", "100", "--width", "130"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = captured.out.strip()
    assert line.startswith(f"exported torchscript model to {out} (checked: same ")
    assert "(1 x 100x130, 2 x 140x202)" in line and re.search(r"boxes within \S+ px, scores within \S+\)$", line)
    assert read_metadata(out)["export_size"] == [100, 130]
    assert [p.name for p in out.parent.iterdir()] == ["model.pt"]  # no temporary file left
    code = main(["export", "--weights", str(ckpt), "--out", str(out), "--height", "100", "--no-check"])
    assert code == 0 and capsys.readouterr().out.strip() == f"exported torchscript model to {out} (not checked)"


# ---------------------------------------------------------------------------------------------- pt2
def test_pt2_is_the_whole_detector_two_sizes_batch_1_and_2(pt2_report, predictor):
    """The saved program itself (no wrapper of ours) returns the padded final detections."""
    import retinanet.export.nms_op  # noqa: F401  (the program's NMS operator)

    meta = read_metadata(pt2_report.path)
    assert meta["format"] == "pt2" and meta["dynamic"] is True and meta["input_dtype"] == "uint8"
    assert meta["input_range"] == {"batch": [1, 256], "height": [1, 8192], "width": [1, 8192]}
    assert pt2_report.check is not None and pt2_report.check.detections == 60
    program = torch.export.load(str(pt2_report.path)).module()
    listed, images, sizes = _batch(8, torch.uint8)
    with torch.no_grad():
        _assert_same(_unpad(*program(images, sizes)), predictor.model(listed))  # batch 2, 250 x 130
        _assert_same(_unpad(*program(_small(), torch.tensor([[96, 120]]))), predictor.model(_small()))
        three = torch.cat([images, images[1:]])  # a batch size the example did not have
        _assert_same(_unpad(*program(three, torch.cat([sizes, sizes[1:]]))), predictor.model(listed + listed[1:]))


def test_pt2_through_load_exported_has_the_models_call(pt2_report, predictor):
    detector, _ = load_exported(pt2_report.path)
    listed, images, sizes = _batch(3)  # float 0-1 images of uint8 values are passed on exactly
    images, listed = (images * 255).round() / 255, [(x * 255).round() / 255 for x in listed]
    out_sizes = [(400, 50), (250, 130)]
    with torch.no_grad():
        _assert_same(detector(images, sizes, torch.tensor(out_sizes)), predictor.model(listed, output_sizes=out_sizes))


# ---------------------------------------------------------------------------------------------- ONNX
def test_onnx_file_has_nms_inside_and_runs_in_onnxruntime(onnx_cli, predictor):
    """Plain ONNX Runtime and numpy (nothing of ours) on two sizes at batch 1 and 2."""
    import onnx
    import onnxruntime as ort

    path, printed = onnx_cli
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert "NonMaxSuppression" in ops and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input]
    assert dims == [["batch", 3, "height", "width"], ["batch", 2]]
    assert [v.name for v in model.graph.output] == ["boxes", "scores", "labels", "num_detections"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["retinanet"])
    assert meta["class_names"] == CLASS_NAMES and meta["input_dtype"] == "uint8" and meta["format"] == "onnx"
    listed, images, sizes = _batch(6, torch.uint8)
    run = session.run(None, {"images": images.numpy(), "image_sizes": sizes.numpy()})
    with torch.no_grad():
        _assert_same(_unpad(*run), predictor.model(listed), ORT_BOX_ATOL, ORT_SCORE_ATOL)
        small = session.run(None, {"images": _small().numpy(), "image_sizes": np.array([[96, 120]])})
        _assert_same(_unpad(*small), predictor.model(_small()), ORT_BOX_ATOL, ORT_SCORE_ATOL)
    match = re.search(r"boxes within (\S+) px, scores within (\S+)\)$", printed.strip())
    assert printed.startswith(f"exported onnx model to {path} (checked in ONNX Runtime: same 60 detections")
    assert match and float(match.group(1)) <= 0.01 and float(match.group(2)) <= 1e-4


def test_onnx_check_fails_loudly_on_a_tampered_file(onnx_cli, predictor, tmp_path):
    """Raise the NMS threshold to 1 (nothing suppressed) in a copy: the check must see it."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_cli[0]))
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    assert check_exported(onnx_cli[0], predictor.model, 128, 128).detections == 60  # the original passes
    one = numpy_helper.from_array(np.array([1.0], np.float32), nms.input[3])
    changed = 0
    for node in model.graph.node:  # the constant that feeds NonMaxSuppression's iou_threshold
        if node.op_type == "Constant" and node.output[0] == nms.input[3]:
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", one))
            changed += 1
    for init in model.graph.initializer:
        if init.name == nms.input[3]:
            init.CopyFrom(one)
            changed += 1
    assert changed == 1
    bad = tmp_path / "tampered.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(ExportError, match=r"tampered.onnx \(ONNX Runtime\): (image 0 of a 1 x 128x128|boxes differ)"):
        check_exported(bad, predictor.model, 128, 128)


def test_predict_with_the_onnx_file_writes_the_eager_predictions(onnx_cli, ckpt, tmp_path, capsys):
    """retinanet predict on the ONNX file (by file type, and with --backend) == on the checkpoint."""
    for i, (h, w) in enumerate([(48, 64), (120, 90), (200, 300)]):
        write_image(tmp_path / "imgs" / f"im{i}.png", h=h, w=w, seed=i)
    renamed = tmp_path / "model.bin"
    renamed.symlink_to(onnx_cli[0])
    runs = {
        "torch": ["--weights", str(ckpt)],
        "onnx": ["--weights", str(onnx_cli[0])],
        "backend": ["--weights", str(renamed), "--backend", "onnxruntime", "--batch-size", "1"],
        "torch_t": ["--weights", str(ckpt), "--score-thresh"],
        "onnx_t": ["--weights", str(onnx_cli[0]), "--score-thresh"],
    }
    preds = {}
    for name, args in runs.items():
        if args[-1] == "--score-thresh":  # a threshold between two scores of the middle of the ranking
            scores = sorted({r["score"] for r in preds["torch"]})
            args = [*args, str((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2)]
        code = main(["predict", str(tmp_path / "imgs"), "--out", str(tmp_path / name), "--no-draw", *args])
        assert code == 0, capsys.readouterr().err
        preds[name] = json.loads((tmp_path / name / "predictions.json").read_text())
    assert len(preds["torch"]) == 60 and 10 < len(preds["torch_t"]) < 50
    for want, got in [("torch", "onnx"), ("torch", "backend"), ("torch_t", "onnx_t")]:
        a, b = preds[want], preds[got]
        key = ("image_id", "category_id", "category_name", "file_name")
        assert [tuple(r[k] for k in key) for r in a] == [tuple(r[k] for k in key) for r in b]
        assert np.abs(np.array([r["bbox"] for r in a]) - np.array([r["bbox"] for r in b])).max() <= 0.011
        assert np.abs(np.array([r["score"] for r in a]) - np.array([r["score"] for r in b])).max() <= 2e-6


def test_readme_onnx_snippet_runs_without_our_code(onnx_cli, predictor, tmp_path):
    """The README's deployment snippet (numpy + onnxruntime + PIL) gives predict()'s detections."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Deploy: ONNX, pt2, TorchScript", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(snippet.strip().splitlines()) <= 16 and "retinanet" not in snippet.replace('"retinanet"', "")
    (tmp_path / "model.onnx").symlink_to(onnx_cli[0])
    write_image(tmp_path / "image.png", h=90, w=150, seed=7).rename(tmp_path / "image.jpg")  # PNG content
    code = "import sys; sys.modules['retinanet'] = None\n" + snippet
    code += "np.savez('out.npz', boxes=boxes[0, : n[0]] * scale, scores=scores[0, : n[0]], labels=labels[0, : n[0]])\n"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    want = predictor.predict(tmp_path / "image.jpg")
    assert res.stdout.splitlines()[0].split()[0] == want["names"][0] and len(res.stdout.splitlines()) == 20
    assert np.array_equal(out["labels"], want["labels"].numpy())
    np.testing.assert_allclose(out["boxes"], want["boxes"].numpy(), rtol=0, atol=1e-3)
    np.testing.assert_allclose(out["scores"], want["scores"].numpy(), rtol=0, atol=ORT_SCORE_ATOL)


# ---------------------------------------------------------------------------------------------- the check
def test_the_check_fails_on_another_models_file_and_keeps_no_file(ckpt, predictor, tmp_path, monkeypatch):
    import retinanet.export.exporter as exporter

    other = make_checkpoint(tmp_path / "other.pth", seed=1)  # same architecture, other weights
    foreign = export_model(other, tmp_path / "foreign.pt", height=128, width=128)
    with pytest.raises(ExportError, match=r"foreign.pt \(torchscript\): (image 0 of a 1 x 128x128|boxes differ)"):
        check_exported(foreign, predictor.model, 128, 128)

    real_load = exporter.load_exported

    def shifted(path):  # the file as written, its boxes off by 0.05 px: beyond the 0.01 px allowed
        run, meta = real_load(path)

        def run_shifted(images, sizes):
            return [{**d, "boxes": d["boxes"] + 0.05} for d in run(images, sizes)]

        return run_shifted, meta

    monkeypatch.setattr(exporter, "load_exported", shifted)
    out = tmp_path / "out" / "model.pt"
    with pytest.raises(ExportError, match=r"boxes differ by up to 0.05 px .* \(allowed 0.01 px, 0.0001\)"):
        export_model(ckpt, out, height=128, width=128)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_onnx_without_the_onnx_package_is_a_clear_error(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: its import fails
    out = tmp_path / "model.onnx"
    code = main(["export", "--weights", str(ckpt), "--out", str(out)])  # .onnx: the format is ONNX
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("retinanet export: error: ONNX export needs the onnxscript package(s)")
    assert "pip install onnxscript" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_suffix_names_the_format():
    names = {"m.onnx": "onnx", "dir.v2/M.ONNX": "onnx", "m.pt2": "pt2", "m.pt": "torchscript", "m.ts": "torchscript"}
    assert {n: format_for_path(n) for n in names} == names
    for bad in ("model", "model.pth", "model.onnx.tmp"):
        with pytest.raises(ExportError, match="cannot tell the export format"):
            format_for_path(bad)


def test_load_exported_refuses_a_checkpoint(ckpt):
    with pytest.raises(ExportError, match="not a model exported by retinanet"):
        load_exported(ckpt)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(ckpt, "x.tflite", fmt="tflite")
    with pytest.raises(
        ExportError, match=r"cannot tell the export format from the file name 'x.tflite': name it \.onnx"
    ):
        export_model(ckpt, "x.tflite")
    with pytest.raises(ExportError, match="unknown input dtype 'int16'"):
        export_model(ckpt, "x.onnx", fmt="onnx", input_dtype="int16")
