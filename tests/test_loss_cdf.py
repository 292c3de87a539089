"""Figure 4 (the cumulative distribution of the focal loss): curves of hand-built logits against values
worked out by hand, and the runner on the tiny checkpoint and a tiny COCO set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from data_factory import make_coco
from model_factory import make_checkpoint
from PIL import Image

from retinanet.inference.loss_cdf import focal_losses, loss_cdf, run_loss_cdf


def _neg_logit(ce: float) -> float:
    """The logit whose negative cross-entropy -log(1 - sigmoid(x)) is ``ce``."""
    return math.log(math.expm1(ce))


def test_four_negatives_by_hand():
    # negatives with cross-entropy 3, 1, 4, 2 (shuffled); one positive
    neg = np.array([_neg_logit(c) for c in (3.0, 1.0, 4.0, 2.0)])
    r = loss_cdf(np.array([0.3]), neg, gammas=(0.0, 2.0), points=5)
    np.testing.assert_allclose(r.fractions, [0, 0.25, 0.5, 0.75, 1])
    # gamma 0: sorted 1, 2, 3, 4 of 10
    np.testing.assert_allclose(r.negative[0], [0, 0.1, 0.3, 0.6, 1.0], atol=1e-12)
    # gamma 2: FL = p**2 * ce with p = 1 - exp(-ce)
    fl = [(1 - math.exp(-c)) ** 2 * c for c in (1.0, 2.0, 3.0, 4.0)]
    expected = np.concatenate([[0], np.cumsum(fl)]) / sum(fl)
    np.testing.assert_allclose(r.negative[1], expected, atol=1e-12)
    # the hardest 10% of 4 negatives is 0.4 of the hardest one (the curve is linear in between)
    assert r.hardest_negative[0.1][0] == pytest.approx(0.4 * 4 / 10)
    assert r.hardest_negative[0.01][0] == pytest.approx(0.04 * 4 / 10)
    assert r.hardest_negative[0.2][0] == pytest.approx(0.8 * 4 / 10)
    assert r.hardest_negative[0.1][1] == pytest.approx(0.4 * fl[3] / sum(fl))
    # one positive carries all of its loss at once
    np.testing.assert_allclose(r.positive[0], [0, 0.25, 0.5, 0.75, 1.0])
    assert (r.num_positives, r.num_negatives) == (1, 4)


def test_focal_losses_match_the_probability_form():
    x = np.array([-6.0, -1.0, 0.0, 0.7, 5.0])
    p = 1 / (1 + np.exp(-x))
    for g in (0.0, 0.5, 2.0):
        np.testing.assert_allclose(focal_losses(x, True, g), -((1 - p) ** g) * np.log(p), rtol=1e-12)
        np.testing.assert_allclose(focal_losses(x, False, g), -(p**g) * np.log(1 - p), rtol=1e-12)


def test_curves_are_monotone_and_gamma_concentrates_the_negative_loss():
    rng = np.random.default_rng(0)
    pos = rng.normal(1.0, 2.0, 500)
    neg = rng.normal(-5.0, 2.0, 20000)
    r = loss_cdf(pos, neg, points=1000)
    for curves in (r.positive, r.negative):
        assert curves.shape == (4, 1000)
        assert np.all(np.diff(curves, axis=1) >= -1e-12)
        np.testing.assert_allclose(curves[:, 0], 0, atol=1e-12)
        np.testing.assert_allclose(curves[:, -1], 1)
    shares = r.hardest_negative[0.1]
    assert np.all(np.diff(shares) > 0)  # a larger gamma puts more of the loss on the hardest 10%
    assert r.to_dict()["hardest_negative_share"]["0.1"]["2.0"] == pytest.approx(shares[-1])


def test_empty_sets_give_nan_not_an_error():
    r = loss_cdf(np.zeros(0), np.array([-2.0, 0.0]), gammas=(0.0,), points=3)
    assert np.isnan(r.positive).all() and r.to_dict()["positive"]["0.0"] == [None, None, None]
    with pytest.raises(ValueError):
        loss_cdf(np.zeros(1), np.zeros(1), gammas=(-1.0,))


def test_runner_writes_png_and_json(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt" / "model_final.pth")
    images, ann = make_coco(tmp_path / "coco")
    data = [f"data.{s}_{k}={v}" for s in ("train", "val") for k, v in (("images", images), ("annotations", ann))]
    png, js = tmp_path / "out" / "cdf.png", tmp_path / "out" / "cdf.json"
    result = run_loss_cdf(
        None,
        ckpt,
        [*data, "data.num_workers=0"],
        num_images=3,
        gammas=(0, 2),
        out_png=png,
        json_path=js,
        device="cpu",
        points=50,
    )
    with Image.open(png) as im:
        assert im.size == (1000, 420)
    doc = json.loads(js.read_text())
    assert doc["num_images"] == 3 and doc["gammas"] == [0.0, 2.0]
    assert doc["num_positives"] == result.num_positives > 0
    assert doc["num_negatives"] == result.num_negatives > 0 and result.num_negatives % 3 == 0  # K = 3 per anchor
    assert len(doc["negative"]["2.0"]) == 50 and doc["negative"]["2.0"][-1] == pytest.approx(1.0)
    assert set(doc["hardest_negative_share"]) == {"0.2", "0.1", "0.01"}
    # the training split and a cap on the negatives
    r2 = run_loss_cdf(
        None, ckpt, [*data, "data.num_workers=0"], num_images=2, split="train", device="cpu", max_negatives=10
    )
    assert r2.num_negatives == 10


def test_cli_prints_the_headline_per_gamma(tmp_path, capsys):
    from data_factory import make_coco
    from model_factory import make_checkpoint

    from retinanet.cli import main
    from retinanet.config import config_from_dict, save_config
    from retinanet.utils.serialization import load_file

    ckpt = make_checkpoint(tmp_path / "tiny.pth")
    save_config(config_from_dict(load_file(ckpt)["config"]), tmp_path / "cfg.yaml")
    images, ann = make_coco(tmp_path / "coco")
    argv = ["analyze", "loss-cdf", str(tmp_path / "cfg.yaml"), f"data.val_images={images}"]
    argv += [f"data.val_annotations={ann}", "--weights", str(ckpt), "--out", str(tmp_path / "cdf.png")]
    assert main(argv + ["--json", str(tmp_path / "cdf.json"), "--gammas", "0", "2"]) == 0
    out = capsys.readouterr().out
    assert "gamma 0: the hardest 10% of negatives carry" in out and "gamma 2:" in out
    assert (tmp_path / "cdf.png").stat().st_size > 0 and (tmp_path / "cdf.json").exists()
