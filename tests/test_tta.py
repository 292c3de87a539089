"""Test-time augmentation (retinanet.inference.tta): views mapped back exactly, NMS and WBF merges by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from retinanet.config import ConfigError, load_config
from retinanet.inference.tta import TTADetector, weighted_box_fusion, with_tta


class BrightBox(nn.Module):
    """A stand-in detector: one box around the pixels above 0.5 (channel 0), in ``output_sizes`` pixels,
    plus a fixed box at the top-left corner of the view (which mirrors to the other side when flipped)."""

    def forward(self, images, output_sizes):
        out = []
        for im, (oh, ow) in zip(images, output_sizes):
            h, w = im.shape[-2:]
            ys, xs = (im[0] > 0.5).nonzero(as_tuple=True)
            fy, fx = oh / h, ow / w
            box = [float(xs.min()) * fx, float(ys.min()) * fy, float(xs.max() + 1) * fx, float(ys.max() + 1) * fy]
            corner = [0.0, 0.0, 4.0 * fx, 4.0 * fy]
            out.append(
                {
                    "boxes": torch.tensor([box, corner]),
                    "scores": torch.tensor([0.9, 0.3]),
                    "labels": torch.tensor([1, 2]),
                }
            )
        return out


def image() -> torch.Tensor:
    im = torch.zeros(3, 40, 60)
    im[:, 10:20, 5:25] = 1.0
    return im


def test_hflip_views_map_back_and_nms_merges():
    tta = TTADetector(BrightBox(), flip=True, merge="nms", iou_threshold=0.5, detections_per_image=10)
    (det,) = tta([image()], output_sizes=[(40, 60)])
    # the bright box is found in both views at the same place: one box; the corner box is at x 0..4 in
    # the plain view and, mirrored back, at x 56..60: two boxes
    assert det["boxes"].tolist() == [[5.0, 10.0, 25.0, 20.0], [0.0, 0.0, 4.0, 4.0], [56.0, 0.0, 60.0, 4.0]]
    assert det["scores"].tolist() == pytest.approx([0.9, 0.3, 0.3])
    assert det["labels"].tolist() == [1, 2, 2]


def test_extra_sizes_map_back_to_the_output_pixels():
    tta = TTADetector(BrightBox(), flip=False, sizes=(80,), base_size=40, merge="wbf", iou_threshold=0.5)
    (det,) = tta([image()], output_sizes=[(80, 120)])  # the original image was twice as large
    assert tta.num_views == 2
    # both views find the bright box at (10, 20, 50, 40) in output pixels, give or take the bilinear
    # upscaling's half-pixel edge in the 2x view (0.5 output pixels)
    assert torch.allclose(det["boxes"][0], torch.tensor([10.0, 20.0, 50.0, 40.0]), atol=0.5)
    assert det["scores"][0].item() == pytest.approx(0.9)  # seen by 2 of 2 views: not down-weighted


def test_weighted_box_fusion_by_hand():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.6, 0.8, 0.5])
    labels = torch.tensor([0, 0, 0, 1])
    b, s, lab = weighted_box_fusion(boxes, scores, labels, iou_threshold=0.55, num_views=2)
    # IoU of the first two is 81 / 119 = 0.68: one cluster, box (0.9 * A + 0.6 * B) / 1.5, score
    # mean(0.9, 0.6) * 2 / 2; the others are alone: score * 1 / 2; another class never merges
    assert torch.allclose(b, torch.tensor([[0.4, 0.4, 10.4, 10.4], [50, 50, 60, 60], [0, 0, 10, 10]]))
    assert s.tolist() == pytest.approx([0.75, 0.4, 0.25])
    assert lab.tolist() == [0, 0, 1]


def test_nms_of_plain_views_is_not_wbf():
    """The broken variant: averaging is what WBF adds; NMS keeps the best box as it is."""
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11]], dtype=torch.float32)
    dets = [
        {"boxes": boxes[:1], "scores": torch.tensor([0.9]), "labels": torch.tensor([0])},
        {"boxes": boxes[1:], "scores": torch.tensor([0.6]), "labels": torch.tensor([0])},
    ]
    nms = TTADetector(nn.Identity(), flip=True, merge="nms", iou_threshold=0.55)._merge(dets)
    wbf = TTADetector(nn.Identity(), flip=True, merge="wbf", iou_threshold=0.55)._merge(dets)
    assert nms["boxes"].tolist() == [[0, 0, 10, 10]]
    assert torch.allclose(wbf["boxes"], torch.tensor([[0.4, 0.4, 10.4, 10.4]]))


def test_config_turns_it_on_and_checks_it():
    model = nn.Identity()
    assert with_tta(model, load_config("mobilenet_v2_cpu")) is model
    cfg = load_config("mobilenet_v2_cpu", ["test.tta=[hflip, 640]", "test.tta_merge=wbf"])
    tta = with_tta(model, cfg)
    assert isinstance(tta, TTADetector) and tta.num_views == 4 and tta.scales == [1.0, 640 / 512]
    with pytest.raises(ConfigError, match="test.tta"):
        load_config("mobilenet_v2_cpu", ["test.tta=[vflop]"])
    with pytest.raises(ConfigError, match="test.tta_merge"):
        load_config("mobilenet_v2_cpu", ["test.tta_merge=mean"])


def test_predictor_runs_with_tta(tmp_path):
    from model_factory import make_checkpoint

    from retinanet import Predictor

    ckpt = make_checkpoint(tmp_path / "tiny.pth")
    img = (torch.rand(80, 100, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    plain = Predictor(ckpt, device="cpu").predict(img)
    tta = Predictor(ckpt, device="cpu", overrides=["test.tta=[hflip, 128]"])
    assert isinstance(tta.inference_model, TTADetector)
    assert not tta.inference_model.training  # eval loops restore this mode: a fused model cannot train
    det = tta.predict(img)
    assert 0 < len(det["scores"]) <= 20 and det["boxes"].shape[1] == 4
    assert (det["boxes"][:, 2] <= 100).all() and (det["boxes"][:, 3] <= 80).all()
    assert det["scores"].max() >= plain["scores"].max() - 1e-6  # the plain view is one of the views


def test_cli_eval_with_tta(tmp_path, capsys):
    """retinanet eval with test.tta: the evaluation loop puts the model back in its mode at the end,
    which must not try to train the BN-folded model."""
    from data_factory import make_coco
    from model_factory import make_checkpoint

    from retinanet.cli import main

    ckpt = make_checkpoint(tmp_path / "tiny.pth")
    images, ann = make_coco(tmp_path / "coco")
    from retinanet.config import config_from_dict, save_config
    from retinanet.utils.serialization import load_file

    save_config(config_from_dict(load_file(ckpt)["config"]), tmp_path / "cfg.yaml")
    argv = ["eval", str(tmp_path / "cfg.yaml"), f"data.val_images={images}", f"data.val_annotations={ann}"]
    argv += ["test.tta=[hflip, 128]", "--weights", str(ckpt), "--out", str(tmp_path / "ev"), "--no-progress"]
    assert main(argv) == 0
    assert (tmp_path / "ev" / "metrics.json").exists()


def test_evaluation_during_training_uses_the_configured_tta(tmp_path):
    """The trainer's evaluations measure what `retinanet eval` measures: with test.tta set, the detections
    it writes are those of the TTA wrapper (not of the plain model)."""
    import json

    from data_factory import make_coco
    from model_factory import make_checkpoint

    from retinanet.cli import main
    from retinanet.config import apply_overrides, config_from_dict, config_to_dict, save_config
    from retinanet.data.build import build_dataset
    from retinanet.inference.predictor import load_detector
    from retinanet.training.best import BestMetric
    from retinanet.training.evaluation import evaluate_during_training

    ckpt = make_checkpoint(tmp_path / "tiny.pth")
    images, ann = make_coco(tmp_path / "coco")
    data = [f"data.val_images={images}", f"data.val_annotations={ann}"]
    det = load_detector(ckpt, device="cpu")
    found = {}
    for name, tta in (("plain", []), ("tta", ["test.tta=[hflip, 128]"])):
        cfg = config_from_dict(apply_overrides(config_to_dict(det.cfg), data + tta))
        val = build_dataset(cfg, train=False)
        out = tmp_path / name
        out.mkdir()
        metrics, _ = evaluate_during_training(
            det.model, val, cfg, torch.device("cpu"), out, 7, 0, 1, False, None, BestMetric("AP")
        )
        assert "AP" in metrics
        found[name] = json.loads((out / "detections_0000007.json").read_text())
    save_config(det.cfg, tmp_path / "cfg.yaml")
    argv = ["eval", str(tmp_path / "cfg.yaml"), *data, "test.tta=[hflip, 128]", "--weights", str(ckpt)]
    assert main([*argv, "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    by_cli = json.loads((tmp_path / "ev" / "detections.json").read_text())
    key = lambda d: (d["image_id"], d["category_id"], round(d["score"], 4))  # noqa: E731
    assert found["plain"] and sorted(map(key, found["tta"])) == sorted(map(key, by_cli))
    assert sorted(map(key, found["plain"])) != sorted(map(key, found["tta"]))
