"""The assembled detector: initial prior, the training losses against a per-image reference, the
batched post-processing against a brute-force reference, a tiny model that overfits two images, and
the input/output contract (raw or uint8 images of any sizes in, boxes in the requested sizes out)."""

from __future__ import annotations

import math

import pytest
import torch

from retinanet.config import AnchorConfig, BackboneConfig, Config, ModelConfig
from retinanet.modeling.retinanet import RetinaNet
from retinanet.ops import BoxCoder, box_iou
from retinanet.ops.matcher import Matcher


def tiny_cfg(size_divisibility: int = 128, **kw) -> Config:
    base = dict(
        num_classes=3,
        backbone=BackboneConfig(name="resnet18", freeze_at=0),
        fpn_channels=32,
        head_convs=1,
        anchors=AnchorConfig(sizes=(16.0, 32.0, 64.0, 128.0, 256.0)),
    )
    base.update(kw)
    cfg = Config(model=ModelConfig(**base))
    cfg.data.size_divisibility = size_divisibility
    return cfg


def test_initial_classification_probability_is_the_prior():
    torch.manual_seed(0)
    model = RetinaNet.from_config(tiny_cfg(num_classes=5, head_convs=2)).eval()
    x = torch.randn(2, 3, 128, 128)
    feats = model.backbone(x)
    logits, deltas = model.head(feats)
    p = logits.sigmoid()
    # bias = -log((1 - pi) / pi); weights N(0, 0.01) move the logit only slightly
    assert p.shape == (2, model.anchors_for(feats).shape[0], 5)
    assert abs(p.mean().item() - 0.01) < 1e-3
    assert p.min().item() > 0.008 and p.max().item() < 0.0125


def _reference_losses(model: RetinaNet, logits, deltas, anchors, targets, alpha=0.25, gamma=2.0):
    """Per image and per anchor, straight from the paper's formulas (float64)."""
    matcher = Matcher(0.5, 0.4, True)
    coder = BoxCoder()
    cls_sum, box_sum, num_fg = 0.0, 0.0, 0
    for b, t in enumerate(targets):
        idx = matcher.match(t["boxes"], anchors)
        K = logits.shape[-1]
        onehot = torch.zeros(anchors.shape[0], K, dtype=torch.float64)
        fg = idx >= 0
        onehot[fg, t["labels"][idx[fg]]] = 1.0
        valid = idx != -2
        p = logits[b].double().sigmoid()
        p_t = torch.where(onehot == 1, p, 1 - p)
        a_t = torch.where(onehot == 1, alpha, 1 - alpha)
        fl = -a_t * (1 - p_t) ** gamma * torch.log(p_t)
        cls_sum += fl[valid].sum().item()
        if fg.any():
            tgt = coder.encode(t["boxes"][idx[fg]], anchors[fg]).double()
            diff = (deltas[b][fg].double() - tgt).abs()
            beta = 0.1
            box_sum += torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta).sum().item()
        num_fg += int(fg.sum())
    n = max(num_fg, 1)
    return cls_sum / n, box_sum / n, num_fg


@pytest.mark.parametrize("with_empty_image", [False, True])
def test_training_losses_equal_per_image_reference(with_empty_image):
    torch.manual_seed(0)
    model = RetinaNet.from_config(tiny_cfg()).train()
    x = torch.rand(2, 3, 128, 128)  # raw RGB 0-1: the model normalizes
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 70.0, 120.0, 126.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[5.0, 30.0, 40.0, 100.0]]), "labels": torch.tensor([1])},
    ]
    if with_empty_image:
        targets[1] = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    out = model(x, targets)
    with torch.no_grad():
        feats = model.backbone(model.preprocess(x)[0])
        logits, deltas = model.head(feats)
        anchors = model.anchors_for(feats)
    ref_cls, ref_box, ref_fg = _reference_losses(model, logits, deltas, anchors, targets)
    assert int(out["num_fg"]) == ref_fg > 0
    normalizer = out["num_fg"].clamp(min=1)  # the model returns sums; the caller normalizes
    assert (out["loss_cls"] / normalizer).item() == pytest.approx(ref_cls, rel=1e-4)
    assert (out["loss_box"] / normalizer).item() == pytest.approx(ref_box, rel=1e-4)


def test_no_ground_truth_anywhere_gives_all_background_and_zero_box_loss():
    torch.manual_seed(0)
    model = RetinaNet.from_config(tiny_cfg()).train()
    empty = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    out = model(torch.rand(2, 3, 128, 128), [empty, empty])
    assert out["num_fg"].item() == 0
    assert out["loss_box"].item() == 0.0
    normalizer = out["num_fg"].clamp(min=1)
    # every anchor is background: sum of -(1 - alpha) p^2 log(1 - p) with p ~ 0.01, normalizer 1
    n_anchors = 2 * 9 * sum((128 // s) ** 2 if 128 // s else 1 for s in (8, 16, 32, 64, 128)) * 3
    expected = n_anchors * 0.75 * 0.01**2 * -math.log(0.99)
    assert (out["loss_cls"] / normalizer).item() == pytest.approx(expected, rel=0.1)
    ((out["loss_cls"] + out["loss_box"]) / normalizer).backward()


def _reference_postprocess(model: RetinaNet, logits, deltas, anchors, level_sizes, image_size):
    """One image: per level top-k over sigmoid scores above threshold, decode, clip, per-class greedy
    NMS written out pairwise, best D overall."""
    cfg = model.postprocessor
    coder = BoxCoder()
    K = logits.shape[-1]
    cand_boxes, cand_scores, cand_labels = [], [], []
    start = 0
    for n in level_sizes:
        s = logits[start : start + n].sigmoid().flatten()
        k = min(cfg.topk_candidates, s.numel())
        v, i = s.topk(k)
        keep = v > cfg.score_thresh
        v, i = v[keep], i[keep]
        a = i // K
        cand_scores.append(v)
        cand_labels.append(i % K)
        cand_boxes.append(coder.decode(deltas[start : start + n][a], anchors[start : start + n][a]))
        start += n
    boxes, scores, labels = torch.cat(cand_boxes), torch.cat(cand_scores), torch.cat(cand_labels)
    h, w = image_size
    boxes = torch.stack(
        [boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1
    )
    order = scores.argsort(descending=True)
    kept: list[int] = []
    for i in order.tolist():
        if all(
            labels[j] != labels[i] or box_iou(boxes[i : i + 1], boxes[j : j + 1]).item() <= cfg.nms_thresh for j in kept
        ):
            kept.append(i)
    kept = kept[: cfg.detections_per_image]
    return boxes[kept], scores[kept], labels[kept]


def test_batched_postprocess_equals_per_image_reference():
    torch.manual_seed(1)
    cfg = tiny_cfg(num_classes=4, topk_candidates=50, detections_per_image=20, score_thresh=0.3)
    model = RetinaNet.from_config(cfg).eval()
    x = torch.randn(3, 3, 128, 128)
    feats = model.backbone(x)
    anchors = model.anchors_for(feats)
    N = anchors.shape[0]
    logits = torch.randn(3, N, 4) * 2
    deltas = torch.randn(3, N, 4) * 0.3
    level_sizes = [f.shape[-2] * f.shape[-1] * 9 for f in feats]
    sizes = [(128, 128), (100, 128), (128, 90)]
    dets = model.postprocessor(logits, deltas, anchors, level_sizes, torch.tensor(sizes, dtype=torch.int64))
    for b in range(3):
        rb, rs, rl = _reference_postprocess(model, logits[b], deltas[b], anchors, level_sizes, sizes[b])
        assert len(dets[b]["scores"]) == len(rs) > 0
        torch.testing.assert_close(dets[b]["scores"], rs)
        torch.testing.assert_close(dets[b]["labels"], rl)
        torch.testing.assert_close(dets[b]["boxes"], rb)
        assert (dets[b]["boxes"][:, 2] <= sizes[b][1]).all() and (dets[b]["boxes"][:, 3] <= sizes[b][0]).all()


def _two_scenes() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(2, 3, 128, 128, generator=g) * 0.3
    boxes = [
        torch.tensor([[10.0, 20.0, 50.0, 60.0], [70.0, 30.0, 120.0, 70.0]]),
        torch.tensor([[30.0, 40.0, 100.0, 110.0], [5.0, 5.0, 25.0, 35.0]]),
    ]
    labels = [torch.tensor([0, 1]), torch.tensor([2, 0])]
    colour = {0: (1.0, 0.2, 0.2), 1: (0.2, 1.0, 0.2), 2: (0.2, 0.2, 1.0)}
    for i in range(2):
        for b, lab in zip(boxes[i], labels[i]):
            x1, y1, x2, y2 = b.int().tolist()
            for c in range(3):
                imgs[i, c, y1:y2, x1:x2] = colour[int(lab)][c]
    return imgs, [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]  # raw RGB 0-1


def test_tiny_model_overfits_two_images():
    """Two images, four objects of three classes: after a short training every object is found with
    the right class (IoU > 0.8, score > 0.5) and nothing else scores above 0.5. Measured after the 60
    steps: loss 0.005 of the first, IoUs >= 0.99, found objects' scores >= 0.77, others' <= 0.27 (all
    checks already pass from step 30)."""
    torch.manual_seed(0)
    x, targets = _two_scenes()
    model = RetinaNet.from_config(tiny_cfg(fpn_channels=32, head_convs=2, head_norm="GN"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = None
    model.train()
    for _ in range(60):
        out = model(x, targets)
        loss = (out["loss_cls"] + out["loss_box"]) / out["num_fg"].clamp(min=1)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    model.eval()
    with torch.no_grad():
        dets = model(x)
    for det, t in zip(dets, targets):
        confident = det["scores"] > 0.5
        boxes, labels = det["boxes"][confident], det["labels"][confident]
        assert len(boxes) == len(t["boxes"]), (det["scores"][:6], det["labels"][:6])
        iou = box_iou(boxes, t["boxes"])
        best, j = iou.max(dim=1)
        assert (best > 0.8).all(), iou
        assert torch.equal(labels, t["labels"][j])
        assert sorted(j.tolist()) == list(range(len(t["boxes"])))


def test_inputs_padded_to_multiples_of_32_only():
    """P6/P7 of a 160x224 input (multiples of 32, not of 128) are ceil(H / stride): anchors, head
    outputs and targets stay aligned, training gives finite losses, inference returns boxes."""
    torch.manual_seed(0)
    model = RetinaNet.from_config(tiny_cfg(size_divisibility=32, score_thresh=0.0))
    images = torch.rand(2, 3, 160, 224)
    assert model.preprocess(images)[0].shape == (2, 3, 160, 224)  # already multiples of 32: no padding
    features = model.backbone(images)
    assert [tuple(f.shape[-2:]) for f in features] == [(20, 28), (10, 14), (5, 7), (3, 4), (2, 2)]
    anchors = model.anchors_for(features)
    cls_logits, box_deltas = model.head(features)
    assert anchors.shape[0] == cls_logits.shape[1] == box_deltas.shape[1] == 9 * (560 + 140 + 35 + 12 + 4)
    # the anchors of the last P7 cell are centred at (128, 128): the stride grid, not the input size
    torch.testing.assert_close(anchors[-9:].view(9, 2, 2).mean(1), torch.full((9, 2), 128.0))
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 150.0, 140.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[100.0, 30.0, 130.0, 60.0]]), "labels": torch.tensor([2])},
    ]
    model.train()
    losses = model(images, targets)
    assert torch.isfinite(losses["loss_cls"]) and torch.isfinite(losses["loss_box"]) and losses["num_fg"] > 0
    model.eval()
    with torch.no_grad():
        dets = model([images[0], images[1, :, :150, :200]])  # the second padded to 160 x 224, clipped to 150 x 200
    assert len(dets) == 2 and all(len(d["boxes"]) > 0 for d in dets)
    assert float(dets[1]["boxes"][:, 2].max()) <= 200 and float(dets[1]["boxes"][:, 3].max()) <= 150


def test_same_detections_batched_alone_and_uint8_mapped_to_output_sizes():
    """Two raw images of different sizes give the same detections (a) batched in one list, (b) each
    alone and (c) as uint8 0-255; ``output_sizes`` of twice each input size give exactly twice the
    boxes, inside the output image and clipped at its edge. Both sizes pad to the same 128 x 128
    canvas alone and together, so the network sees the same pixels in every case: uint8 and float
    agree exactly, a batch of one and of two up to the convolutions' float rounding."""
    torch.manual_seed(0)
    model = RetinaNet.from_config(tiny_cfg(score_thresh=0.0, detections_per_image=50)).eval()
    with torch.no_grad():  # a head that separates classes and moves boxes, so detections are not all ties
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.05)
    g = torch.Generator().manual_seed(0)
    sizes = [(96, 120), (128, 100)]
    u8 = [(torch.rand(3, h, w, generator=g) * 255).round().to(torch.uint8) for h, w in sizes]
    raw = [u.float() / 255 for u in u8]  # the same values the model makes of the uint8 images
    out_sizes = [(2 * h, 2 * w) for h, w in sizes]
    with torch.no_grad():
        ref = model(raw)
        runs = {
            "batched": (ref, model(raw, output_sizes=out_sizes)),
            "alone": (
                [model([im])[0] for im in raw],
                [model([im], output_sizes=[o])[0] for im, o in zip(raw, out_sizes)],
            ),
            "uint8": (model(u8), model(u8, output_sizes=out_sizes)),
        }
    atol = {"batched": 0.0, "uint8": 0.0, "alone": 1e-5}  # score; boxes: 1000x that in pixels
    for name, (plain, mapped) in runs.items():
        assert len(plain) == len(mapped) == 2, name
        for det, own, r, (h, w) in zip(mapped, plain, ref, sizes):
            assert det["boxes"].shape[0] == 50, name
            assert torch.equal(own["labels"], r["labels"]), name
            torch.testing.assert_close(own["scores"], r["scores"], rtol=0, atol=atol[name])
            torch.testing.assert_close(own["boxes"], r["boxes"], rtol=0, atol=1000 * atol[name])
            assert torch.equal(det["labels"], own["labels"]) and torch.equal(det["scores"], own["scores"]), name
            assert torch.equal(det["boxes"], own["boxes"] * 2), name
            b = det["boxes"]
            assert b.min() >= 0 and (b[:, 0::2] <= 2 * w).all() and (b[:, 1::2] <= 2 * h).all(), name
            assert ((b[:, 2] == 2 * w) | (b[:, 3] == 2 * h)).any(), name  # clipped at the output's edge
