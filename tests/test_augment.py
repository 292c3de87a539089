"""Training augmentations (``data.augment``): every op keeps boxes exact, the visible-area rule, seeding,
config errors and ``retinanet data show``.

The pixel checks paint each box as a filled rectangle of its own colour on a black image (boxes do not
overlap, integer corners), apply the op, and compare where that colour ends up with where the output
box says it is: exactly for ops without interpolation, to within one pixel for resizing ones (there
each box is painted alone, white on black, and the op rerun from the same random state).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retinanet.config import ConfigError, load_config, save_config
from retinanet.data.augment import (
    LargeScaleJitter,
    PhotometricDistortion,
    RandomExpand,
    RandomIoUCrop,
    RandomRotate90,
    RandomVerticalFlip,
    fit_boxes,
)
from retinanet.data.augment_build import build_augmentations
from retinanet.data.mosaic import Mosaic
from retinanet.data.transforms import RandomHorizontalFlip, build_transforms

BLACK = (0, 0, 0)


# ------------------------------------------------------------------------------------------ scenes
def _colour(k: int) -> np.ndarray:
    """A distinct non-black colour per box id (k < 4096)."""
    k = k + 1
    return np.array([(k * 37) % 256, (k * 101) % 256, 16 * (k // 256) + 1 + (k % 7)], dtype=np.uint8)


def _scene(rng: np.random.Generator, first_id: int = 0, h: int | None = None, w: int | None = None) -> dict:
    """A random image size and up to 6 non-overlapping integer boxes with ids first_id, first_id + 1, ..."""
    h = int(rng.integers(12, 70)) if h is None else h
    w = int(rng.integers(12, 70)) if w is None else w
    boxes: list[list[int]] = []
    for _ in range(40):
        if len(boxes) == 6:
            break
        x1, y1 = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        x2, y2 = int(rng.integers(x1 + 1, min(w, x1 + 30) + 1)), int(rng.integers(y1 + 1, min(h, y1 + 30) + 1))
        if all(x2 <= a or x1 >= c or y2 <= b or y1 >= d for a, b, c, d in boxes):
            boxes.append([x1, y1, x2, y2])
    ids = list(range(first_id, first_id + len(boxes)))
    return {"h": h, "w": w, "boxes": boxes, "ids": ids}


def _paint(scene: dict, only: int | None = None) -> np.ndarray:
    """Boxes in their colours on black (``only``: that box id alone, white)."""
    img = np.zeros((scene["h"], scene["w"], 3), dtype=np.uint8)
    for (x1, y1, x2, y2), k in zip(scene["boxes"], scene["ids"]):
        if only is None:
            img[y1:y2, x1:x2] = _colour(k)
        elif k == only:
            img[y1:y2, x1:x2] = 255
    return img


def _target(scene: dict) -> dict:
    return {
        "boxes": torch.tensor(scene["boxes"], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(scene["ids"], dtype=torch.int64),
        "image_id": 1,
        "orig_size": (scene["h"], scene["w"]),
        "size": (scene["h"], scene["w"]),
        "index": 0,
    }


def _run(op, scene: dict, state: int, only: int | None = None):
    torch.manual_seed(state)  # the ops draw from torch's global generator, as under SeededDataset
    return op(_paint(scene, only), _target(scene))


def _check_exact(
    img: np.ndarray, t: dict, all_ids: list[int], areas: dict[int, float] | None = None, min_visible: float = 0.0
) -> None:
    """Each box id's colour covers exactly the union of its output boxes; ids without a box are gone, or
    (``areas``) show less than ``min_visible`` of their area."""
    assert img.dtype == np.uint8 and img.shape[2] == 3
    assert t["size"] == img.shape[:2]
    boxes, labels = t["boxes"], t["labels"]
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and len(boxes) == len(labels)
    h, w = img.shape[:2]
    if len(boxes):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert torch.equal(boxes, boxes.round()), "integer boxes stay integer"
    for k in all_ids:
        mask = (img == _colour(k)).all(axis=2)
        want = np.zeros_like(mask)
        for b in boxes[labels == k].to(torch.int64).tolist():
            want[b[1] : b[3], b[0] : b[2]] = True
        if want.any():
            assert np.array_equal(mask, want), f"box {k}: pixels and box disagree"
            if areas is not None:
                assert mask.sum() >= min_visible * areas[k]
        elif areas is not None:
            assert mask.sum() < min_visible * areas[k] or mask.sum() == 0, f"box {k} dropped but visible enough"
        else:
            assert not mask.any(), f"box {k} dropped but visible"


def _check_within_one_pixel(run_only, out_t: dict) -> None:
    """The output boxes of each id against a rerun with that box alone, white on black (``run_only(k) ->
    (image, target)``): the pixels at least half white lie inside the boxes grown by one pixel, and every
    pixel whose centre is a pixel or more inside a box (of 3 px or more) is at least half white."""
    boxes, labels = out_t["boxes"], out_t["labels"]
    for k in sorted(set(labels.tolist())):
        img, t = run_only(k)
        assert torch.equal(t["boxes"], boxes), "the same random state gives the same boxes"
        mask = img[..., 0] >= 128
        grown = np.zeros_like(mask)
        for x1, y1, x2, y2 in boxes[labels == k].tolist():
            grown[
                max(0, int(np.floor(y1 - 1))) : int(np.ceil(y2 + 1)),
                max(0, int(np.floor(x1 - 1))) : int(np.ceil(x2 + 1)),
            ] = True
            if min(x2 - x1, y2 - y1) >= 3:  # thinner boxes: less than the interpolation filter
                inner = mask[int(np.ceil(y1 + 1)) : int(np.floor(y2 - 1)), int(np.ceil(x1 + 1)) : int(np.floor(x2 - 1))]
                assert inner.all(), f"box {k} {[x1, y1, x2, y2]}: the inside is not the box's"
        assert not (mask & ~grown).any(), f"box {k}: pixels outside its box grown by one pixel"


def _areas(scene: dict, scale: tuple[float, float] = (1.0, 1.0)) -> dict[int, float]:
    return {k: (b[2] - b[0]) * scale[0] * (b[3] - b[1]) * scale[1] for b, k in zip(scene["boxes"], scene["ids"])}


STATES = range(40)


# ------------------------------------------------------------------------------------------ exact ops
@pytest.mark.parametrize(
    "make",
    [
        lambda: RandomVerticalFlip(p=1.0),
        lambda: RandomVerticalFlip(p=0.5),
        lambda: RandomHorizontalFlip(p=0.5),
        lambda: RandomRotate90(),
        lambda: RandomRotate90(p=0.7, ks=(1, 3)),
        lambda: RandomExpand(p=0.8, ratio=(1.0, 3.0), fill=BLACK),
    ],
    ids=["vflip", "vflip_half", "hflip", "rot90", "rot90_odd", "expand"],
)
def test_geometric_ops_move_boxes_with_their_pixels(make):
    op = make()
    rng = np.random.default_rng(0)
    changed = 0
    for state in STATES:
        scene = _scene(rng)
        img, t = _run(op, scene, state)
        _check_exact(img, t, scene["ids"])
        assert len(t["boxes"]) == len(scene["boxes"]), "these ops never drop a box"
        assert t["orig_size"] == (scene["h"], scene["w"])
        changed += not np.array_equal(img, _paint(scene)) or img.shape != (scene["h"], scene["w"], 3)
    assert changed >= 10, "the op should act in many random states"


def test_rot90_known_answers():
    """One quarter turn counter-clockwise of a 10 (w) x 4 (h) image: x' = y, y' = 10 - x."""
    scene = {"h": 4, "w": 10, "boxes": [[1, 0, 3, 2]], "ids": [0]}
    for k, want, size in [(1, [0, 7, 2, 9], (10, 4)), (2, [7, 2, 9, 4], (4, 10)), (3, [2, 1, 4, 3], (10, 4))]:
        img, t = RandomRotate90(ks=(k,))(_paint(scene), _target(scene))
        assert t["boxes"].tolist() == [want] and t["size"] == size
        assert np.array_equal(img, np.rot90(_paint(scene), k))


@pytest.mark.parametrize("min_visible", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("min_ious", [(), (0.1, 0.3, 0.5)])
def test_random_crop_keeps_boxes_exact_and_applies_the_visible_area_rule(min_visible, min_ious):
    op = RandomIoUCrop(p=0.9, min_scale=0.3, max_scale=1.0, min_ious=min_ious, min_visible=min_visible)
    rng = np.random.default_rng(1)
    cropped = 0
    for state in STATES:
        scene = _scene(rng)
        img, t = _run(op, scene, state)
        _check_exact(img, t, scene["ids"], _areas(scene), min_visible)
        if img.shape[:2] != (scene["h"], scene["w"]):
            cropped += 1
            if scene["boxes"]:
                assert len(t["boxes"]) >= 1, "an accepted crop keeps some box"
    assert cropped >= 10


def test_lsj_boxes_within_one_pixel():
    rng = np.random.default_rng(2)
    for state in range(12):
        op = LargeScaleJitter(size=48, scale=(0.3, 2.0), fill=BLACK)
        scene = _scene(rng, h=int(rng.integers(30, 64)), w=int(rng.integers(30, 64)))
        img, t = _run(op, scene, state)
        assert img.shape == (48, 48, 3) and t["size"] == (48, 48)
        _check_within_one_pixel(lambda k: _run(op, scene, state, only=k), t)


def test_lsj_without_interpolation_is_an_exact_crop_or_pad():
    """``size * s`` equal to the image's longer side: no resize, only the random crop and the padding."""
    rng = np.random.default_rng(3)
    for state in STATES:
        h, w = (60, int(rng.integers(20, 61))) if state % 2 else (int(rng.integers(20, 61)), 60)
        scene = _scene(rng, h=h, w=w)
        img, t = _run(LargeScaleJitter(size=40, scale=(1.5, 1.5), fill=BLACK, min_visible=0.5), scene, state)
        assert img.shape == (40, 40, 3)
        _check_exact(img, t, scene["ids"], _areas(scene), 0.5)


# ------------------------------------------------------------------------------------------ mosaic
class _Source:
    """Dataset stand-in for Mosaic: item j is scene j painted (all colours, or box ``only`` white)."""

    def __init__(self, scenes: list[dict]) -> None:
        self.scenes, self.only = scenes, None

    def __getitem__(self, j: int):
        return _paint(self.scenes[j], self.only), _target(self.scenes[j])


def test_mosaic_tiles_move_boxes_exactly():
    """Tiles whose longer side is the mosaic size are not resized: exact."""
    rng = np.random.default_rng(4)
    scenes = [_scene(rng, 100 * j, h=48 if j % 2 else int(rng.integers(20, 48)), w=48) for j in range(6)]
    all_ids = [k for s in scenes for k in s["ids"]]
    op = Mosaic(size=48, p=1.0, center=(0.2, 0.8), fill=BLACK)
    op.bind(_Source(scenes), len(scenes))
    for state in STATES:
        img, t = _run(op, scenes[state % 6], state)
        assert img.shape == (48, 48, 3) and t["size"] == (48, 48)
        _check_exact(img, t, all_ids)
        assert t["orig_size"] == (scenes[state % 6]["h"], 48)


def test_mosaic_with_resized_tiles_within_one_pixel():
    rng = np.random.default_rng(5)
    scenes = [_scene(rng, 100 * j, h=24, w=int(rng.integers(12, 25))) for j in range(4)]
    src = _Source(scenes)
    op = Mosaic(size=48, p=1.0, fill=BLACK)
    op.bind(src, len(scenes))
    for state in range(8):
        img, t = _run(op, scenes[0], state)
        assert len(t["boxes"]) > 0

        def run_only(k, state=state):
            src.only = k
            try:
                return _run(op, scenes[0], state, only=k)
            finally:
                src.only = None

        _check_within_one_pixel(run_only, t)


def test_unbound_mosaic_says_what_to_do():
    scene = _scene(np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="bind_mosaic"):
        Mosaic(size=32, p=1.0)(_paint(scene), _target(scene))


# ------------------------------------------------------------------------------------------ photometric
def test_photometric_changes_pixels_not_boxes():
    op = PhotometricDistortion(p=1.0)
    rng = np.random.default_rng(6)
    changed = 0
    for state in STATES:
        scene = _scene(rng)
        src = _paint(scene)
        img, t = _run(op, scene, state)
        assert img.dtype == np.uint8 and img.shape == src.shape
        assert torch.equal(t["boxes"], _target(scene)["boxes"]) and torch.equal(t["labels"], _target(scene)["labels"])
        changed += not np.array_equal(img, src)
    assert changed >= 30  # each of 4 parts with probability 1/2: all off in 1/16 of the states
    img, _ = _run(PhotometricDistortion(p=0.0), scene, 0)
    assert np.array_equal(img, _paint(scene))


def test_photometric_known_answers():
    grey = np.full((8, 8, 3), 100, dtype=np.uint8)
    t = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64), "size": (8, 8)}
    deltas = set()
    for state in range(30):
        torch.manual_seed(state)
        img, _ = PhotometricDistortion(p=1.0, brightness=20, contrast=(1, 1), saturation=(1, 1), hue=0)(grey, t)
        d = img.astype(int) - 100
        assert (d == d[0, 0, 0]).all() and abs(d[0, 0, 0]) <= 20  # one added constant
        deltas.add(int(d[0, 0, 0]))
        # grey stays grey under contrast (uniform image), saturation and hue (the grey axis)
        torch.manual_seed(state)
        img, _ = PhotometricDistortion(p=1.0, brightness=0, contrast=(0.2, 3), saturation=(0, 3), hue=180)(grey, t)
        assert np.abs(img.astype(int) - 100).max() <= 1
    assert len(deltas) > 5
    sat = np.zeros((4, 4, 3), dtype=np.uint8)
    sat[..., 0] = 200  # pure red; saturation 0 gives its grey 0.299 * 200 = 59.8
    torch.manual_seed(0)
    for _ in range(20):
        img, _ = PhotometricDistortion(p=1.0, brightness=0, contrast=(1, 1), saturation=(0, 0), hue=0)(sat, t)
        if not np.array_equal(img, sat):
            assert (img == 60).all()
            break
    else:
        raise AssertionError("saturation never applied")


def test_ops_reject_float_images():
    with pytest.raises(TypeError, match="uint8 numpy image"):
        RandomVerticalFlip(p=1.0)(torch.zeros(3, 4, 4), {"boxes": torch.zeros((0, 4))})


# ------------------------------------------------------------------------------------------ visible-area rule
def test_fit_boxes_visible_area_rule_by_hand():
    t = {
        "boxes": torch.zeros((5, 4)),
        "labels": torch.tensor([10, 11, 12, 13, 14]),
        "orig_size": (99, 99),
        "size": (99, 99),
    }
    moved = torch.tensor(
        [
            [-5.0, 0.0, 5.0, 10.0],  # half visible (50 of 100)
            [0.0, -7.0, 10.0, 3.0],  # 30 % visible
            [12.0, 0.0, 20.0, 4.0],  # outside (image is 10 wide)
            [2.0, 2.0, 2.0, 6.0],  # zero width
            [1.0, 1.0, 9.0, 9.0],  # inside
        ],
        dtype=torch.float64,
    )
    out = fit_boxes(t, moved, 10, 10, min_visible=0.5)
    assert out["labels"].tolist() == [10, 14]
    assert out["boxes"].tolist() == [[0, 0, 5, 10], [1, 1, 9, 9]]
    assert out["size"] == (10, 10) and out["orig_size"] == (99, 99)
    assert fit_boxes(t, moved, 10, 10, min_visible=0.3)["labels"].tolist() == [10, 11, 14]
    assert fit_boxes(t, moved, 10, 10, min_visible=0.51)["labels"].tolist() == [14]
    assert fit_boxes(t, moved, 10, 10, min_visible=0.0)["labels"].tolist() == [10, 11, 14]
    assert t["labels"].tolist() == [10, 11, 12, 13, 14], "the input target is not modified"


def test_crop_by_hand_drops_boxes_below_min_visible():
    """10 x 10 crops of a 20 x 20 image: box 0 (2..6) and box 1 (8..14 x 0..4) are kept or dropped by
    how much of them each crop shows."""
    scene = {"h": 20, "w": 20, "boxes": [[2, 2, 6, 6], [8, 0, 14, 4]], "ids": [0, 1]}
    seen = set()
    for state in range(80):
        img, t = _run(RandomIoUCrop(p=1.0, min_scale=0.5, max_scale=0.5, min_visible=0.5), scene, state)
        assert img.shape == (10, 10, 3)
        _check_exact(img, t, [0, 1], _areas(scene), 0.5)
        seen.add(tuple(t["labels"].tolist()))
    assert {(0,), (1,), (0, 1)} <= seen


# ------------------------------------------------------------------------------------------ config, build, seeding
def test_config_accepts_augment_lists_from_overrides_and_yaml(tmp_path):
    cfg = load_config(None, ["data.augment=[{name: vflip, p: 0.5}, {name: rot90, k: [1, 3]}]"])
    assert cfg.data.augment == [{"name": "vflip", "p": 0.5}, {"name": "rot90", "k": [1, 3]}]
    assert load_config(None).data.augment == []
    f = tmp_path / "cfg.yaml"
    f.write_text(
        "data:\n  augment:\n    - {name: photometric, brightness: 20}\n    - name: random_crop\n"
        "      min_ious: [0.1, 0.5]\n      min_visible: 0.3\n    - {name: lsj, size: 64, scale: [0.5, 1.5]}\n"
    )
    cfg = load_config(str(f))
    assert [a["name"] for a in cfg.data.augment] == ["photometric", "random_crop", "lsj"]
    ops = build_augmentations(cfg.data.augment, size=32)
    assert isinstance(ops[1], RandomIoUCrop) and ops[1].min_ious == (0.1, 0.5) and ops[1].min_visible == 0.3
    assert isinstance(ops[2], LargeScaleJitter) and ops[2].size == 64 and ops[2].scale == (0.5, 1.5)
    assert build_augmentations([{"name": "mosaic"}], size=96)[0].size == 96  # size null: the largest min_size
    save_config(cfg, tmp_path / "saved.yaml")  # what a run writes next to its checkpoints reads back
    assert load_config(str(tmp_path / "saved.yaml")).data.augment == cfg.data.augment


@pytest.mark.parametrize(
    "entry, key, words",
    [
        ("{name: vfilp}", "data.augment[1].name", ["vflip", "photometric", "mosaic"]),
        ("{p: 0.5}", "data.augment[1].name", ["missing"]),
        ("{name: vflip, prob: 0.5}", "data.augment[1].prob", ["valid: p"]),
        ("{name: vflip, p: 1.5}", "data.augment[1].p", ["[0, 1]", "1.5"]),
        ("{name: photometric, contrast: 2}", "data.augment[1].contrast", ["[lo, hi]"]),
        ("{name: expand, ratio: [0.5, 2]}", "data.augment[1].ratio", [">= 1"]),
        ("{name: rot90, k: [1, 5]}", "data.augment[1].k", ["quarter turns"]),
        ("{name: lsj, size: 0}", "data.augment[1].size", [">= 1"]),
        ("{name: expand, fill: [1, 2]}", "data.augment[1].fill", ["R, G, B"]),
        ("{name: random_crop, min_scale: 0.8, max_scale: 0.5}", "data.augment[1].min_scale", ["max_scale"]),
        ("vflip", "data.augment[1]", ["mapping"]),
    ],
)
def test_config_errors_name_the_entry_and_the_valid_values(entry, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"data.augment=[{{name: hflip}}, {entry}]"])
    assert e.value.key == key and str(e.value).startswith(key)
    for w in words:
        assert w in str(e.value)


def test_no_augment_leaves_the_pipeline_as_it_was():
    for resize in ("pillow", "tensor"):
        a = build_transforms(True, (32, 40), 64, 0.5, resize=resize)
        b = build_transforms(True, (32, 40), 64, 0.5, resize=resize, augment=[])
        assert repr(a) == repr(b) and len(a.transforms) == 3
    c = build_transforms(True, (32, 40), 64, 0.5, resize="tensor", augment=[{"name": "vflip"}])
    assert [type(t).__name__ for t in c.transforms] == [
        "RandomVerticalFlip",
        "ToTensor",
        "RandomHorizontalFlip",
        "ResizeShortestSide",
    ]
    assert len(build_transforms(False, 32, 64, augment=[{"name": "vflip"}]).transforms) == 2  # training only


def _augmented_dataset(tmp_path, augment):
    from train_factory import make_coco_split, tiny_config

    from retinanet.config import config_from_dict
    from retinanet.data.build import build_dataset

    data = make_coco_split(tmp_path / "data")
    cfg = config_from_dict(tiny_config(data, tmp_path / "out", data={"augment": augment}))
    return cfg, build_dataset(cfg, train=True)


ALL_OPS = [
    {"name": "photometric", "p": 0.8},
    {"name": "mosaic", "p": 0.7, "size": 64},
    {"name": "random_crop", "p": 0.7, "min_ious": [0.1, 0.3]},
    {"name": "expand", "p": 0.5, "ratio": [1, 2]},
    {"name": "rot90"},
    {"name": "vflip"},
    {"name": "lsj", "size": 64, "scale": [0.5, 1.5]},
]


def test_same_seed_epoch_index_same_sample(tmp_path):
    from retinanet.data.sampler import SeededDataset

    _, ds = _augmented_dataset(tmp_path, ALL_OPS)
    seeded = SeededDataset(ds, seed=3)
    first = {key: seeded[key] for key in [(0, 0), (1, 0), (3, 2), (5, 1)]}
    torch.rand(7), np.random.rand(3)  # unrelated draws in between change nothing
    for key in [(5, 1), (3, 2), (0, 0), (1, 0)]:  # another order, as after a resume
        img, t = seeded[key]
        torch.testing.assert_close(img, first[key][0], rtol=0, atol=0)
        torch.testing.assert_close(t["boxes"], first[key][1]["boxes"], rtol=0, atol=0)
        assert torch.equal(t["labels"], first[key][1]["labels"])
    other = [seeded[(0, e)][0] for e in range(1, 5)]
    assert any(o.shape != first[(0, 0)][0].shape or not torch.equal(o, first[(0, 0)][0]) for o in other)
    img, t = first[(3, 2)]
    assert img.dtype == torch.float32 and img.shape[0] == 3 and t["size"] == tuple(img.shape[1:])
    assert t["orig_size"] == (48, 64) or t["orig_size"] == (64, 48)


def test_data_show_writes_pictures(tmp_path):
    import yaml
    from PIL import Image
    from train_factory import make_coco_split, tiny_config

    from retinanet.cli import main

    cfg = tiny_config(make_coco_split(tmp_path / "data"), tmp_path / "out", data={"augment": ALL_OPS[:3]})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "show"
    assert main(["data", "show", str(path), "--out", str(out), "--num", "5", "data.flip_prob=0"]) == 0
    pngs = sorted(out.glob("augment_0*.png"))
    assert len(pngs) == 5 and (out / "augment_sheet.png").is_file()
    assert all(Image.open(p).size[0] > 0 for p in pngs)
    assert main(["data", "show", str(path), "--out", str(out), "data.augment=[{name: nope}]"]) == 2


@pytest.mark.slow
def test_training_through_every_augmentation_resumes_bit_exactly(tmp_path):
    """A run stopped mid-epoch and resumed (with a DataLoader worker) ends with the weights of the
    uninterrupted run: augmentation, mosaic partners included, is a function of (seed, epoch, index)."""
    from train_factory import assert_same_tensors, make_coco_split, tiny_config

    from retinanet.config import config_from_dict
    from retinanet.training.trainer import Trainer
    from retinanet.utils.serialization import load_file

    data = {k: v for k, v in make_coco_split(tmp_path / "data").items() if not k.startswith("val_")}

    def cfg(out, workers):
        d = tiny_config(
            data,
            out,
            solver={"max_iter": 5},
            train={"checkpoint_period": 2},
            data={"augment": ALL_OPS, "num_workers": workers},
        )
        return config_from_dict(d)

    Trainer(cfg(tmp_path / "ref", 0), progress=False).train()

    def stop(trainer):
        if trainer.iteration == 3:
            trainer.request_stop()

    out = tmp_path / "run"
    assert Trainer(cfg(out, 1), progress=False, hooks=[stop]).train().stopped_early
    Trainer(cfg(out, 1), resume=True, progress=False).train()
    ref, got = load_file(tmp_path / "ref" / "model_final.pth"), load_file(out / "model_final.pth")
    assert got["iteration"] == ref["iteration"] == 5
    assert_same_tensors(got["model"], ref["model"], "model ")
