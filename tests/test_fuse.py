"""Tests for modeling/fuse.py, RetinaNet.fuse_for_inference and the frozen-BN fold of modeling/norm.py:
the fused inference model gives the same outputs and detections as the unfused one."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from model_factory import randomize_bn
from torch import nn

from retinanet.config import Config, ModelConfig
from retinanet.modeling.backbone import build_backbone
from retinanet.modeling.fuse import FusedConv2d, fuse_for_inference
from retinanet.modeling.norm import FrozenBatchNorm2d, conv_bn
from retinanet.modeling.retinanet import RetinaNet

torch.set_num_threads(1)


def small_model(backbone: str = "resnet18", channels_last: bool = True, classes: int = 5, **kw) -> RetinaNet:
    cfg = Config(
        model=ModelConfig(
            num_classes=classes,
            fpn_channels=32,
            head_convs=2,
            channels_last=channels_last,
            score_thresh=0.0,
            detections_per_image=50,
            **kw,
        )
    )
    cfg.model.backbone.name = backbone
    cfg.model.backbone.weights = None
    cfg.data.size_divisibility = 32  # the 128 x 192 test images are not padded
    torch.manual_seed(0)
    model = RetinaNet.from_config(cfg)
    randomize_bn(model)
    # a head that separates classes and moves boxes, so detections are not all ties
    with torch.no_grad():
        for m in model.head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.05)
    return model.eval()


def close_dets(a: list[dict], b: list[dict], min_matched: float = 0.95) -> None:
    """Same detections up to float rounding: equal counts, and (almost) every detection of ``a`` has one
    in ``b`` with the same label, corners within 0.01 px and a score within 1e-4 (near-ties may swap at
    the cut)."""
    assert len(a) == len(b)
    for da, db in zip(a, b):
        assert da["boxes"].shape == db["boxes"].shape
        if da["boxes"].shape[0] == 0:
            continue
        near = (da["boxes"][:, None] - db["boxes"][None]).abs().amax(-1) < 0.01
        same = (
            near
            & (da["labels"][:, None] == db["labels"][None])
            & ((da["scores"][:, None] - db["scores"][None]).abs() < 1e-4)
        )
        assert same.any(1).float().mean() >= min_matched


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_fused_retinanet_same_outputs_and_detections(backbone, channels_last):
    model = small_model(backbone, channels_last)
    fused = model.fuse_for_inference()
    assert fused.fused and not model.fused
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.rand(2, 3, 128, 192)
    with torch.inference_mode():
        fa, fb = model.backbone(x), fused.backbone(x)
        for a, b in zip(fa, fb):  # P3..P7
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
        ca, ra = model.head(fa)
        cb, rb = fused.head(fb)
        torch.testing.assert_close(cb, ca, rtol=1e-4, atol=2e-4 * float(ca.abs().max()))
        torch.testing.assert_close(rb, ra, rtol=1e-4, atol=2e-4 * float(ra.abs().max()))
        images = [x[0], x[1, :, :100, :150]]  # two sizes: the second is padded and clipped to 100 x 150
        da = model(images)
        db = fused(images)
    assert sum(d["boxes"].shape[0] for d in da) > 10
    close_dets(da, db)


def test_fused_mobilenet_relu6_and_residuals():
    torch.manual_seed(0)
    body = build_backbone("mobilenet_v2").eval()
    randomize_bn(body)
    fused = fuse_for_inference(body)
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.ReLU6)) for m in fused.modules())
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        for a, b in zip(body(x), fused(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2"])
def test_fused_backbones_same_outputs(name, norm):
    """Every BatchNorm (frozen, or nn.BatchNorm2d in eval mode) is folded; outputs equal the original's."""
    torch.manual_seed(0)
    body = build_backbone(name, norm=norm).eval()
    randomize_bn(body)
    fused = fuse_for_inference(body)
    assert not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fused.modules())
    assert any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in body.modules())  # original untouched
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(body(x), fused(x)):
            scale = a.abs().max()
            assert scale > 0
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * scale)


def test_fused_gn_head_keeps_groupnorm():
    model = small_model("resnet18", head_norm="GN")
    fused = model.fuse_for_inference()
    assert any(isinstance(m, nn.GroupNorm) for m in fused.modules())
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        close_dets(model(x), fused(x))


def test_fused_model_refuses_training_and_keeps_checkpoint_format():
    model = small_model()
    keys = set(model.state_dict())
    fused = model.fuse_for_inference()
    with pytest.raises(RuntimeError, match="fused for inference"):
        fused.train()
    fused.eval()  # fine
    assert set(model.state_dict()) == keys  # the unfused model's state dict is unchanged
    fresh = small_model()
    fresh.load_state_dict(model.state_dict())  # and still loads into a new (unfused) model
    with pytest.raises(RuntimeError):
        fused.load_state_dict(model.state_dict())  # the fused form is not a checkpoint format
    inplace = model.fuse_for_inference(inplace=True)
    assert inplace is model and model.fused


def test_fused_conv_autograd_float64_and_copies():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(8, 16, 3, padding=1, bias=False), FrozenBatchNorm2d(16)
    randomize_bn(bn)
    ref = nn.Sequential(conv, bn, nn.ReLU())
    fc = FusedConv2d(conv, bn, "relu")
    x = torch.randn(2, 8, 9, 7, requires_grad=True)
    y = fc(x)  # autograd through the input
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    ref(x2).sum().backward()
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        r = torch.randn(2, 16, 9, 7)
        torch.testing.assert_close(
            fc(x, residual=r),
            torch.relu(conv(x).mul(bn.scale_shift()[0].view(1, -1, 1, 1)) + bn.scale_shift()[1].view(1, -1, 1, 1) + r),
            rtol=1e-5,
            atol=1e-5,
        )
        out32 = fc(x)
        c = copy.deepcopy(fc)
        torch.testing.assert_close(c(x), out32)
        p = pickle.loads(pickle.dumps(fc))
        torch.testing.assert_close(p(x), out32)
        d = copy.deepcopy(fc).double()
        torch.testing.assert_close(d(x.double()).float(), out32, rtol=1e-5, atol=1e-5)
        biased = nn.Conv2d(8, 16, 3, padding=1)  # the conv's own bias is scaled and shifted too
        torch.testing.assert_close(FusedConv2d(biased, bn)(x), bn(biased(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
def test_conv_bn_training_path_same_values_and_gradients(bias):
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(6, 10, 3, stride=2, padding=1, bias=bias), FrozenBatchNorm2d(10)
    randomize_bn(bn)
    x = torch.randn(2, 6, 11, 9, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = conv_bn(conv, bn, x)
    g = torch.randn_like(y)
    y.backward(g)
    grads = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad()
    ref = bn(conv(x2))
    ref.backward(g)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    for a, p in zip(grads, conv.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-4)
    assert conv_bn(conv, nn.Identity(), x2).shape == y.shape  # a folded (Identity) norm runs as is


# ---------------------------------------------------------------------------------------------- top-k selection
def _ref_topk_above(x: torch.Tensor, k: int, thresh: float) -> torch.Tensor:
    v, i = x.topk(min(k, x.numel()))
    return i[v > thresh].sort().values


@pytest.mark.parametrize("m", [10, 5000, 300_000, 3_000_000])
@pytest.mark.parametrize("thresh", [-float("inf"), -2.944, 1.5, float("inf")])
def test_topk_above_equals_topk_then_threshold(m, thresh):
    from retinanet.ops.topk import topk_above

    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, generator=g) - 3.0  # distinct values
    for k in (1, 7, 1000):
        torch.testing.assert_close(topk_above(x, k, thresh), _ref_topk_above(x, k, thresh), rtol=0, atol=0)


def test_topk_above_when_the_sample_misses_the_large_values():
    from retinanet.ops.topk import _sample_index, topk_above

    m = 2_000_000
    x = torch.full((m,), -10.0)
    hot = torch.ones(m, dtype=torch.bool)
    hot[_sample_index(m, x.device)] = False  # the large values are exactly where the sample does not look
    hot_idx = hot.nonzero().squeeze(1)[::1000]
    x[hot_idx] = torch.linspace(0.0, 1.0, hot_idx.numel())
    for thresh in (-float("inf"), -0.5):
        torch.testing.assert_close(topk_above(x, 1000, thresh), _ref_topk_above(x, 1000, thresh), rtol=0, atol=0)
    assert topk_above(x, 0).numel() == 0


def test_topk_above_ignores_nan():
    from retinanet.ops.topk import topk_above

    x = torch.tensor([0.5, float("nan"), 2.0, -1.0])
    assert topk_above(x, 2).tolist() == [0, 2]
    assert topk_above(x, 10, 0.0).tolist() == [0, 2]


@pytest.mark.parametrize("size", ["32-blocks", "64-blocks", "128-blocks"])
@pytest.mark.parametrize("tau", [-float("inf"), -3.0, 0.5, 1.9, 3.5, float("inf")])
def test_nonzero_gt_block_scan_equals_plain_compare(tau, size):
    """The block-maximum scan (large CPU inputs) finds exactly ``(x > tau).nonzero()``: with NaN in a
    block that also holds a large value, values in the ragged tail, and taus that make few or most
    blocks qualify (the chunked fallback)."""
    from retinanet.ops.topk import _BLOCK, _CHUNK, _block_size, _nonzero_gt

    base = {"32-blocks": _CHUNK, "64-blocks": 1 << 21, "128-blocks": 1 << 23}[size]
    m = base + _BLOCK * 3 + 57  # ragged tail of 57 values
    assert _block_size(m) == int(size.split("-")[0])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(m, generator=g) - 3.0
    x[5 * _BLOCK + 3] = float("nan")
    x[5 * _BLOCK + 9] = 2.0  # same block as the NaN: must still be found
    x[777 * _BLOCK] = float("nan")  # a block with NaN and nothing large
    x[m - 1] = 4.0  # in the tail
    x[m - 60] = 2.5
    ref = (x > tau).nonzero().squeeze(1)
    torch.testing.assert_close(_nonzero_gt(x, tau), ref, rtol=0, atol=0)
    torch.testing.assert_close(_nonzero_gt(x[1:], tau), (x[1:] > tau).nonzero().squeeze(1), rtol=0, atol=0)
