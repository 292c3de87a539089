"""``model.weights``: fine-tuning from a whole trained detector (``retinanet.modeling.finetune``).

The source is a tiny 91-class detector (``model.label_space=coco_category_ids``, output i = COCO
category id i: 1 person, 3 car, 18 dog) with every tensor perturbed, so that a loaded tensor, a copied
row and a fresh initialization are told apart by value. Expected values come from the source tensors
themselves: row ``a * K + k`` of the classification output is anchor ``a``, class ``k``.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch
from model_factory import randomize_bn
from model_factory import tiny_config as tiny_r18_config
from train_factory import make_coco_split, train_coco_dict, val_coco_dict
from train_factory import tiny_config as tiny_train_config

from retinanet.config import Config, config_from_dict, config_to_dict
from retinanet.data.categories import label_table
from retinanet.modeling.build import build_model
from retinanet.modeling.finetune import CLS_BIAS, CLS_WEIGHT, DetectorWeightsError, load_detector_weights
from retinanet.modeling.retinanet import RetinaNet
from retinanet.training.trainer import Trainer
from retinanet.utils.serialization import load_file, save_file

COCO = ["model.num_classes=91", "model.label_space=coco_category_ids"]
PRIOR_LOGIT = -math.log((1 - 0.01) / 0.01)
A = 9  # anchors per position (3 scales x 3 ratios)


def _perturbed(cfg: Config, seed: int) -> RetinaNet:
    """A detector of ``cfg`` whose every tensor differs from a fresh initialization."""
    torch.manual_seed(seed)
    model = RetinaNet.from_config(cfg)
    randomize_bn(model, seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _ours(path: Path, cfg: Config, model: RetinaNet, names: Sequence[str] = ()) -> Path:
    """``model`` saved in the layout of the trainer's checkpoints."""
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "class_names": list(names),
        "label_to_category_id": list(range(1, len(names) + 1)),
        "iteration": 10,
    }
    return save_file(path, state)


def _old_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's old RetinaNet key names (FPN ``inner_blocks.0.weight``, head ``conv.{2i}.weight``)."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if k.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")) and parts[4] == "0":
            k = ".".join(parts[:4] + parts[5:])
        elif k.startswith(("head.classification_head.conv.", "head.regression_head.conv.")) and parts[4] == "0":
            k = ".".join(parts[:3] + [str(2 * int(parts[3]))] + parts[5:])
        out[k] = v
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("src")
    cfg = tiny_r18_config(COCO)
    model = _perturbed(cfg, seed=1)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    names = label_table("coco_category_ids", 91)[0]
    return {
        "sd": sd,
        "ours": _ours(tmp / "coco.pth", cfg, model, names),
        "tv": save_file(tmp / "tv.pth", sd),
        "tv_old": save_file(tmp / "tv_old.pth", {"model": _old_layout(sd)}),
    }


def _target(weights: Path, names: Sequence[str], extra: Sequence[str] = ()) -> tuple[RetinaNet, Any]:
    cfg = tiny_r18_config([f"model.num_classes={len(names)}", *extra])
    torch.manual_seed(5)
    model = RetinaNet.from_config(cfg)
    report = load_detector_weights(model, weights, names, prior=cfg.model.prior)
    return model, report


def _rows(t: torch.Tensor, k: int, cls: int) -> torch.Tensor:
    """The rows of class ``cls`` for every anchor of a classification output with ``k`` classes."""
    return t[[a * k + cls for a in range(A)]]


@pytest.mark.parametrize("fmt", ["ours", "tv", "tv_old"])
def test_91_class_source_to_person_car_and_a_new_class(source, fmt, caplog) -> None:
    sd = source["sd"]
    caplog.set_level(logging.INFO, logger="retinanet.model")
    model, report = _target(source[fmt], ["person", "widget", "CAR "])
    got = model.state_dict()
    others = [k for k in got if k not in (CLS_WEIGHT, CLS_BIAS)]
    assert sorted(report.loaded) == sorted(others)
    for k in others:
        assert torch.equal(got[k], sd[k]), k
    assert report.reinitialized == (CLS_WEIGHT, CLS_BIAS)
    assert report.copied == (("person", 1, 0), ("CAR ", 3, 2))
    assert report.skipped == () and report.missing == () and report.unexpected == ()
    assert report.source_label_space == "coco_category_ids" and report.source_num_classes == 91
    assert report.source == ("checkpoint" if fmt == "ours" else "state_dict")
    w, b = got[CLS_WEIGHT], got[CLS_BIAS]
    assert w.shape == (A * 3, 32, 3, 3)
    for dst, src in ((0, 1), (2, 3)):  # person = COCO id 1, car = COCO id 3
        assert torch.equal(_rows(w, 3, dst), _rows(sd[CLS_WEIGHT], 91, src))
        assert torch.equal(_rows(b, 3, dst), _rows(sd[CLS_BIAS], 91, src))
    new_w, new_b = _rows(w, 3, 1), _rows(b, 3, 1)  # "widget": the head's init
    assert torch.allclose(new_b, torch.full_like(new_b, PRIOR_LOGIT))
    assert 0.008 < float(new_w.std()) < 0.012 and abs(float(new_w.mean())) < 0.002
    assert not any(torch.equal(new_w, _rows(sd[CLS_WEIGHT], 91, c)) for c in range(91))
    text = caplog.text
    assert f"loaded {len(others)} tensors from {source[fmt]}" in text
    assert "re-initialized head.classification_head.cls_logits.weight, head.classification_head.cls_logits.bias" in text
    assert (
        "person (1 -> 0), CAR  (3 -> 2)" in text
        and "classes that start from the prior (no source rows): widget" in text
    )


def test_build_model_with_model_weights_two_coco_classes(source) -> None:
    cfg = tiny_r18_config(["model.num_classes=2", f"model.weights={source['ours']}"])
    model = build_model(cfg, class_names=["person", "car"])
    w, b, sd = model.state_dict()[CLS_WEIGHT], model.state_dict()[CLS_BIAS], source["sd"]
    assert torch.equal(w, sd[CLS_WEIGHT][[a * 91 + c for a in range(A) for c in (1, 3)]])
    assert torch.equal(b, sd[CLS_BIAS][[a * 91 + c for a in range(A) for c in (1, 3)]])
    assert torch.equal(model.state_dict()["backbone.body.conv1.weight"], sd["backbone.body.conv1.weight"])


def test_source_names_that_do_not_match_reinitialize_only(tmp_path) -> None:
    cfg = tiny_r18_config(["model.num_classes=3"])
    src = _perturbed(cfg, seed=2)
    path = _ours(tmp_path / "shapes.pth", cfg, src, ["circle", "square", "triangle"])
    model, report = _target(path, ["person", "car"])
    assert report.copied == () and report.reinitialized == (CLS_WEIGHT, CLS_BIAS)
    assert report.source_label_space == "dataset" and report.source_num_classes == 3
    b = model.state_dict()[CLS_BIAS]
    assert torch.allclose(b, torch.full_like(b, PRIOR_LOGIT))
    w, ws = model.state_dict()[CLS_WEIGHT], src.state_dict()[CLS_WEIGHT]
    assert not any(torch.equal(_rows(w, 2, d), _rows(ws, 3, c)) for d in range(2) for c in range(3))
    assert torch.equal(
        model.state_dict()["head.regression_head.bbox_reg.weight"],
        src.state_dict()["head.regression_head.bbox_reg.weight"],
    )


def test_same_count_same_names_loads_as_is(tmp_path) -> None:
    cfg = tiny_r18_config(["model.num_classes=3"])
    src = _perturbed(cfg, seed=3)
    path = _ours(tmp_path / "s.pth", cfg, src, ["circle", "square", "triangle"])
    model, report = _target(path, [" Circle", "SQUARE", "triangle"])
    assert report.reinitialized == () and report.copied == ()
    assert sorted(report.loaded) == sorted(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_same_count_other_order_copies_by_name(tmp_path) -> None:
    cfg = tiny_r18_config(["model.num_classes=3"])
    src = _perturbed(cfg, seed=4)
    path = _ours(tmp_path / "s.pth", cfg, src, ["circle", "square", "triangle"])
    model, report = _target(path, ["triangle", "circle", "square"])
    assert report.copied == (("triangle", 2, 0), ("circle", 0, 1), ("square", 1, 2))
    w, ws = model.state_dict()[CLS_WEIGHT], src.state_dict()[CLS_WEIGHT]
    for dst, s in ((0, 2), (1, 0), (2, 1)):
        assert torch.equal(_rows(w, 3, dst), _rows(ws, 3, s))


def test_a_source_without_names_loads_as_is_for_the_same_count_else_starts_from_the_prior(tmp_path, caplog) -> None:
    cfg = tiny_r18_config(["model.num_classes=3"])
    src = _perturbed(cfg, seed=5)
    path = save_file(tmp_path / "bare3.pth", src.state_dict())  # no config, not 91 classes: no names
    model, report = _target(path, ["person", "car", "dog"])
    assert report.reinitialized == () and report.source_label_space is None
    assert torch.equal(model.state_dict()[CLS_WEIGHT], src.state_dict()[CLS_WEIGHT])
    caplog.set_level(logging.INFO, logger="retinanet.model")
    model, report = _target(path, ["person", "car"])
    assert report.reinitialized == (CLS_WEIGHT, CLS_BIAS) and report.copied == ()
    b = model.state_dict()[CLS_BIAS]
    assert torch.allclose(b, torch.full_like(b, PRIOR_LOGIT))
    assert "the source has no class names: every class starts from the prior" in caplog.text


def test_other_fpn_width_is_skipped_and_reported(tmp_path, caplog) -> None:
    cfg = tiny_r18_config(COCO + ["model.fpn_channels=64"])
    src = _perturbed(cfg, seed=6)
    path = save_file(tmp_path / "wide.pth", src.state_dict())
    caplog.set_level(logging.INFO, logger="retinanet.model")
    model, report = _target(path, ["person", "car"])
    body = [k for k in model.state_dict() if k.startswith("backbone.body.")]
    same_shape = "head.regression_head.bbox_reg.bias"  # [A * 4] whatever the width: loaded
    assert sorted(report.loaded) == sorted(body + [same_shape])
    rest = {k for k in model.state_dict() if k not in body and k not in (CLS_WEIGHT, CLS_BIAS, same_shape)}
    assert {k for k, _, _ in report.skipped} == rest
    assert report.copied == () and report.reinitialized == (CLS_WEIGHT, CLS_BIAS)
    assert (
        "skipped 21 tensors whose shape differs (file vs model): "
        "backbone.fpn.inner_blocks.0.0.weight [64, 128, 1, 1] vs [32, 128, 1, 1]," in caplog.text
    )
    assert "no classification rows copied" in caplog.text


def test_a_backbone_file_or_another_backbone_is_a_clear_error(source, tmp_path) -> None:
    cfg = tiny_r18_config(["model.num_classes=2"])
    imagenet_like = {k.removeprefix("backbone.body."): v for k, v in source["sd"].items() if "body" in k}
    bad = save_file(tmp_path / "resnet18.pth", imagenet_like)
    with pytest.raises(DetectorWeightsError, match=r"not a detector file.*use model\.backbone\.weights="):
        _target(bad, ["person", "car"])
    mobile = _perturbed(tiny_r18_config(COCO + ["model.backbone.name=mobilenet_v2"]), seed=7)
    other = save_file(tmp_path / "mobile.pth", mobile.state_dict())
    with pytest.raises(DetectorWeightsError, match=r"mobile\.pth: none of its backbone tensors fit.*mobilenet_v2"):
        build_model(
            config_from_dict({**config_to_dict(cfg), "model": {**config_to_dict(cfg)["model"], "weights": str(other)}})
        )


def test_backbone_weights_then_detector_the_detector_wins(source, tmp_path, caplog) -> None:
    body = {k.removeprefix("backbone.body."): torch.zeros_like(v) for k, v in source["sd"].items() if "body." in k}
    bfile = save_file(tmp_path / "r18.pth", body)
    cfg = tiny_r18_config(["model.num_classes=2", f"model.backbone.weights={bfile}", f"model.weights={source['tv']}"])
    caplog.set_level(logging.INFO, logger="retinanet.model")
    model = build_model(cfg, class_names=["person", "car"])
    assert torch.equal(
        model.state_dict()["backbone.body.layer1.0.conv1.weight"], source["sd"]["backbone.body.layer1.0.conv1.weight"]
    )
    assert "is loaded over model.backbone.weights" in caplog.text


# ------------------------------------------------------------------------------------------ Trainer


def _person_car(d: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(d)
    for a in d["annotations"]:
        a["category_id"] = 7 if a["category_id"] == 11 else a["category_id"]
    d["categories"] = [{"id": 3, "name": "person"}, {"id": 7, "name": "car"}]
    return d


def test_trainer_fine_tunes_from_model_weights_and_resume_keeps_the_checkpoint(tmp_path, caplog) -> None:
    paths = make_coco_split(tmp_path / "data", _person_car(train_coco_dict()), _person_car(val_coco_dict()))
    paths = {k: v for k, v in paths.items() if not k.startswith("val_")}
    src_dict = tiny_train_config(paths, tmp_path / "unused", num_classes=91)
    src_dict["model"]["label_space"] = "coco_category_ids"
    src_cfg = config_from_dict(src_dict)
    first = _ours(tmp_path / "a.pth", src_cfg, _perturbed(src_cfg, seed=8))
    second = _ours(tmp_path / "b.pth", src_cfg, _perturbed(src_cfg, seed=9))
    d = tiny_train_config(paths, tmp_path / "run", num_classes=2, solver={"max_iter": 2})
    d["model"]["weights"] = str(first)
    d["train"]["tensorboard"] = False
    caplog.set_level(logging.INFO, logger="retinanet.model")
    result = Trainer(config_from_dict(d), progress=False).train()
    assert result.iteration == 2
    n = len(RetinaNet.from_config(src_cfg).state_dict()) - 2  # all but the classification output
    assert f"model.weights: loaded {n} tensors from {first} (our checkpoint, 91 classes, coco_category_ids)" in (
        caplog.text
    )
    assert "copied classification rows by class name (source index -> class): person (1 -> 0), car (3 -> 1)" in (
        caplog.text
    )
    final = load_file(result.final_checkpoint)["model"]
    # resuming re-reads model.weights while building the model, then the checkpoint overwrites all of it
    d["model"]["weights"] = str(second)
    caplog.clear()
    caplog.set_level(logging.INFO)
    resumed = Trainer(config_from_dict(d), resume=True, progress=False)
    resumed.train()
    assert f"loaded {n} tensors from {second}" in caplog.text and "resumed from" in caplog.text
    assert resumed.iteration == 2
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, final[k]), k
