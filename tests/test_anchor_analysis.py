"""Tests for anchor coverage: retinanet.ops.anchor_coverage against brute force and the matcher, the dataset
analysis and its suggestion, ``retinanet analyze anchors``, and the warning at the start of training."""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
import pytest
import torch
from data_factory import coco_dict, make_coco, make_voc
from train_factory import make_coco_split, tiny_config

from retinanet.cli import main
from retinanet.config import config_from_dict, load_config
from retinanet.data.build import build_dataset
from retinanet.data.voc import VOCDetection
from retinanet.inference.anchor_analysis import analyze_anchors, format_report, warn_if_poor_anchor_coverage
from retinanet.ops import AnchorGenerator, Matcher
from retinanet.ops.anchor_coverage import anchor_coverage
from retinanet.training.trainer import Trainer

SIZES = [(128, 192), (256, 128)]  # padded inputs (Hp, Wp)


def _anchors(gen: AnchorGenerator, hw: tuple[int, int]) -> torch.Tensor:
    feats = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in (8, 16, 32, 64, 128)]
    return gen.flat(feats, input_size=hw)


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    which = torch.randint(len(SIZES), (n,), generator=g)
    hw = torch.tensor(SIZES, dtype=torch.float32)[which]
    w = torch.exp(torch.rand(n, generator=g) * math.log(120 / 2)) * 2
    h = w * torch.exp(torch.randn(n, generator=g) * 0.6)
    cx, cy = torch.rand(n, generator=g) * hw[:, 1], torch.rand(n, generator=g) * hw[:, 0]
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return boxes, torch.tensor(SIZES)[which]


def _brute_iou(box: np.ndarray, a: np.ndarray) -> np.ndarray:
    """IoU of one box with anchors [N, 4], written out in float64."""
    iw = np.clip(np.minimum(box[2], a[:, 2]) - np.maximum(box[0], a[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], a[:, 3]) - np.maximum(box[1], a[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) - inter
    return inter / union


GENERATORS = {
    "small": dict(sizes=(8, 16, 32, 64, 128)),
    "offset": dict(sizes=(12, 24, 48, 96, 192), offset=0.5, ratios=(0.4, 1.0, 3.0)),
    "torchvision": dict(sizes=(16, 32, 64, 128, 256), round_sizes=True, strides_from_input=True),
}


@pytest.mark.parametrize("name", list(GENERATORS))
def test_best_iou_and_counts_match_brute_force_and_the_matcher(name):
    gen = AnchorGenerator(**GENERATORS[name])
    boxes, sizes = _random_boxes(150, seed=1)
    cov = anchor_coverage(boxes, sizes, gen, fg_iou_threshold=0.5, allow_low_quality_matches=True)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    anchors = {hw: _anchors(gen, hw) for hw in SIZES}
    for i in range(len(boxes)):
        an = anchors[tuple(sizes[i].tolist())]
        iou = _brute_iou(boxes[i].double().numpy(), an.double().numpy())
        assert cov.best_iou[i].item() == pytest.approx(iou.max(), abs=1e-5)
        assert cov.num_fg[i].item() == int((iou >= 0.5).sum())
        # the box alone: the matcher's foreground anchors are the >= fg ones plus the low-quality ones
        assert cov.num_positive[i].item() == int((matcher.match(boxes[i : i + 1], an) >= 0).sum())
    assert cov.num_fg.sum() > 0 and cov.num_low_quality.sum() > 0  # both kinds occur
    off = anchor_coverage(boxes, sizes, gen, 0.5, allow_low_quality_matches=False)
    assert torch.equal(off.num_low_quality, torch.zeros_like(off.num_low_quality))
    assert torch.equal(off.num_fg, cov.num_fg)


def test_best_level_and_anchor_name_the_best_anchor():
    gen = AnchorGenerator(**GENERATORS["small"])
    boxes, sizes = _random_boxes(60, seed=2)
    cov = anchor_coverage(boxes, sizes, gen, count=False)
    a = gen.num_anchors
    for i in range(len(boxes)):
        hw = tuple(sizes[i].tolist())
        feats = [(math.ceil(hw[0] / s), math.ceil(hw[1] / s)) for s in (8, 16, 32, 64, 128)]
        level = gen(feats, input_size=hw)[int(cov.best_level[i])]
        shape = level.view(-1, a, 4)[:, int(cov.best_anchor[i])]
        iou = _brute_iou(boxes[i].double().numpy(), shape.double().numpy())
        assert iou.max() == pytest.approx(cov.best_iou[i].item(), abs=1e-5)


def test_a_box_equal_to_an_anchor_has_iou_one_and_a_tiny_box_none():
    gen = AnchorGenerator(**GENERATORS["offset"])
    hw = (128, 192)
    an = _anchors(gen, hw)
    k = 7 * gen.num_anchors + 4  # P3, position 7, anchor 4
    tiny = torch.tensor([[60.0, 60.0, 61.0, 61.0]])
    cov = anchor_coverage(torch.cat([an[k : k + 1], tiny]), torch.tensor([hw, hw]), gen, 0.5, True)
    assert cov.best_iou[0].item() == 1.0
    assert (cov.best_level[0].item(), cov.best_anchor[0].item()) == (0, 4)
    assert cov.num_fg[0].item() >= 1
    assert cov.best_iou[1].item() < 0.01 and cov.num_fg[1].item() == 0
    assert cov.num_low_quality[1].item() >= 1  # still gets its best anchor(s)


def _coco_cfg(tmp_path, data, **model):
    images, ann = make_coco(tmp_path, data, write_images=False)
    return config_from_dict(
        {
            "model": {"num_classes": 3, "anchors": {"sizes": [8, 16, 32, 64, 128]}, **model},
            "data": {"train_images": str(images), "train_annotations": str(ann), "min_size": [48, 64], "max_size": 96},
        }
    )


def test_tiny_box_is_listed_by_file_and_annotation_id(tmp_path):
    data = coco_dict()
    data["annotations"].append({"id": 77, "image_id": 2, "category_id": 3, "bbox": [30, 30, 1, 1]})
    report = analyze_anchors(_coco_cfg(tmp_path, data), suggest=False)
    hits = [u for u in report["unmatched"] if u["annotation_id"] == 77]
    assert [u["file_name"] for u in hits] == ["b.png", "b.png"]  # below fg at both min sizes
    assert sorted(u["min_size"] for u in hits) == [48, 64]
    assert all(u["best_iou"] < 0.05 for u in hits)
    assert report["boxes"] == 4 and report["box_evaluations"] == 8  # 3 boxes of make_coco + the tiny one
    assert report["overall"]["boxes"] == 8
    text = format_report(report)
    assert "b.png  annotation 77" in text and "allow_low_quality_matches still makes" in text


def test_cli_prints_the_summary_and_writes_json(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    images, ann = make_coco(tmp_path / "data", write_images=False)
    cfg.write_text(
        f"model: {{num_classes: 3}}\ndata: {{train_images: {images}, train_annotations: {ann}, min_size: [48]}}\n"
    )
    out = tmp_path / "anchors.json"
    assert main(["analyze", "anchors", str(cfg), "data.max_size=96", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "anchor coverage of the train set: 3 images, 3 boxes x 1 min sizes" in text
    assert "suggested anchors" in text and f"all figures: {out}" in text
    r = json.loads(out.read_text())
    assert r["overall"]["boxes"] == 3 and set(r["by_size"]) == {"small", "medium", "large"}
    assert r["suggestion"]["overall"]["fg_coverage"] >= r["overall"]["fg_coverage"]
    assert len(r["unmatched"]) == r["num_unmatched"]


def test_the_suggestion_fixes_elongated_boxes(tmp_path):
    rng = np.random.default_rng(0)
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "pole"}]}
    for i in range(20):
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "width": 320, "height": 320})
        for k in range(3):  # h / w = 5: no anchor of ratios (0.5, 1, 2) reaches IoU 0.5
            w = float(rng.uniform(24, 36))
            x, y = rng.uniform(0, 320 - w, size=2).tolist()
            box = [x, min(y, 320 - 5 * w), w, 5 * w]
            data["annotations"].append({"id": 100 * i + k, "image_id": i + 1, "category_id": 1, "bbox": box})
    images, ann = make_coco(tmp_path, data, write_images=False)
    base = [f"data.train_images={images}", f"data.train_annotations={ann}", "data.min_size=[320]"]
    base += ["data.max_size=320", "model.num_classes=1"]
    cfg = load_config(None, base)
    report = analyze_anchors(cfg)
    s = report["suggestion"]
    assert report["overall"]["fg_coverage"] < 0.1
    assert s["overall"]["fg_coverage"] > 0.9
    # the suggested overrides measure what the suggestion says
    again = analyze_anchors(load_config(None, base + s["overrides"]), suggest=False)
    assert again["overall"]["fg_coverage"] == pytest.approx(s["overall"]["fg_coverage"])


@pytest.mark.parametrize("sizes,warned", [([16, 32, 64, 128, 256], False), ([256, 512, 1024, 2048, 4096], True)])
def test_training_warns_when_anchors_do_not_fit(tmp_path, caplog, sizes, warned):
    cfg = config_from_dict(tiny_config(make_coco_split(tmp_path / "data"), tmp_path / "out"))
    cfg.model.anchors.sizes = tuple(float(s) for s in sizes)
    with caplog.at_level(logging.WARNING, logger="retinanet.train"):
        Trainer(cfg, progress=False)._build(time.perf_counter())
    msgs = [r.getMessage() for r in caplog.records if "anchor coverage" in r.getMessage()]
    assert bool(msgs) == warned
    if warned:
        assert "reach IoU >= 0.5" in msgs[0] and "retinanet analyze anchors" in msgs[0]
    res = warn_if_poor_anchor_coverage(build_dataset(cfg, train=True), cfg)
    assert res is not None and (res["overall"]["fg_coverage"] < 0.9) == warned


@pytest.mark.parametrize("use_difficult,expected", [(False, {1, 4}), (True, {1, 3, 4})])
def test_voc_boxes_are_listed_by_their_annotation_number(tmp_path, use_difficult, expected):
    root = make_voc(tmp_path)  # 1: dog 19x14, 2: person (whole image), 3: difficult cat 20x20, 4: cat 6x6
    ds = VOCDetection(str(root), split="train", class_names=["cat", "dog", "person"], use_difficult=use_difficult)
    cfg = config_from_dict(
        {"model": {"num_classes": 3}, "data": {"format": "voc", "voc_root": str(root), "min_size": [48]}}
    )
    report = analyze_anchors(cfg, dataset=ds, suggest=False)  # anchors from 32 px: only the person fits
    assert report["boxes"] == len(expected) + 1
    assert {u["annotation_id"] for u in report["unmatched"]} == expected
    assert {u["file_name"] for u in report["unmatched"]} == {"000001.jpg", "000002.jpg"}
