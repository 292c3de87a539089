"""Bad-input corpus: images and annotations (a clear DataError naming the file and the field /
annotation id, or a counted, logged drop or skip), configs (ConfigError naming the file and the key),
checkpoints (CheckpointError naming the file; pickled code never runs) and the command line (one
line on stderr, exit code 2). docs/bad-input.md lists the same cases with the test of each."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from data_factory import (
    H,
    W,
    coco_dict,
    make_coco,
    make_voc,
    pattern_image,
    voc_xml,
    write_16bit_png,
    write_exif_rotated_jpeg,
    write_truncated,
)
from model_factory import make_checkpoint
from PIL import Image

from retinanet.cli import main
from retinanet.config import ConfigError, load_config
from retinanet.data import (
    CocoDetection,
    DataError,
    VOCDetection,
    build_transforms,
    image_io,
    load_image,
    set_max_image_pixels,
)
from retinanet.data.build import build_dataset
from retinanet.inference.predictor import Predictor
from retinanet.modeling.state_dict import StateDictMismatchError
from retinanet.utils.serialization import CheckpointError, UnsafeCheckpointError

torch.set_num_threads(1)


@pytest.fixture()
def pixel_limit(monkeypatch):
    """Lower the decompression-bomb limit for one test; Pillow's global and the env var are restored."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    monkeypatch.setenv(image_io.MAX_PIXELS_ENV, "0")  # records the old value (or absence) for teardown
    return set_max_image_pixels


def _raises(fn, *parts):
    with pytest.raises(DataError) as ei:
        fn()
    msg = str(ei.value)
    for p in parts:
        assert str(p) in msg, f"{p!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------------------------ image files


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    _raises(lambda: load_image(p), p, "not found")


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _raises(lambda: load_image(p), p, "empty (0 bytes)")


def test_folder_instead_of_file(tmp_path):
    _raises(lambda: load_image(tmp_path), tmp_path, "folder")


@pytest.mark.parametrize("fmt,name", [("JPEG", "cut.jpg"), ("PNG", "cut.png")])
def test_truncated(tmp_path, fmt, name):
    p = write_truncated(tmp_path / name, fmt)
    Image.open(p)  # the header alone is fine: only a full decode finds the problem
    _raises(lambda: load_image(p), p, "truncated or corrupt")


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    _raises(lambda: load_image(p), p, "not an image")


def test_error_is_a_value_error_with_path(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(ValueError) as ei:
        load_image(p)
    assert ei.value.path == str(p)


def test_grayscale(tmp_path):
    g = pattern_image()[:, :, 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    a = load_image(tmp_path / "g.png")
    assert a.shape == (H, W, 3) and a.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(a[:, :, c], g)


def test_one_bit(tmp_path):
    Image.new("1", (4, 2), 1).save(tmp_path / "b.png")
    assert load_image(tmp_path / "b.png").tolist() == [[[255, 255, 255]] * 4] * 2


def test_palette(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putdata([0, 1])
    im.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_palette_with_transparency_on_white(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putdata([0, 1])
    im.save(tmp_path / "pt.png", transparency=1)
    assert load_image(tmp_path / "pt.png").tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_rgba_composited_on_white(tmp_path):
    rgba = np.array([[[200, 10, 20, 255], [200, 10, 20, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = load_image(tmp_path / "a.png").astype(int)
    assert a[0, 0].tolist() == [200, 10, 20]  # opaque: unchanged
    assert a[0, 1].tolist() == [255, 255, 255]  # transparent: white
    assert np.abs(a[0, 2] - 127).max() <= 1  # half black over white
    # fully opaque RGBA: pixels exactly as stored
    opaque = pattern_image()
    Image.fromarray(np.dstack([opaque, np.full((H, W), 255, np.uint8)]), "RGBA").save(tmp_path / "o.png")
    np.testing.assert_array_equal(load_image(tmp_path / "o.png"), opaque)


def test_la(tmp_path):
    Image.fromarray(np.array([[[50, 255], [50, 0]]], dtype=np.uint8), "LA").save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").tolist() == [[[50, 50, 50], [255, 255, 255]]]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # pure red in CMYK
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    a = load_image(tmp_path / "c.jpg").astype(int)
    assert a.shape == (16, 16, 3)
    assert np.abs(a - np.array([255, 0, 0])).max() <= 3


def test_16bit_png_scaled_not_clipped(tmp_path):
    p = write_16bit_png(tmp_path / "d.png", [0, 1000, 32768, 65535])
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    a = load_image(p)
    assert a.shape == (1, 4, 3)
    assert a[0, :, 0].tolist() == [0, 4, 128, 255]  # round(v * 255 / 65535); clipping would give 255s


def test_exif_rotated_jpeg(tmp_path):
    p = write_exif_rotated_jpeg(tmp_path / "rot.jpg", orientation=6)
    with Image.open(p) as im:
        assert im.size == (W, H)  # stored 64 wide, 48 high
    a = load_image(p)
    assert a.shape == (W, H, 3)  # displayed: 48 wide, 64 high
    red = (a[:, :, 0] > 128) & (a[:, :, 1] < 100)
    ys, xs = np.nonzero(red)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40, 47, 0, 9)  # stored (x, y) -> (47 - y, x)


def test_exif_rotated_box_stays_on_object(tmp_path):
    """A box drawn on the displayed image (json sizes of the displayed image) stays on the patch."""
    data = {
        "images": [{"id": 1, "file_name": "rot.jpg", "width": H, "height": W}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 0, 8, 10]}],
        "categories": [{"id": 1, "name": "patch"}],
    }
    image_dir, ann = make_coco(tmp_path, data, write_images=False)
    write_exif_rotated_jpeg(image_dir / "rot.jpg")
    ds = CocoDetection(image_dir, ann, transforms=build_transforms(False, 96, 1000))
    image, t = ds[0]
    assert t["orig_size"] == (W, H) and image.shape == (3, 128, 96)
    x1, y1, x2, y2 = (int(v) for v in t["boxes"][0].tolist())
    assert (x1, y1, x2, y2) == (80, 0, 96, 20)
    inside = image[:, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
    assert inside[0].min() > 0.8 and inside[1].max() < 0.3  # red inside the box
    assert image[0, 30:, :].max() < 0.3  # nothing red far below it


def test_one_pixel_image(tmp_path):
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "px.png")
    assert load_image(tmp_path / "px.png").tolist() == [[[1, 2, 3]]]
    data = {
        "images": [{"id": 1, "file_name": "px.png", "width": 1, "height": 1}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],
        "categories": [{"id": 1, "name": "dot"}],
    }
    image_dir, ann = make_coco(tmp_path / "ds", data, write_images=False)
    Image.new("RGB", (1, 1), (1, 2, 3)).save(image_dir / "px.png")
    image, t = CocoDetection(image_dir, ann, transforms=build_transforms(True, 32, 1333, 0.5))[0]
    assert image.shape == (3, 32, 32) and t["boxes"].tolist() == [[0.0, 0.0, 32.0, 32.0]]


@pytest.mark.parametrize("limit", [1000, 2000])  # over 2x the limit (Pillow errors) and 1x-2x (Pillow warns)
def test_decompression_bomb_limit(tmp_path, pixel_limit, limit):
    p = tmp_path / "big.png"
    Image.fromarray(pattern_image()).save(p)  # 3072 pixels
    pixel_limit(limit)
    msg = _raises(
        lambda: load_image(p), p, "3,072 pixels", f"{limit:,} pixels", "set_max_image_pixels", image_io.MAX_PIXELS_ENV
    )
    assert "decompression-bomb" in msg
    assert pixel_limit(4000) == limit  # raising the limit (returns the old one) lets it load
    assert load_image(p).shape == (H, W, 3)
    pixel_limit(None)
    assert load_image(p).shape == (H, W, 3)


def test_bad_env_limit():
    with pytest.raises(DataError, match=image_io.MAX_PIXELS_ENV):
        image_io._parse_limit("lots")
    assert image_io._parse_limit("0") is None and image_io._parse_limit("5e8") == 500_000_000


# ------------------------------------------------------------------------------------------ datasets: images


def test_bad_image_in_dataset_names_file(tmp_path):
    image_dir, ann = make_coco(tmp_path)
    write_truncated(image_dir / "b.png", "PNG")
    ds = CocoDetection(image_dir, ann)
    ds[0]
    _raises(lambda: ds[1], image_dir / "b.png", "truncated")


def test_skip_bad_images_counts_and_logs(tmp_path, caplog):
    image_dir, ann = make_coco(tmp_path)
    (image_dir / "b.png").write_bytes(b"")
    ds = CocoDetection(image_dir, ann, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        image, t = ds[1]
    assert t["image_id"] == 5 and t["index"] == 2  # the next good image, deterministically
    assert ds.num_skipped == 1 and list(ds.bad_images) == [str(image_dir / "b.png")]
    assert any("b.png" in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    assert ds[1][1]["image_id"] == 5 and ds.num_skipped == 2
    for name in ("a.png", "c.png"):
        (image_dir / name).write_bytes(b"")
    _raises(lambda: ds[0], "none of the 3 images", "empty")


def test_json_size_differs_from_file(tmp_path, caplog):
    data = coco_dict()
    data["images"][0].update(width=128, height=96)
    data["annotations"][1]["bbox"] = [60, 40, 60, 50]
    image_dir, ann = make_coco(tmp_path, data, images={"a.png": pattern_image()})
    ds = CocoDetection(image_dir, ann)
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        _, t = ds[0]
    assert t["orig_size"] == (H, W)
    assert t["boxes"].tolist() == [[10.0, 5.0, 30.0, 20.0], [60.0, 40.0, 64.0, 48.0]]
    assert any("a.png" in r.getMessage() and "128x96" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------ COCO json


def _coco(tmp_path, data):
    image_dir, ann = make_coco(tmp_path, data)
    return lambda: CocoDetection(image_dir, ann), ann


def test_malformed_json(tmp_path):
    ann = tmp_path / "bad.json"
    ann.write_text('{\n  "images": [],\n  "annotations": [,]\n}\n')  # the "," is line 3, column 19
    _raises(lambda: CocoDetection(tmp_path, ann), f"{ann}:3:19", "malformed JSON")


def test_missing_annotation_file(tmp_path):
    _raises(lambda: CocoDetection(tmp_path, tmp_path / "none.json"), tmp_path / "none.json", "not found")


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, key):
    data = coco_dict()
    del data[key]
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, f"missing top-level key '{key}'")


@pytest.mark.parametrize(
    "section,index,field,where",
    [
        ("images", 1, "id", "images[1]"),
        ("images", 1, "file_name", "images[1] (id 2)"),
        ("annotations", 2, "bbox", "annotations[2] (id 12)"),
        ("annotations", 2, "category_id", "(id 12)"),
        ("annotations", 2, "image_id", "(id 12)"),
        ("annotations", 2, "id", "annotations[2]"),
        ("categories", 0, "name", "categories[0] (id 7)"),
    ],
)
def test_missing_entry_field(tmp_path, section, index, field, where):
    data = coco_dict()
    del data[section][index][field]
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, where, f"no '{field}'")


@pytest.mark.parametrize("bbox", [[1, 2, 3], "1,2,3,4", [1, 2, None, 4], [1, 2, True, 4]])
def test_bbox_not_four_numbers(tmp_path, bbox):
    data = coco_dict()
    data["annotations"][0]["bbox"] = bbox
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "annotation id 10", "'bbox' must be 4 numbers")


def test_duplicate_image_ids(tmp_path):
    data = coco_dict()
    data["images"][2]["id"] = 1
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "duplicate image id 1", "images[0]", "images[2]")


def test_image_listed_twice(tmp_path):
    data = coco_dict()
    data["images"][2]["file_name"] = "a.png"
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "image listed twice", "'a.png'", "id 1", "id 5")


def test_unknown_category_id(tmp_path):
    data = coco_dict()
    data["annotations"][3]["category_id"] = 99
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "annotation id 20", "unknown category_id 99")


def test_unknown_image_id(tmp_path):
    data = coco_dict()
    data["annotations"][0]["image_id"] = 42
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "annotation id 10", "unknown image_id 42")


def test_duplicate_category_ids(tmp_path):
    data = coco_dict()
    data["categories"][1]["id"] = 7
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "duplicate category id 7")


def test_empty_dataset(tmp_path):
    data = coco_dict()
    data["images"], data["annotations"] = [], []
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "no images")


def test_no_categories(tmp_path):
    data = coco_dict()
    data["categories"], data["annotations"] = [], []
    build, ann = _coco(tmp_path, data)
    _raises(build, ann, "'categories' is empty")


def test_class_name_not_in_file(tmp_path):
    image_dir, ann = make_coco(tmp_path)
    _raises(lambda: CocoDetection(image_dir, ann, class_names=["cat", "horse"]), ann, "['horse']")


def _boxes_case(tmp_path, caplog, bboxes):
    data = coco_dict()
    data["annotations"] = [{"id": 100 + k, "image_id": 2, "category_id": 3, "bbox": b} for k, b in enumerate(bboxes)]
    image_dir, ann = make_coco(tmp_path, data)
    with caplog.at_level(logging.DEBUG, logger="retinanet.data"):
        ds = CocoDetection(image_dir, ann)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    return ds, warnings, debug


def test_negative_and_zero_size_boxes_dropped(tmp_path, caplog):
    ds, warnings, debug = _boxes_case(tmp_path, caplog, [[1, 1, 0, 5], [1, 1, 5, -2], [2, 2, 4, 4]])
    assert ds.stats["dropped_nonpositive"] == 2 and ds.stats["boxes"] == 1
    assert ds[1][1]["boxes"].tolist() == [[2.0, 2.0, 6.0, 6.0]]
    assert len(warnings) == 1 and "2 box(es) dropped" in warnings[0]
    assert "annotation id 100 in b.png" in warnings[0] and str(ds.ann_file) in warnings[0]
    assert len(debug) == 2 and "annotation id 101 in b.png" in debug[1] and "negative" in debug[1]
    assert {a["id"] for a in ds.coco_gt()["annotations"]} == {102}


def test_nan_inf_boxes_dropped(tmp_path, caplog):
    ds, warnings, _ = _boxes_case(tmp_path, caplog, [[float("nan"), 1, 5, 5], [1, 1, float("inf"), 5], [2, 2, 4, 4]])
    assert ds.stats["dropped_nonfinite"] == 2 and ds.stats["boxes"] == 1
    assert "NaN" in warnings[0] and "annotation id 100" in warnings[0]
    assert torch.isfinite(ds[1][1]["boxes"]).all()


def test_boxes_outside_image_clipped_or_dropped(tmp_path, caplog):
    ds, warnings, debug = _boxes_case(tmp_path, caplog, [[50, 40, 20, 20], [-5, -5, 10, 10], [70, 10, 5, 5]])
    assert ds.stats["clipped"] == 2 and ds.stats["dropped_outside"] == 1
    assert ds[1][1]["boxes"].tolist() == [[50.0, 40.0, 64.0, 48.0], [0.0, 0.0, 5.0, 5.0]]
    assert "1 box(es) dropped" in warnings[0] and "2 clipped" in warnings[0]
    assert any("annotation id 102" in d and "outside" in d for d in debug)
    gt = {a["id"]: a["bbox"] for a in ds.coco_gt()["annotations"]}
    assert gt == {100: [50.0, 40.0, 20.0, 20.0], 101: [-5.0, -5.0, 10.0, 10.0]}  # original boxes for evaluation


def test_annotation_ids_renumbered_for_pycocotools(tmp_path, caplog):
    data = coco_dict()
    data["annotations"][0]["id"] = 0
    data["annotations"][1]["id"] = 0
    image_dir, ann = make_coco(tmp_path, data)
    gt = CocoDetection(image_dir, ann).coco_gt()
    assert [a["id"] for a in gt["annotations"]] == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------ VOC


def test_voc_malformed_xml(tmp_path):
    root = make_voc(tmp_path, xml_text={"000002": "<annotation><object><name>cat</name>\n</annotation>"})
    _raises(lambda: VOCDetection(root, "train"), root / "Annotations" / "000002.xml", ":2:", "malformed XML")


def test_voc_class_not_in_list(tmp_path):
    root = make_voc(tmp_path)
    _raises(
        lambda: VOCDetection(root, "train", class_names=["dog", "cat"]),
        root / "Annotations" / "000001.xml",
        "'person'",
        "not in the class list",
    )


def test_voc_bad_box_field(tmp_path):
    text = voc_xml("000001.jpg", [{"name": "dog", "box": (1, 2, "x", 4)}])
    root = make_voc(tmp_path, xml_text={"000001": text})
    _raises(lambda: VOCDetection(root, "train"), root / "Annotations" / "000001.xml", "<xmax>", "'x'")
    (root / "Annotations" / "000001.xml").write_text(text.replace("<xmax>x</xmax>", ""))
    _raises(lambda: VOCDetection(root, "train"), "000001.xml", "no <xmax>")


def test_voc_missing_split_and_xml(tmp_path):
    root = make_voc(tmp_path)
    _raises(lambda: VOCDetection(root, "test"), root / "ImageSets" / "Main" / "test.txt", "not found", "train")
    (root / "Annotations" / "000003.xml").unlink()
    _raises(lambda: VOCDetection(root, "train"), root / "Annotations" / "000003.xml", "not found")


def test_voc_empty_split_and_duplicates(tmp_path):
    root = make_voc(tmp_path, splits={"train": [], "dup": ["000001", "000001"]})
    _raises(lambda: VOCDetection(root, "train"), "train.txt", "no image ids")
    _raises(lambda: VOCDetection(root, "dup"), "dup.txt:2", "listed twice")


def test_voc_degenerate_box_dropped(tmp_path, caplog):
    objects = {"000001": [{"name": "dog", "box": (10, 10, 5, 20)}, {"name": "dog", "box": (60, 40, 80, 60)}]}
    root = make_voc(tmp_path, objects=objects)
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        ds = VOCDetection(root, "train")
    assert ds.stats["dropped_nonpositive"] == 1 and ds.stats["clipped"] == 1
    assert ds[0][1]["boxes"].tolist() == [[59.0, 39.0, 64.0, 48.0]]
    assert any("000001.xml object 0" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------ configs
# Every message names the file (when the key was set in one) and the key; through the CLI every bad
# input below is one line on stderr, exit code 2, no traceback.


def _config_error(fn, *parts) -> str:
    with pytest.raises(ConfigError) as ei:
        fn()
    msg = str(ei.value)
    for p in parts:
        assert str(p) in msg, f"{p!r} not in {msg!r}"
    assert "\n" not in msg
    return msg


def _cli_error(capsys, *argv) -> str:
    """Run the CLI; assert exit code 2 and one line on stderr without a traceback; return the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"retinanet {argv[0]}: error: ")
    return lines[0]


def _image(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pattern_image()).save(folder / "ok.png")
    return folder / "ok.png"


def _yaml(tmp_path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, parts",
    [
        ("model:\n  num_clases: 3\n", ["unknown config key 'model.num_clases'", "Did you mean 'num_classes'?"]),
        ("sovler:\n  base_lr: 0.1\n", ["unknown config key 'sovler'", "Did you mean 'solver'?"]),
        ("solver:\n  base_lr: fast\n", ["solver.base_lr: expected a number, got 'fast'"]),
        ("model: 3\n", ["model: expected a mapping of ModelConfig fields, got 3"]),
        ("data:\n  min_size: [800, big]\n", ["data.min_size[1]: expected an integer, got 'big'"]),
        ("model:\n  allow_low_quality_matches: maybe\n", ["model.allow_low_quality_matches: expected true or false"]),
        ("solver:\n  base_lr: -0.01\n", ["solver.base_lr: must be a positive number (got -0.01)"]),
        ("model:\n  score_thresh: 1.5\n", ["model.score_thresh: must be in [0, 1] (got 1.5)"]),
        (
            "data:\n  size_divisibility: 100\n",
            ["data.size_divisibility: must be a positive multiple of 32", "(got 100)"],
        ),
        ("data:\n  min_size: [800]\n  max_size: 600\n", ["data.max_size: must be >= every data.min_size (got 600)"]),
    ],
)
def test_config_file_errors_name_the_file_and_the_key(tmp_path, text, parts):
    path = _yaml(tmp_path, text)
    msg = _config_error(lambda: load_config(str(path)), *parts)
    assert msg.startswith(f"{path}: ")


def test_config_override_errors_name_the_override_key(tmp_path):
    path = _yaml(tmp_path, "model:\n  num_classes: 3\n")
    msg = _config_error(
        lambda: load_config(str(path), ["solver.base_lr=-1"]), "solver.base_lr: must be a positive number (got -1"
    )
    assert not msg.startswith(str(path))  # the file is fine: the override is at fault


def test_config_paths_that_do_not_exist(tmp_path):
    _config_error(lambda: load_config(str(tmp_path / "nope.yaml")), "config file not found", "nope.yaml")
    child = _yaml(tmp_path, "base: parent_missing.yaml\nmodel:\n  num_classes: 2\n")
    _config_error(lambda: load_config(str(child)), str(child), "base: config file not found: parent_missing.yaml")
    bad = _yaml(tmp_path, "model: [1, 2\n", "bad.yaml")
    _config_error(lambda: load_config(str(bad)), f"{bad}: not valid YAML at line 2, column 1")
    # data paths are checked when the dataset is built, before any training, naming the key
    cfg = load_config(
        None, ["data.train_images=" + str(tmp_path / "imgs"), "data.train_annotations=" + str(tmp_path / "ann.json")]
    )
    _config_error(lambda: build_dataset(cfg, train=True), "data.train_images: path does not exist", tmp_path / "imgs")
    (tmp_path / "imgs").mkdir()
    _config_error(
        lambda: build_dataset(cfg, train=True), "data.train_annotations: path does not exist", tmp_path / "ann.json"
    )


def test_num_classes_that_does_not_match_the_data(tmp_path):
    image_dir, ann = make_coco(tmp_path)
    cfg = load_config(None, [f"data.train_images={image_dir}", f"data.train_annotations={ann}", "model.num_classes=5"])
    _config_error(
        lambda: build_dataset(cfg, train=True),
        "model.num_classes=5 but the dataset (train) has 3 classes: ['cat', 'dog', 'bird']. Set model.num_classes=3.",
    )


def test_missing_size_and_unreadable_image_names_entry_and_file(tmp_path):
    data = coco_dict()
    del data["images"][1]["width"], data["images"][1]["height"]
    image_dir, ann = make_coco(tmp_path, data)
    (image_dir / "b.png").write_text("not a png")
    _raises(
        lambda: CocoDetection(image_dir, ann),
        f"{ann}: images[1] (id 2): the image size is not given and {image_dir / 'b.png'} cannot be opened",
    )


def test_cli_train_with_bad_config_is_one_line(tmp_path, capsys):
    path = _yaml(tmp_path, "solver:\n  base_rl: 0.1\n")
    line = _cli_error(capsys, "train", path, "--malloc", "default", "--no-progress")
    assert f"{path}: unknown config key 'solver.base_rl'. Did you mean 'base_lr'?" in line
    line = _cli_error(capsys, "train", path.with_name("missing.yaml"), "--malloc", "default")
    assert "config file not found" in line and "missing.yaml" in line
    ok = _yaml(
        tmp_path,
        f"data:\n  train_images: {tmp_path / 'no_images'}\n"
        f"  train_annotations: {tmp_path / 'no.json'}\ntrain:\n  output_dir: {tmp_path / 'run'}\n",
        "paths.yaml",
    )
    line = _cli_error(capsys, "train", ok, "--malloc", "default", "--no-progress")
    assert f"data.train_images: path does not exist: {tmp_path / 'no_images'}" in line


def test_cli_train_with_missing_backbone_weights_names_the_file(tmp_path, capsys):
    image_dir, ann = make_coco(tmp_path / "coco")
    weights = tmp_path / "resnet18_imagenet.pth"
    cfg = _yaml(
        tmp_path,
        f"model:\n  num_classes: 3\n  backbone: {{name: resnet18, weights: {weights}}}\n"
        f"data:\n  train_images: {image_dir}\n  train_annotations: {ann}\n  num_workers: 0\n"
        f"train:\n  output_dir: {tmp_path / 'run'}\n  device: cpu\n",
    )
    line = _cli_error(capsys, "train", cfg, "--malloc", "default", "--no-progress")
    assert "weights file not found" in line and str(weights) in line


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("bad_ckpt") / "model_final.pth")


class _Evil:
    """Unpickling this calls open(marker, "w"): it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_truncated_checkpoint(tiny_ckpt, tmp_path, capsys):
    data = tiny_ckpt.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as ei:
        Predictor(cut, device="cpu")
    assert str(cut) in str(ei.value)
    line = _cli_error(
        capsys, "predict", "--weights", cut, _image(tmp_path / "imgs"), "--out", tmp_path / "o", "--no-progress"
    )
    assert f"checkpoint {cut} cannot be loaded" in line and "truncated" in line
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    line = _cli_error(capsys, "export", "--weights", empty, "--out", tmp_path / "m.pt")
    assert f"checkpoint {empty} is empty (0 bytes)" in line
    line = _cli_error(capsys, "export", "--weights", tmp_path / "gone.pth", "--out", tmp_path / "m.pt")
    assert f"checkpoint {tmp_path / 'gone.pth'} does not exist" in line
    assert not (tmp_path / "m.pt").exists()


def test_wrong_architecture_lists_the_keys_that_differ(tiny_ckpt, tmp_path, capsys):
    more_classes = _yaml(
        tmp_path,
        "model:\n  num_classes: 5\n  backbone: {name: resnet18, weights: null}\n  fpn_channels: 32\n  head_convs: 1\n",
        "five.yaml",
    )
    with pytest.raises(StateDictMismatchError) as ei:
        Predictor(tiny_ckpt, config=str(more_classes), device="cpu")
    msg = str(ei.value)
    # 9 anchors x 3 classes in the file, 9 x 5 in the model; nothing else differs
    assert (
        "shape mismatches: head.classification_head.cls_logits.weight: checkpoint [27, 32, 3, 3] vs model "
        "[45, 32, 3, 3], head.classification_head.cls_logits.bias: checkpoint [27] vs model [45]"
    ) in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg

    deeper = _yaml(
        tmp_path,
        "model:\n  num_classes: 3\n  backbone: {name: resnet34, weights: null}\n  fpn_channels: 32\n  head_convs: 2\n",
        "deeper.yaml",
    )
    line = _cli_error(
        capsys,
        "predict",
        "--weights",
        tiny_ckpt,
        "--config",
        deeper,
        _image(tmp_path / "imgs"),
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert "state dict does not match RetinaNet (wrong architecture, number of classes or weights file?)" in line
    # every difference is named: resnet34's extra blocks and the second head conv, grouped by module
    assert (
        "missing keys (84): backbone.body.layer1.2.* (10), backbone.body.layer2.2.* (10), "
        "backbone.body.layer2.3.* (10), backbone.body.layer3.2.* (10), backbone.body.layer3.3.* (10), "
        "backbone.body.layer3.4.* (10), backbone.body.layer3.5.* (10), backbone.body.layer4.2.* (10), "
        "head.classification_head.conv.1.* (2), head.regression_head.conv.1.* (2)"
    ) in line
    assert "unexpected keys" not in line and "shape mismatches" not in line


def test_checkpoint_without_or_with_a_broken_config(tiny_ckpt, tmp_path, capsys):
    from retinanet.training.checkpoint import save_checkpoint
    from retinanet.utils.serialization import load_file

    state = load_file(tiny_ckpt)
    bare = save_checkpoint(tmp_path / "bare.pth", {"model": state["model"]}, update_last=False)
    line = _cli_error(capsys, "predict", "--weights", bare, _image(tmp_path / "imgs"), "--no-progress")
    assert f"{bare}: the file holds no config; pass config=" in line and "--config" in line
    future = dict(state)
    future["config"] = {**state["config"], "model": {**state["config"]["model"], "new_option": 1}}
    newer = save_checkpoint(tmp_path / "newer.pth", future, update_last=False)
    with pytest.raises(
        ConfigError,
        match=rf"{newer}: the stored config is invalid: unknown config key "
        r"'model.new_option'",
    ):
        Predictor(newer, device="cpu")


def test_malicious_checkpoint_never_runs_code(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "model_final.pth"
    torch.save({"model": {}, "config": {}, "payload": _Evil(marker)}, evil)
    img_dir = _image(tmp_path / "imgs").parent
    with pytest.raises(UnsafeCheckpointError, match="refusing to execute code") as ei:
        Predictor(evil, device="cpu")
    assert str(evil) in str(ei.value) and "open" in str(ei.value)
    line = _cli_error(capsys, "predict", "--weights", evil, img_dir, "--out", tmp_path / "o", "--no-progress")
    assert f"refusing to execute code from {evil}" in line
    line = _cli_error(capsys, "export", "--weights", evil, "--out", tmp_path / "m.pt")
    assert f"refusing to execute code from {evil}" in line
    assert not marker.exists(), "loading the checkpoint executed pickled code"
    # control: the payload is live, an unsafe loader would have created the file
    torch.load(evil, weights_only=False)
    assert marker.exists()


# ------------------------------------------------------------------------------------------ predict inputs


def test_predict_bad_inputs_are_one_line(tiny_ckpt, tmp_path, capsys):
    line = _cli_error(capsys, "predict", "--weights", tiny_ckpt, tmp_path / "nope.jpg", "--no-progress")
    assert f"input not found: {tmp_path / 'nope.jpg'}" in line
    line = _cli_error(capsys, "predict", "--weights", tiny_ckpt, tmp_path, "--no-progress")
    assert "no images found" in line
    cut = write_truncated(tmp_path / "cut.png", "PNG")
    line = _cli_error(capsys, "predict", "--weights", tiny_ckpt, cut, "--out", tmp_path / "o", "--no-progress")
    assert str(cut) in line and "truncated or corrupt" in line
    Image.fromarray(pattern_image()).save(tmp_path / "ok.png")
    line = _cli_error(
        capsys,
        "predict",
        "--weights",
        tiny_ckpt,
        tmp_path / "ok.png",
        "--score-thresh",
        "1.5",
        "--out",
        tmp_path / "o",
        "--no-progress",
    )
    assert "model.score_thresh: must be in [0, 1] (got 1.5)" in line
    line = _cli_error(
        capsys,
        "predict",
        "--weights",
        tiny_ckpt,
        tmp_path / "ok.png",
        "--config",
        tmp_path / "none.yaml",
        "--no-progress",
    )
    assert "config file not found" in line and "none.yaml" in line
