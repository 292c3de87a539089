"""torchvision's RetinaNet files, without torchvision: fixtures written by ``tools/torchvision_parity.py``.

``tests/fixtures/torchvision/retinanet_{v1,v2}.json`` hold, for torchvision 0.28's RetinaNet R50-FPN v1
and v2 (frozen BatchNorm, 91 classes): every state-dict key with its shape, and torchvision's own
detections on the two small photos of that folder (batched together, 320 px shorter side, 512 max)
with the seeded weights of ``seeded_state_dict``. Here the same weights are rebuilt from the key table,
saved in the layouts torchvision's files use, and loaded through our presets.

Order: the tool checks the exact order against torchvision on the machine that runs it. Across CPUs
(AVX2 / AVX-512 kernels) near-equal scores of these random weights may swap, so here a detection may
sit elsewhere only among neighbours whose scores are within ``SWAP_TOL``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from retinanet import Predictor
from retinanet.cli import main
from retinanet.data.categories import coco_category_names
from retinanet.data.image_io import load_image
from retinanet.modeling.state_dict import StateDictMismatchError
from retinanet.utils.serialization import load_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "torchvision"
sys.path.insert(0, str(ROOT / "tools"))
from torchvision_parity import PRESETS, first_difference, old_layout, seeded_state_dict  # noqa: E402

SMALL = ["data.min_size=[320]", "data.test_min_size=320", "data.max_size=512"]
SWAP_TOL = 2e-5


def fixture(version: str) -> dict:
    return json.loads((FIXTURES / f"retinanet_{version}.json").read_text())


def images(fx: dict) -> list[np.ndarray]:
    return [load_image(FIXTURES / name) for name in fx["images"]]


@pytest.fixture(scope="module")
def tv_files(tmp_path_factory) -> dict[str, Path]:
    """The seeded weights in torchvision's layouts: v1 current / old (the published v1 file's) / wrapped, v2."""
    out = tmp_path_factory.mktemp("tv")
    files = {}
    for version in ("v1", "v2"):
        fx = fixture(version)
        sd = seeded_state_dict(fx["keys"], fx["seed"], fx["head_std"])
        files[f"{version}_current"] = out / f"{version}_current.pth"
        torch.save(sd, files[f"{version}_current"])
        if version == "v1":
            files["v1_old"] = out / "v1_old.pth"
            torch.save(old_layout(sd), files["v1_old"])
        else:
            files["v2_wrapped"] = out / "v2_wrapped.pth"
            torch.save({"model": sd, "epoch": 25}, files["v2_wrapped"])
    return files


def predict(path: Path, version: str, overrides: list[str] = (), config: str | None = "preset") -> list[dict]:
    cfg = PRESETS[version] if config == "preset" else config
    pred = Predictor(path, config=cfg, device="cpu", overrides=SMALL + list(overrides))
    return list(pred.predict_many(images(fixture(version)), batch_size=2))


def mismatch(expected: dict, det: dict) -> str:
    return first_difference(expected, det, swap_tol=SWAP_TOL)


def test_presets_have_torchvisions_keys_and_shapes():
    from retinanet.config import load_config
    from retinanet.modeling.retinanet import RetinaNet

    for version, preset in PRESETS.items():
        ours = RetinaNet.from_config(load_config(preset)).state_dict()
        theirs = fixture(version)["keys"]
        assert {k: list(v.shape) for k, v in ours.items()} == theirs, version


@pytest.mark.parametrize("layout", ["v1_current", "v1_old", "v2_current", "v2_wrapped"])
def test_same_detections_as_torchvision(tv_files, layout):
    version = layout[:2]
    dets = predict(tv_files[layout], version)
    expected = fixture(version)["detections"]
    assert [len(e["scores"]) for e in expected] == [len(d["scores"]) for d in dets] == [300, 300]  # hundreds pass 0.05
    for i, (e, d) in enumerate(zip(expected, dets)):
        assert mismatch(e, d) == "", f"{layout} image {i}: {mismatch(e, d)}"


@pytest.mark.parametrize(
    "override",
    [
        "model.anchors.round_sizes=false",
        "data.resize_rounding=round",
        "data.resize=pillow",
        "model.detections_per_image=100",
    ],
)
def test_each_torchvision_behaviour_matters(tv_files, override):
    """A broken variant: without any one of torchvision's behaviours the detections differ."""
    dets = predict(tv_files["v1_current"], "v1", [override])
    expected = fixture("v1")["detections"]
    assert any(mismatch(e, d) for e, d in zip(expected, dets))


@pytest.mark.parametrize("strides_from_input", [True, False])
def test_p6_p7_anchors_are_torchvisions(strides_from_input):
    """P6 / P7 of a 512 x 480 batch: torchvision's strides are 512 // 8 = 64 by 480 // 8 = 60 (P6) and
    128 by 120 (P7); with the fixed strides 64 and 128 the anchors differ (the broken variant)."""
    from retinanet.config import load_config
    from retinanet.modeling.retinanet import RetinaNet

    fx = fixture("v1")
    over = SMALL + [f"model.anchors.strides_from_input={str(strides_from_input).lower()}"]
    model = RetinaNet.from_config(load_config(PRESETS["v1"], over))
    h, w = fx["padded_size"]
    assert [h, w] == [512, 480]
    sizes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32), (8, 8), (4, 4)]
    ours = model.anchor_generator(sizes, input_size=(h, w))[3:]
    same = [torch.equal(a, torch.tensor(t)) for a, t in zip(ours, fx["anchors_p6_p7"])]
    assert same == ([True, True] if strides_from_input else [False, False])


def test_wrong_preset_names_the_one_that_fits(tv_files):
    with pytest.raises(StateDictMismatchError, match="fits the preset torchvision_retinanet_resnet50_fpn_v2"):
        predict(tv_files["v2_current"], "v1")
    with pytest.raises(StateDictMismatchError, match="fits the preset torchvision_retinanet_resnet50_fpn\\."):
        predict(tv_files["v1_old"], "v2")


def test_a_missing_tensor_is_named(tv_files, tmp_path):
    sd = load_file(tv_files["v1_current"])
    del sd["head.regression_head.bbox_reg.bias"]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(StateDictMismatchError, match="missing keys \\(1\\): head.regression_head.bbox_reg.bias"):
        predict(tmp_path / "cut.pth", "v1")


def test_convert_then_use_without_config(tv_files, tmp_path, capsys):
    out = tmp_path / "ours.pth"
    assert main(["convert", "torchvision", str(tv_files["v1_old"]), "--out", str(out)]) == 0
    assert "torchvision_retinanet_resnet50_fpn" in capsys.readouterr().out
    state = load_file(out)
    assert state["config"]["model"]["label_space"] == "coco_category_ids"
    assert state["class_names"][1] == "person" and state["label_to_category_id"] == list(range(91))
    dets = predict(out, "v1", config=None)
    for e, d in zip(fixture("v1")["detections"], dets):
        assert mismatch(e, d) == ""


def test_cli_predict_writes_coco_ids_and_names(tv_files, tmp_path):
    imgs = [FIXTURES / n for n in fixture("v2")["images"]]
    out = tmp_path / "pred"
    config = tmp_path / "v2_small.yaml"  # the preset at the 320 px of the fixtures (predict takes no overrides)
    config.write_text(f"base: {PRESETS['v2']}\ndata: {{min_size: [320], test_min_size: 320, max_size: 512}}\n")
    argv = ["predict", *map(str, imgs), "--weights", str(tv_files["v2_current"])]
    assert main(argv + ["--config", str(config), "--out", str(out), "--no-draw", "--no-progress"]) == 0
    results = json.loads((out / "predictions.json").read_text())
    names = coco_category_names()
    assert len(results) == 600
    assert all(r["category_name"] == names.get(r["category_id"], "N/A") for r in results)
    assert {r["category_id"] for r in results} <= set(range(91))
    assert any(r["category_name"] not in ("N/A", str(r["category_id"])) for r in results)


def test_no_config_names_the_preset(tv_files):
    from retinanet.config import ConfigError

    with pytest.raises(ConfigError, match="fits the preset torchvision_retinanet_resnet50_fpn_v2"):
        Predictor(tv_files["v2_wrapped"], device="cpu")


def test_floor_resize_is_torchvisions_rule():
    """One factor min(800 / short, 1333 / long), sides floored (torch's interpolate with
    recompute_scale_factor): 161 * (800 / 161) is 799.99... in floating point, so 799."""
    from retinanet.data.transforms import ResizeShortestSide, get_output_size

    assert get_output_size(161, 200, 800, 1333, "floor") == (799, 993)
    assert get_output_size(161, 200, 800, 1333, "round") == (800, 994)
    assert get_output_size(480, 640, 800, 1333, "floor") == (800, 1066)
    assert get_output_size(1000, 3000, 800, 1333, "floor") == (444, 1333)
    img = torch.rand(3, 161, 200, generator=torch.Generator().manual_seed(0))
    ours, target = ResizeShortestSide(800, 1333, rounding="floor", antialias=False)(img, {})
    scale = min(800 / 161, 1333 / 200)
    ref = torch.nn.functional.interpolate(
        img[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True, align_corners=False
    )[0]
    assert target["size"] == (799, 993) and torch.equal(ours, ref)


def test_exported_torchscript_gives_torchvisions_detections(tv_files, tmp_path):
    from retinanet.export.exporter import export_model
    from retinanet.modeling.preprocess import batch_images

    path = export_model(
        tv_files["v1_old"], tmp_path / "tv.pt", fmt="torchscript", config=PRESETS["v1"], height=128, width=128
    )
    pred = Predictor(tv_files["v1_old"], config=PRESETS["v1"], device="cpu", overrides=SMALL)
    imgs = images(fixture("v1"))
    resized = [pred.transforms(im, {})[0] for im in imgs]
    batch, sizes = batch_images(resized)
    exported = torch.jit.load(str(path))
    out = exported(batch, sizes, torch.tensor([im.shape[:2] for im in imgs]))
    for i, (e, d) in enumerate(zip(fixture("v1")["detections"], out)):
        assert mismatch(e, d) == "", f"image {i}: {mismatch(e, d)}"


def test_coco_category_id_outputs_train_and_evaluate_on_category_ids(tv_files, tmp_path):
    """``model.label_space: coco_category_ids``: training targets are the json's category ids (not
    0..2), evaluation maps output i to category id i and leaves out the ids the data lacks, and an id
    with no output is an error."""
    from data_factory import coco_dict, make_coco

    from retinanet.config import ConfigError, load_config
    from retinanet.data.build import build_dataset

    images_dir, _ = make_coco(tmp_path / "probe")
    pred = Predictor(tv_files["v1_current"], config=PRESETS["v1"], device="cpu", overrides=SMALL)
    files = sorted(images_dir.iterdir())
    found = torch.cat([d["labels"] for d in pred.predict_many(files)])
    top = torch.bincount(found, minlength=91).argsort(descending=True)[:3].tolist()  # 3 ids the model outputs
    data_ids = {7: top[0], 3: top[1], 11: top[2]}
    coco = coco_dict()
    for c in coco["categories"]:
        c["id"] = data_ids[c["id"]]
    for a in coco["annotations"]:
        a["category_id"] = data_ids[a["category_id"]]
    images_dir, ann = make_coco(tmp_path / "coco", coco)
    data = [f"data.train_images={images_dir}", f"data.train_annotations={ann}"]
    data += [f"data.val_images={images_dir}", f"data.val_annotations={ann}"]
    ds = build_dataset(load_config(PRESETS["v1"], SMALL + data), train=True)
    raw = build_dataset(load_config("retinanet_R50_FPN_1x", data + ["model.num_classes=3"]), train=True)
    for i in range(len(ds)):
        assert ds[i][1]["labels"].tolist() == [ds.label_to_category_id[int(k)] for k in raw[i][1]["labels"]]
    assert {int(k) for i in range(len(ds)) for k in ds[i][1]["labels"]} <= set(top)

    out = tmp_path / "eval"
    argv = ["eval", PRESETS["v1"], *SMALL, *data, "--weights", str(tv_files["v1_current"]), "--out", str(out)]
    assert main(argv + ["--no-progress"]) == 0
    dets = json.loads((out / "detections.json").read_text())
    expected = int(torch.isin(found, torch.tensor(top)).sum())
    assert expected > 0 and len(dets) == expected and {d["category_id"] for d in dets} == set(top)

    coco["categories"][0]["id"] = 95
    for a in coco["annotations"]:
        a["category_id"] = 95 if a["category_id"] == top[0] else a["category_id"]
    images_dir, ann = make_coco(tmp_path / "bad", coco)
    cfg = load_config(PRESETS["v1"], SMALL + [f"data.train_images={images_dir}", f"data.train_annotations={ann}"])
    with pytest.raises(ConfigError, match="category ids \\[95\\] are no outputs 0..90"):
        build_dataset(cfg, train=True)
