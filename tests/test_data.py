"""Data layer: COCO/VOC readers, transforms (boxes exact, mapped back by the model's
``rescale_boxes``), collate and the model's normalize-and-pad input step, loader reproducibility."""

from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import pytest
import torch
from data_factory import COCO_EXPECTED, H, W, coco_dict, make_coco, make_voc, pattern_image
from PIL import Image

from retinanet.config import Config
from retinanet.data import (
    VOC_CLASSES,
    CocoDetection,
    Compose,
    RandomHorizontalFlip,
    ResizeShortestSide,
    ToTensor,
    VOCDetection,
    build_transforms,
    collate,
    get_output_size,
)
from retinanet.modeling.postprocess import rescale_boxes
from retinanet.modeling.preprocess import normalize_and_pad
from retinanet.modeling.retinanet import RetinaNet

torch.set_num_threads(1)


@pytest.fixture()
def coco(tmp_path):
    image_dir, ann = make_coco(tmp_path)
    return CocoDetection(image_dir, ann)


# ------------------------------------------------------------------------------------------ COCO


def test_coco_category_mapping_and_back(coco):
    assert coco.class_names == ["cat", "dog", "bird"]  # sorted by category id 3, 7, 11
    assert coco.label_to_category_id == [3, 7, 11]
    assert coco.category_id_to_label == {3: 0, 7: 1, 11: 2}
    for label, cid in enumerate(coco.label_to_category_id):
        assert coco.category_id_to_label[cid] == label


def test_coco_items_match_annotations(coco, tmp_path):
    assert len(coco) == 3
    for i, (boxes, labels) in COCO_EXPECTED.items():
        image, target = coco[i]
        assert image.dtype == torch.float32 and image.shape == (3, H, W)
        assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (len(boxes), 4)
        assert target["labels"].dtype == torch.int64
        assert target["boxes"].tolist() == boxes
        assert target["labels"].tolist() == labels
        assert target["orig_size"] == (H, W) and target["size"] == (H, W)
    # the image is the file's pixels / 255, channels first
    _, t0 = coco[0]
    assert t0["image_id"] == 1
    img0, _ = coco[0]
    want = torch.from_numpy(np.array(Image.open(tmp_path / "images" / "a.png"))).permute(2, 0, 1) / 255.0
    torch.testing.assert_close(img0, want.float(), rtol=0, atol=0)


def test_crowd_excluded_from_targets_but_in_coco_gt(coco):
    _, target = coco[0]
    assert [30.0, 20.0, 40.0, 30.0] not in target["boxes"].tolist()
    gt = coco.coco_gt()
    crowd = [a for a in gt["annotations"] if a["iscrowd"]]
    assert [(a["id"], a["bbox"], a["category_id"]) for a in crowd] == [(12, [30.0, 20.0, 10.0, 10.0], 3)]
    assert coco.stats["crowd"] == 1 and coco.stats["boxes"] == 3


def test_empty_image_kept(coco):
    image, target = coco[2]
    assert image.shape == (3, H, W)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"] == 5 and coco.stats["images_without_boxes"] == 1


def test_coco_gt_is_original_and_fills_area(coco):
    gt = coco.coco_gt()
    assert [im["id"] for im in gt["images"]] == [1, 2, 5]
    assert all((im["height"], im["width"]) == (H, W) for im in gt["images"])
    by_id = {a["id"]: a for a in gt["annotations"]}
    assert sorted(by_id) == [10, 11, 12, 20]
    assert by_id[10]["area"] == 300 and by_id[11]["area"] == 64 * 48  # given / filled as w * h
    assert by_id[20]["bbox"] == [5.5, 6.5, 10.0, 12.0] and by_id[20]["iscrowd"] == 0
    assert [c["id"] for c in gt["categories"]] == [3, 7, 11]


def test_coco_gt_evaluates_targets_mapped_back_to_ap_1(coco):
    """Detections built from the training targets, mapped label -> category id, score AP 1.0."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = coco.coco_api()
    dets = []
    for i in range(len(coco)):
        _, t = coco[i]
        for (x1, y1, x2, y2), label in zip(t["boxes"].tolist(), t["labels"].tolist()):
            dets.append(
                {
                    "image_id": t["image_id"],
                    "category_id": coco.label_to_category_id[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": 0.9,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    # a wrong mapping (labels used as category ids) must not score 1.0
    bad = [dict(d, category_id=coco.category_id_to_label[d["category_id"]] + 100) for d in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        ev2 = COCOeval(coco_gt, coco_gt.loadRes(bad), "bbox")
        ev2.evaluate()
        ev2.accumulate()
        ev2.summarize()
    assert ev2.stats[0] <= 0.0


def test_coco_class_names_select_and_order(tmp_path, caplog):
    image_dir, ann = make_coco(tmp_path)
    ds = CocoDetection(image_dir, ann, class_names=["bird", "cat"])
    assert ds.label_to_category_id == [11, 3] and ds.category_id_to_label == {11: 0, 3: 1}
    _, t = ds[0]
    assert t["boxes"].tolist() == [[10.0, 5.0, 30.0, 20.0]] and t["labels"].tolist() == [1]  # dog ignored
    assert ds.stats["ignored_category"] == 1
    gt = ds.coco_gt()
    assert sorted(c["id"] for c in gt["categories"]) == [3, 11]
    assert 11 not in {a["id"] for a in gt["annotations"]}


def test_image_info(coco, tmp_path):
    info = coco.image_info(1)
    assert info.path == str(tmp_path / "images" / "b.png")
    assert (info.height, info.width, info.image_id, info.file_name) == (H, W, 2, "b.png")
    assert coco.image_info(-1).image_id == 5
    with pytest.raises(IndexError):
        coco.image_info(3)


def test_coco_missing_size_read_from_file(tmp_path):
    data = coco_dict()
    for im in data["images"]:
        del im["width"], im["height"]
    image_dir, ann = make_coco(tmp_path, data)
    ds = CocoDetection(image_dir, ann)
    assert ds.image_info(0)[1:3] == (H, W)
    assert ds.coco_gt()["images"][0]["width"] == W


# ------------------------------------------------------------------------------------------ VOC


def test_voc_one_based_conversion_and_difficult(tmp_path):
    root = make_voc(tmp_path)
    ds = VOCDetection(root, "train")
    assert len(ds) == 3 and ds.class_names == list(VOC_CLASSES)
    assert ds.label_to_category_id == list(range(1, 21))
    dog, person, cat = VOC_CLASSES.index("dog"), VOC_CLASSES.index("person"), VOC_CLASSES.index("cat")
    _, t = ds[0]
    assert t["boxes"].tolist() == [[10.0, 5.0, 30.0, 20.0], [0.0, 0.0, 64.0, 48.0]]  # xmin-1, ymin-1, xmax, ymax
    assert t["labels"].tolist() == [dog, person]
    _, t = ds[1]
    assert t["boxes"].tolist() == [[4.0, 4.0, 10.0, 10.0]] and t["labels"].tolist() == [cat]  # difficult excluded
    _, t = ds[2]
    assert t["boxes"].shape == (0, 4)
    assert ds.stats["difficult"] == 1
    gt = ds.coco_gt()
    diff = [a for a in gt["annotations"] if a["iscrowd"]]
    assert [(a["bbox"], a["category_id"]) for a in diff] == [([20.0, 10.0, 20.0, 20.0], cat + 1)]
    assert len(gt["annotations"]) == 4 and gt["categories"][0] == {"id": 1, "name": "aeroplane"}

    ds2 = VOCDetection(root, "train", use_difficult=True)
    _, t = ds2[1]
    assert t["boxes"].tolist() == [[20.0, 10.0, 40.0, 30.0], [4.0, 4.0, 10.0, 10.0]]
    assert sum(a["iscrowd"] for a in ds2.coco_gt()["annotations"]) == 1  # still ignored in evaluation

    val = VOCDetection(root, "val", class_names=VOC_CLASSES)
    assert len(val) == 1 and val.image_info(0).file_name == "000001.jpg"


def test_voc_custom_class_list(tmp_path):
    root = make_voc(tmp_path)
    ds = VOCDetection(root, "train", class_names=["person", "dog", "cat"])
    assert ds.label_to_category_id == [1, 2, 3]
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 0]


# ------------------------------------------------------------------------------------------ transforms


def test_output_size_rule():
    assert get_output_size(480, 640, 500, 1333) == (500, 667)  # 666.67 rounds up
    assert get_output_size(333, 500, 800, 1333) == (800, 1201)  # 1201.2
    assert get_output_size(48, 64, 800, 1000) == (750, 1000)  # capped by max_size
    assert get_output_size(2, 3, 3, None) == (3, 5)  # 4.5 rounds half up
    assert get_output_size(64, 48, 96, 1333) == (128, 96)  # portrait


def test_resize_boxes_exact_and_map_back():
    img = pattern_image()
    boxes = torch.tensor([[10.0, 5.0, 30.0, 20.0], [0.0, 0.0, 64.0, 48.0]])
    target = {"boxes": boxes, "labels": torch.tensor([0, 1]), "orig_size": (H, W), "size": (H, W)}
    out, t = ResizeShortestSide(800, 1000)(img, target)
    assert out.shape == (750, 1000, 3) and t["size"] == (750, 1000)
    # 1000 / 64 = 750 / 48 = 15.625
    assert t["boxes"].tolist() == [[156.25, 78.125, 468.75, 312.5], [0.0, 0.0, 1000.0, 750.0]]
    assert rescale_boxes(boxes, H, W, *t["size"]).tolist() == t["boxes"].tolist()  # the same factor, 15.625
    assert target["boxes"] is boxes and target["size"] == (H, W)  # input target untouched
    torch.testing.assert_close(rescale_boxes(t["boxes"], *t["size"], *t["orig_size"]), boxes)

    # unequal axis factors from rounding: 480x640 -> 500x667
    t2 = {"boxes": torch.tensor([[64.0, 48.0, 640.0, 480.0]]), "orig_size": (480, 640), "size": (480, 640)}
    _, r = ResizeShortestSide(500, 1333)(np.zeros((480, 640, 3), np.uint8), t2)
    torch.testing.assert_close(r["boxes"], torch.tensor([[64 * 667 / 640, 48 * 500 / 480, 667.0, 500.0]]))
    torch.testing.assert_close(rescale_boxes(r["boxes"], *r["size"], *r["orig_size"]), t2["boxes"])


def test_map_back_clips_to_original():
    out = rescale_boxes(torch.tensor([[-10.0, 20.0, 140.0, 100.0]]), 96, 128, 48, 64)
    assert out.tolist() == [[0.0, 10.0, 64.0, 48.0]]


def test_flip_boxes_and_pixels_exact():
    img = pattern_image()
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0]]), "orig_size": (H, W), "size": (H, W)}
    out, t = RandomHorizontalFlip(p=1.0)(img, target)
    assert t["boxes"].tolist() == [[34.0, 5.0, 54.0, 20.0]]
    assert "flipped" not in t  # training-only augmentation: nothing downstream undoes it
    np.testing.assert_array_equal(out, img[:, ::-1])
    timg = torch.from_numpy(img).permute(2, 0, 1).float()
    tout, t_t = RandomHorizontalFlip(p=1.0)(timg, target)
    torch.testing.assert_close(tout, timg.flip(-1))
    assert t_t["boxes"].tolist() == t["boxes"].tolist()
    # flip twice = identity, pixels and boxes
    back, tt = RandomHorizontalFlip(p=1.0)(out, t)
    assert tt["boxes"].tolist() == [[10.0, 5.0, 30.0, 20.0]]
    np.testing.assert_array_equal(back, img)
    # p = 0 never flips
    out0, t0 = RandomHorizontalFlip(p=0.0)(img, target)
    assert t0["boxes"].tolist() == [[10.0, 5.0, 30.0, 20.0]]
    np.testing.assert_array_equal(out0, img)


def test_resize_then_flip_maps_back():
    """Flipping back and :func:`rescale_boxes` (the model's mapping to the original size) invert
    resize + flip exactly."""
    img = pattern_image()
    boxes = torch.tensor([[10.0, 5.0, 30.0, 20.0]])
    tf = Compose([ResizeShortestSide(96, 1333), RandomHorizontalFlip(1.0), ToTensor()])
    image, t = tf(img, {"boxes": boxes, "orig_size": (H, W), "size": (H, W)})
    assert image.shape == (3, 96, 128)
    assert t["boxes"].tolist() == [[128 - 60.0, 10.0, 128 - 20.0, 40.0]]
    _, unflipped = RandomHorizontalFlip(1.0)(image, t)
    torch.testing.assert_close(rescale_boxes(unflipped["boxes"], *t["size"], *t["orig_size"]), boxes)


def test_resize_numpy_and_tensor_paths_agree():
    """Pillow (uint8) and torch (float) resizes agree to ~1/255 even on noise, which needs both to
    antialias when downscaling (plain bilinear sampling of noise differs by far more)."""
    img = pattern_image(seed=3)
    for short in (24, 96):  # down and up
        a, _ = ResizeShortestSide(short, None)(img, {})
        b, _ = ResizeShortestSide(short, None)(torch.from_numpy(img).permute(2, 0, 1).float() / 255, {})
        diff = (torch.from_numpy(a).permute(2, 0, 1).float() / 255 - b).abs()
        assert a.shape[:2] == tuple(b.shape[1:]) == (short, short * 4 // 3)
        assert float(diff.max()) < 0.01, (short, float(diff.max()))


def test_multiscale_choice_seeded():
    def sizes(seed):
        r = ResizeShortestSide((32, 40, 48), 1333, seed=seed)
        return [r(pattern_image(), {})[1]["size"][0] for _ in range(30)]

    assert sizes(0) == sizes(0)
    assert set(sizes(0)) == {32, 40, 48}
    assert sizes(0) != sizes(1)


def test_build_transforms():
    tr = build_transforms(True, (40, 48), 100, 0.5)
    image, t = tr(pattern_image(), {"boxes": torch.zeros(0, 4), "orig_size": (H, W), "size": (H, W)})
    assert image.dtype == torch.float32 and image.shape[1] in (40, 48) and float(image.max()) <= 1.0
    ev = build_transforms(False, 24, 100)
    image, t = ev(pattern_image(), {"orig_size": (H, W)})
    assert image.shape == (3, 24, 32) and t["size"] == (24, 32)  # half the 48 x 64 file
    with pytest.raises(ValueError, match="one test size"):
        build_transforms(False, (24, 32), 100)
    with pytest.raises(ValueError, match="min_size"):
        ResizeShortestSide(0)


def test_dataset_with_transforms(tmp_path):
    image_dir, ann = make_coco(tmp_path)
    ds = CocoDetection(image_dir, ann, transforms=build_transforms(False, 96, 1333))
    image, t = ds[0]
    assert image.shape == (3, 96, 128) and t["orig_size"] == (H, W)
    assert t["boxes"].tolist() == [[20.0, 10.0, 60.0, 40.0], [0.0, 0.0, 128.0, 96.0]]


# ------------------------------------------------------------------------------------------ collate


def test_collate_keeps_images_and_targets():
    a = torch.rand(3, 48, 64)
    b = torch.randint(0, 256, (3, 130, 30), dtype=torch.uint8)
    batch = collate([(a, {"k": 0}), (b, {"k": 1})])
    assert len(batch.images) == 2 and batch.images[0] is a and batch.images[1] is b  # no copy, no padding
    assert [t["k"] for t in batch.targets] == [0, 1]
    images, targets = batch  # unpacks like a tuple
    assert images is batch.images and targets is batch.targets
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    with pytest.raises(TypeError, match="item 0"):
        collate([(torch.rand(1, 4, 4), {})])


# ------------------------------------------------------------------------------------------ model input


def _mean_std() -> tuple[torch.Tensor, torch.Tensor]:
    m = Config().model
    return torch.tensor(m.pixel_mean).view(3, 1, 1), torch.tensor(m.pixel_std).view(3, 1, 1)


@pytest.fixture(scope="module")
def tiny_model() -> RetinaNet:
    cfg = Config()
    cfg.model.backbone.name = "resnet18"
    cfg.model.backbone.weights = None
    assert cfg.data.size_divisibility == 128
    return RetinaNet.from_config(cfg).eval()


def test_model_preprocess_shapes_normalization_padding(tiny_model):
    """``RetinaNet.preprocess``: ImageNet mean/std from the config, zero padding (exactly 0 after
    normalization) to multiples of ``size_divisibility``, float and uint8 input."""
    a = torch.rand(3, 48, 64)
    b = torch.rand(3, 130, 30)
    x, sizes = tiny_model.preprocess([a, b])
    assert x.shape == (2, 3, 256, 128) and x.dtype == torch.float32
    assert sizes == [(48, 64), (130, 30)]
    mean, std = _mean_std()
    torch.testing.assert_close(tiny_model.pixel_mean, mean)
    torch.testing.assert_close(tiny_model.pixel_std, std)
    torch.testing.assert_close(x[0, :, :48, :64], (a - mean) / std)
    torch.testing.assert_close(x[1, :, :130, :30], (b - mean) / std)
    assert x[0, :, 48:].abs().sum() == 0 and x[0, :, :, 64:].abs().sum() == 0
    assert x[1, :, 130:].abs().sum() == 0 and x[1, :, :, 30:].abs().sum() == 0
    # hand values: a mid-grey pixel
    g = normalize_and_pad(torch.full((1, 3, 2, 2), 0.5), None, mean, std, 1)
    assert g.shape == (1, 3, 2, 2)
    torch.testing.assert_close(
        g[0, :, 0, 0], torch.tensor([(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225])
    )
    # exact multiples stay as they are; uint8 images are scaled by 1/255
    u, usizes = tiny_model.preprocess([torch.full((3, 128, 256), 255, dtype=torch.uint8)])
    assert u.shape == (1, 3, 128, 256) and usizes == [(128, 256)]
    torch.testing.assert_close(u[0, :, 0, 0], (1 - mean.view(3)) / std.view(3))
    # uint8 images of different sizes: the same values as their float 0-1 copies, padding exactly 0
    ua = torch.full((3, 48, 64), 255, dtype=torch.uint8)
    ub = torch.full((3, 130, 30), 51, dtype=torch.uint8)
    xu, _ = tiny_model.preprocess([ua, ub])
    assert xu.shape == (2, 3, 256, 128)
    torch.testing.assert_close(xu, tiny_model.preprocess([ua.float() / 255, ub.float() / 255])[0])
    torch.testing.assert_close(xu[1, :, 0, 0], (0.2 - mean.view(3)) / std.view(3))
    assert xu[0, :, 48:].abs().sum() == 0 and xu[0, :, :, 64:].abs().sum() == 0
    assert xu[1, :, 130:].abs().sum() == 0 and xu[1, :, :, 30:].abs().sum() == 0


def test_normalize_and_pad_matches_model_preprocess(tiny_model):
    x = torch.rand(2, 3, 5, 7)
    mean, std = _mean_std()
    want = (x - mean) / std
    torch.testing.assert_close(normalize_and_pad(x, None, mean, std, 1), want)
    got, sizes = tiny_model.preprocess(x)  # one [B, 3, H, W] tensor: padded to 128 x 128
    assert got.shape == (2, 3, 128, 128) and sizes == [(5, 7), (5, 7)]
    torch.testing.assert_close(got[:, :, :5, :7], want)
    assert got[:, :, 5:].abs().sum() == 0 and got[:, :, :, 7:].abs().sum() == 0


# ------------------------------------------------------------------------------------------ loader


def test_datasets_pickle_for_spawned_workers(tmp_path):
    import pickle

    from retinanet.data.sampler import SeededDataset

    image_dir, ann = make_coco(tmp_path / "coco")
    coco = CocoDetection(image_dir, ann, transforms=build_transforms(True, (40, 48), 200, 0.5))
    voc = VOCDetection(make_voc(tmp_path / "voc"), "train")
    for ds in (coco, voc):
        copy = pickle.loads(pickle.dumps(SeededDataset(ds, seed=7)))
        assert len(copy) == len(ds) and copy.dataset.class_names == ds.class_names
        torch.testing.assert_close(copy[(0, 3)][0], SeededDataset(ds, seed=7)[(0, 3)][0])


def test_logging_quiet_for_clean_data(tmp_path, caplog):
    image_dir, ann = make_coco(tmp_path)
    with caplog.at_level(logging.WARNING, logger="retinanet.data"):
        CocoDetection(image_dir, ann)
    assert caplog.records == []


def test_batch_images_mixed_uint8_and_float_are_both_read_as_0_1():
    from retinanet.modeling.preprocess import batch_images

    u = torch.full((3, 4, 4), 255, dtype=torch.uint8)
    f = torch.full((3, 2, 2), 0.5)
    batch, sizes = batch_images([u, f])
    assert batch.dtype == torch.float32 and sizes.tolist() == [[4, 4], [2, 2]]
    assert torch.equal(batch[0], torch.ones(3, 4, 4))
    assert torch.equal(batch[1, :, :2, :2], f) and batch[1, :, 2:].abs().sum() == 0
