"""OHEM (``model.cls_loss=ohem``): the selection against a plain Python reference, the loss by hand,
a crafted case that a selection without NMS gets wrong, and training steps of the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from retinanet.config import ConfigError, load_config
from retinanet.losses import ohem
from retinanet.losses.ohem import ohem_cross_entropy, ohem_select
from retinanet.modeling.retinanet import RetinaNet
from retinanet.training.normalizer import LossNormalizer


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_select(scores, boxes, valid, positive, batch, thresh, pos_fraction):
    """Sort by loss, greedy NMS, then the top of the kept list (with the ratio): one image at a time."""
    out = []
    for b in range(scores.shape[0]):
        cand = [n for n in range(scores.shape[1]) if valid[b, n]]
        cand.sort(key=lambda n: (-float(scores[b, n]), n))
        kept: list[int] = []
        for n in cand:
            if thresh is None or all(_iou(boxes[b, n].tolist(), boxes[b, k].tolist()) <= thresh for k in kept):
                kept.append(n)
        if pos_fraction is None:
            take = kept[:batch]
        else:
            pos = [k for k in kept if positive[b, k]][: math.floor(pos_fraction * batch + 1e-9)]
            take = pos + [k for k in kept if not positive[b, k]][: batch - len(pos)]
        out.append(sorted(take))
    return out


def _random_case(seed: int, b: int = 3, n: int = 300):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(b, 12, 2, generator=g) * 100  # clusters, so that many boxes overlap
    c = centres[:, torch.randint(0, 12, (n,), generator=g)] + torch.randn(b, n, 2, generator=g) * 3
    wh = 8 + torch.rand(b, n, 2, generator=g) * 20
    boxes = torch.cat([c - wh / 2, c + wh / 2], -1)
    scores = torch.rand(b, n, generator=g)
    valid = torch.rand(b, n, generator=g) > 0.1
    positive = torch.rand(b, n, generator=g) > 0.85
    return scores, boxes, valid, positive


def _as_lists(mask: torch.Tensor) -> list[list[int]]:
    return [row.nonzero().squeeze(1).tolist() for row in mask]


CASES = [(16, 0.5, None), (40, 0.7, None), (24, 0.5, 0.25), (12, None, 0.25), (64, 0.3, 0.5)]


@pytest.mark.parametrize("seed,block", [(0, 2048), (1, 16), (2, 16)])
@pytest.mark.parametrize("batch,thresh,frac", CASES)
def test_selection_matches_reference(monkeypatch, seed, block, batch, thresh, frac):
    monkeypatch.setattr(ohem, "_BLOCK", block)  # 16: many blocks, so the early stop and block cut run
    scores, boxes, valid, positive = _random_case(seed)
    mask = ohem_select(scores, boxes, valid, positive, batch, thresh, frac)
    assert _as_lists(mask) == reference_select(scores, boxes, valid, positive, batch, thresh, frac)
    assert not (mask & ~valid).any()
    if frac is not None:
        assert ((mask & positive).sum(1) <= math.floor(frac * batch)).all()


def test_nms_changes_the_selection_on_a_crafted_case():
    # A (loss 3) and B (loss 2) are near duplicates (IoU 0.81); C (loss 1) is far away.
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [50.0, 50.0, 60.0, 60.0]]])
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    positive = torch.zeros(1, 3, dtype=torch.bool)
    with_nms = _as_lists(ohem_select(scores, boxes, valid, positive, 2, 0.5))
    without = _as_lists(ohem_select(scores, boxes, valid, positive, 2, None))
    assert with_nms == [[0, 2]] == reference_select(scores, boxes, valid, positive, 2, 0.5, None)
    assert without == [[0, 1]] != with_nms
    # at IoU 0.9 the duplicate is kept again (0.81 <= 0.9)
    assert _as_lists(ohem_select(scores, boxes, valid, positive, 2, 0.9)) == [[0, 1]]


def test_ratio_caps_positives_and_negatives_fill():
    far = [[100.0 * k, 0.0, 100.0 * k + 10, 10.0] for k in range(6)]
    boxes = torch.tensor([far])
    scores = torch.tensor([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    positive = torch.tensor([[True, True, False, True, False, False]])
    valid = torch.ones(1, 6, dtype=torch.bool)
    # batch 4 at 1:3 -> the hardest positive and the three hardest negatives
    assert _as_lists(ohem_select(scores, boxes, valid, positive, 4, 0.5, 0.25)) == [[0, 2, 4, 5]]
    assert _as_lists(ohem_select(scores, boxes, valid, positive, 4, 0.5, None)) == [[0, 1, 2, 3]]
    # an ignored anchor never enters the minibatch
    valid[0, 0] = False
    assert _as_lists(ohem_select(scores, boxes, valid, positive, 4, 0.5, 0.25)) == [[1, 2, 4, 5]]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_loss_by_hand():
    # one image, 4 anchors, K = 2; anchor 3 is ignored; all boxes disjoint
    logits = torch.tensor([[[2.0, -1.0], [0.5, 1.5], [-3.0, -2.0], [9.0, 9.0]]], requires_grad=True)
    targets = torch.tensor([[0, -1, 1, -2]])
    boxes = torch.tensor([[[20.0 * k, 0.0, 20.0 * k + 10, 10.0] for k in range(4)]])
    ce = [
        _softplus(-2.0) + _softplus(-1.0),  # class 0 positive, class 1 negative
        _softplus(0.5) + _softplus(1.5),  # background
        _softplus(-3.0) + _softplus(2.0),  # class 1 positive (logit -2), class 0 negative (-3)
    ]
    loss, count = ohem_cross_entropy(logits, targets, boxes, batch_size=2, nms_thresh=0.5)
    hardest_two = sorted(ce)[-2:]
    assert count.item() == 2
    assert loss.item() == pytest.approx(sum(hardest_two), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, 0].abs().sum() == 0  # the easiest anchor: no gradient
    assert logits.grad[0, 3].abs().sum() == 0  # ignored


def test_config_checks():
    cfg = load_config(None, ["model.cls_loss=ohem", "model.ohem_batch=256", "model.ohem_pos_fraction=0.25"])
    assert (cfg.model.ohem_batch, cfg.model.ohem_nms, cfg.model.ohem_pos_fraction) == (256, 0.5, 0.25)
    for bad, key in [
        (["model.ohem_batch=0"], "model.ohem_batch"),
        (["model.ohem_nms=0"], "model.ohem_nms"),
        (["model.ohem_pos_fraction=1.0"], "model.ohem_pos_fraction"),
        (["model.cls_loss=ohem", "model.loss_normalizer=ema"], "model.loss_normalizer"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, bad)
        assert e.value.key == key


def test_tiny_model_trains_with_ohem():
    from model_factory import tiny_config

    cfg = tiny_config(["model.cls_loss=ohem", "model.ohem_batch=32", "model.ohem_pos_fraction=0.25"])
    torch.manual_seed(0)
    model = RetinaNet.from_config(cfg).train()
    normalizer = LossNormalizer(cfg.model.loss_normalizer)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = torch.rand(1, 3, 96, 96)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [50.0, 20.0, 90.0, 80.0]]), "labels": torch.tensor([0, 2])}
    ]
    history = []
    for _ in range(4):
        out = model(images, targets)
        loss_cls = out["loss_cls"] / normalizer(out["num_fg"])
        history.append(loss_cls.item())
        opt.zero_grad()
        (loss_cls + out["loss_box"] / normalizer(out["num_fg"])).backward()
        opt.step()
    # the trainer's division gives the mean cross-entropy of the selected anchors: with the prior 0.01
    # a negative anchor starts at about K * -log(0.99) and a positive at about -log(0.01)
    k = cfg.model.num_classes
    assert k * -math.log(0.99) * 0.5 < history[0] < -math.log(0.01) + k
    assert history[-1] < 0.7 * history[0], history
