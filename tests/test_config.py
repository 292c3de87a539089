"""Config dataclasses, YAML presets, dotted overrides and their error messages."""

import re

import pytest

from retinanet.config import (
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    list_presets,
    load_config,
    save_config,
)


def test_defaults_are_the_papers():
    cfg = Config()
    m = cfg.model
    assert (m.focal_alpha, m.focal_gamma, m.prior) == (0.25, 2.0, 0.01)
    assert (m.fg_iou_threshold, m.bg_iou_threshold) == (0.5, 0.4)
    assert m.anchors.sizes == (32, 64, 128, 256, 512)
    assert m.anchors.scales == pytest.approx((1.0, 2 ** (1 / 3), 2 ** (2 / 3)))
    assert (m.score_thresh, m.topk_candidates, m.nms_thresh, m.detections_per_image) == (0.05, 1000, 0.5, 100)
    s = cfg.solver
    assert (s.base_lr, s.momentum, s.weight_decay, s.max_iter, s.batch_size) == (0.01, 0.9, 1e-4, 90000, 16)
    assert [round(x * s.max_iter) for x in s.steps] == [60000, 80000]
    assert cfg.data.min_size == (800,) and cfg.data.size_divisibility == 128


def test_lr_scales_linearly_with_batch():
    cfg = load_config(None, ["solver.batch_size=4"])
    assert cfg.solver.lr() == pytest.approx(0.0025)


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert cfg.model.num_classes >= 1


def test_preset_inheritance():
    r101 = load_config("retinanet_R101_FPN_1x")
    assert r101.model.backbone.name == "resnet101"
    assert r101.model.backbone.freeze_at == 2  # inherited from the R50 preset
    x = load_config("retinanet_X101_FPN_1.5x_jitter")
    assert x.model.backbone.name == "resnext101_32x8d" and x.solver.max_iter == 135000
    assert x.data.min_size == (640, 672, 704, 736, 768, 800)


def test_overrides_parse_yaml_values():
    cfg = load_config(
        "retinanet_R50_FPN_1x",
        [
            "model.num_classes=3",
            "data.min_size=[320,352]",
            "model.head_norm=GN",
            "solver.clip_grad_norm=1.5",
            "model.backbone.weights=null",
        ],
    )
    assert cfg.model.num_classes == 3
    assert cfg.data.min_size == (320, 352)
    assert cfg.model.head_norm == "GN"
    assert cfg.solver.clip_grad_norm == 1.5
    assert cfg.model.backbone.weights is None


def test_unknown_key_names_the_closest_valid_key():
    with pytest.raises(ConfigError, match=r"model.num_clases.*Did you mean 'num_classes'"):
        load_config(None, ["model.num_clases=3"])
    with pytest.raises(ConfigError, match=r"solver.base_rl.*Did you mean 'base_lr'"):
        config_from_dict({"solver": {"base_rl": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'.*'model'"):
        config_from_dict({"modle": {}})


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("solver.base_lr=-0.1", r"solver.base_lr: must be a positive number"),
        ("model.score_thresh=1.5", r"model.score_thresh: must be in \[0, 1\]"),
        ("data.size_divisibility=48", r"data.size_divisibility: must be a positive multiple of 32"),
        ("solver.backbone_lr_factor=0", r"solver.backbone_lr_factor: must be in \(0, 10\]"),
        ("solver.max_iter=abc", r"solver.max_iter: expected an integer, got 'abc'"),
        ("model.allow_low_quality_matches=3", r"expected true or false"),
        ("model.box_loss=iou", r"model.box_loss: must be smooth_l1, l1 or giou"),
        ("model.bg_iou_threshold=0.6", r"bg_iou_threshold <= fg_iou_threshold"),
        ("solver.amp=fp8", r"solver.amp"),
        ("solver", r"must look like section.key=value"),
    ],
)
def test_impossible_values_are_rejected(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="no config file or preset named 'retinanet_R50_FPN'.*retinanet_R50_FPN_1x"):
        load_config("retinanet_R50_FPN")


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config("mobilenet_v2_cpu", ["model.num_classes=7"])
    path = tmp_path / "cfg.yaml"
    save_config(cfg, path)
    again = load_config(str(path))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_user_file_with_base(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: retinanet_R50_FPN_500\nmodel:\n  num_classes: 2\n")
    cfg = load_config(str(p))
    assert cfg.model.num_classes == 2 and cfg.data.min_size == (500,)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.pixel_std=[0.229,0.224,0]", "model.pixel_std"),
        ("model.pixel_std=[0.229,0.224,-0.2]", "model.pixel_std"),
        ("model.pixel_std=[0.229,.inf,0.225]", "model.pixel_std"),
        ("model.pixel_std=[0.229,0.224]", "model.pixel_std"),
        ("model.pixel_std=[0.229,0.224,abc]", "model.pixel_std[2]"),
        ("model.pixel_mean=[0.485,.nan,0.406]", "model.pixel_mean"),
    ],
)
def test_bad_pixel_statistics_are_rejected(override, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ":") as e:
        load_config(None, [override])
    assert e.value.key == key


def test_pixel_statistics_default_when_a_stored_config_lacks_them():
    stored = config_to_dict(Config())
    del stored["model"]["pixel_mean"], stored["model"]["pixel_std"]  # a checkpoint written before they existed
    cfg = config_from_dict(stored)
    assert cfg.model.pixel_mean == (0.485, 0.456, 0.406) and cfg.model.pixel_std == (0.229, 0.224, 0.225)
    again = config_from_dict(
        config_to_dict(load_config(None, ["model.pixel_mean=[0.5,0.5,0.5]", "model.pixel_std=[1,1,1]"]))
    )
    assert again.model.pixel_mean == (0.5, 0.5, 0.5) and again.model.pixel_std == (1.0, 1.0, 1.0)
