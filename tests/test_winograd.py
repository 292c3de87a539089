"""Tests for ops/winograd.py (Winograd F(4x4, 3x3)), modeling/conv.py and their use in training and in the
fused inference model: known answers from a float64 direct convolution, gradients (gradcheck and
autograd's direct convolution), the conditions under which it applies, and losses, gradients and
detections equal to the direct path's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retinanet.config import load_config
from retinanet.inference.loop import inference_model
from retinanet.modeling.conv import WinogradConv2d, conv3x3, set_winograd, winograd_disabled
from retinanet.modeling.fuse import FusedConv2d, fuse_for_inference
from retinanet.modeling.retinanet import RetinaNet
from retinanet.ops.winograd import (
    winograd_applies,
    winograd_conv3x3,
    winograd_conv3x3_autograd,
    winograd_weight_grad,
    winograd_weights,
)

torch.set_num_threads(1)


def _case(n: int, cin: int, cout: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    weight = torch.randn(cout, cin, 3, 3, generator=g) * (1.0 / (9 * cin)) ** 0.5
    bias = torch.randn(cout, generator=g)
    ref = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    return x, weight, bias, ref


@pytest.mark.parametrize(
    "n,cin,cout,h,w,max_tiles",
    [
        (1, 8, 8, 8, 8, 256),  # whole tiles, one block
        (2, 5, 7, 13, 10, 256),  # sizes not multiples of 4: padded tiles, cropped output; batch 2
        (1, 16, 3, 1, 1, 256),  # a single position
        (1, 4, 6, 3, 22, 256),
        (2, 8, 4, 37, 19, 6),  # several blocks of tile rows, the last one short
        (1, 32, 32, 20, 20, 1),  # one tile row per block
    ],
)
def test_matches_direct_convolution(n, cin, cout, h, w, max_tiles):
    x, weight, bias, ref = _case(n, cin, cout, h, w)
    out = winograd_conv3x3(x, winograd_weights(weight), bias, max_tiles=max_tiles)
    assert out.shape == (n, cout, h, w) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    err = (out.double() - ref).abs().max().item()
    assert err <= 2e-5 * ref.abs().max().item()


def test_channels_last_input_and_no_bias():
    x, weight, _, _ = _case(1, 16, 16, 12, 9)
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    out = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), winograd_weights(weight))
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-5 * ref.abs().max().item())


def test_broken_weight_transform_fails():
    """The comparison can fail: the kernel flipped (a convolution, not a cross-correlation) or the
    output shifted one pixel are far outside the tolerance."""
    x, weight, bias, ref = _case(1, 8, 8, 12, 12)
    flipped = winograd_conv3x3(x, winograd_weights(weight.flip(-1, -2)), bias)
    assert (flipped.double() - ref).abs().max() > 1e-2 * ref.abs().max()
    good = winograd_conv3x3(x, winograd_weights(weight), bias).double()
    assert (good[..., 1:] - ref[..., :-1]).abs().max() > 1e-2 * ref.abs().max()


def test_weights_shape_and_errors():
    u = winograd_weights(torch.randn(7, 5, 3, 3))
    assert u.shape == (36, 5, 7)
    # the corner of G w G^T is the kernel's corner: G's first row is (1/4, 0, 0), its last (0, 0, 1)
    w = torch.randn(2, 3, 3, 3)
    torch.testing.assert_close(winograd_weights(w)[35], w[:, :, 2, 2].t())
    torch.testing.assert_close(winograd_weights(w)[0], w[:, :, 0, 0].t() / 16)
    with pytest.raises(ValueError, match="3, 3"):
        winograd_weights(torch.randn(4, 4, 5, 5))
    with pytest.raises(ValueError, match="36"):
        winograd_conv3x3(torch.randn(1, 4, 8, 8), torch.randn(36, 5, 4))


def test_applies_only_where_supported():
    x = torch.randn(1, 8, 16, 16)
    assert winograd_applies(x, 256)
    assert not winograd_applies(x, 257)  # a smaller map than asked for
    assert not winograd_applies(x.double(), 256)
    assert not winograd_applies(x.bfloat16(), 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd_applies(torch.randn(1, 8, 16, 16), 256)


def test_fused_conv_uses_winograd_for_plain_3x3_only():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    strided = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
    one = torch.nn.Conv2d(8, 8, 1)
    f = FusedConv2d(conv, act="relu")
    assert f.use_winograd(min_positions=16) and f.winograd_u is not None
    assert not FusedConv2d(strided).use_winograd() and not FusedConv2d(one).use_winograd()
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        ref = conv(x).relu()
        torch.testing.assert_close(f(x), ref, rtol=0, atol=2e-5 * ref.abs().max().item())
        assert "winograd_u" not in f.state_dict()  # derived from weight, not saved


def _r50(channels_last: bool = True) -> RetinaNet:
    cfg = load_config("torchvision_retinanet_resnet50_fpn", ["model.score_thresh=0.2"])
    cfg.model.channels_last = channels_last
    torch.manual_seed(0)
    model = RetinaNet.from_config(cfg)
    with torch.no_grad():  # a head that separates classes and moves boxes: detections are not ties
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.02)
    return model.eval()


def test_fused_r50_same_detections_with_winograd():
    model = _r50()
    direct = fuse_for_inference(model, winograd=False)
    wino = fuse_for_inference(model, winograd=True)
    used = [m for m in wino.modules() if isinstance(m, FusedConv2d) and m.winograd_u is not None]
    # FPN outputs (3), head towers (2 x 4) and output convs (2), the stride-1 3x3 convs of res4 (5 of 6)
    # and res5 (2 of 3): the first block of each stage strides its 3x3 conv
    assert len(used) == 3 + 8 + 2 + 5 + 2
    assert all(m.in_channels >= 256 for m in used)
    x = torch.rand(2, 3, 160, 224)
    with torch.inference_mode():
        a, b = direct(x), wino(x)
    assert [len(d["boxes"]) for d in a] == [len(d["boxes"]) for d in b] and len(a[0]["boxes"]) > 0
    for da, db in zip(a, b):
        assert torch.equal(da["labels"], db["labels"])
        torch.testing.assert_close(db["boxes"], da["boxes"], rtol=0, atol=1e-2)
        torch.testing.assert_close(db["scores"], da["scores"], rtol=0, atol=1e-4)


def test_config_switch_reaches_training_and_inference():
    on = load_config("torchvision_retinanet_resnet50_fpn")
    off = load_config("torchvision_retinanet_resnet50_fpn", ["model.winograd=false"])
    assert on.model.winograd  # the default
    for cfg, expected in ((on, True), (off, False)):
        model = RetinaNet.from_config(cfg)
        convs = [m for m in model.modules() if isinstance(m, WinogradConv2d)]
        assert any(m.winograd for m in convs) is expected
        assert all(m.in_channels >= 256 for m in convs if m.winograd)
        fused = inference_model(model, cfg)
        assert any(isinstance(m, FusedConv2d) and m.winograd_u is not None for m in fused.modules()) is expected


def test_gradients_match_autograd_of_the_direct_convolution():
    torch.manual_seed(0)
    for shape in [(1, 4, 9, 7), (2, 3, 8, 8), (1, 2, 1, 1)]:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        w = torch.randn(5, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
        b = torch.randn(5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(winograd_conv3x3_autograd, (x, w, b))
        gy = torch.randn(shape[0], 5, *shape[2:], dtype=torch.float64)
        ref = torch.autograd.grad(F.conv2d(x, w, b, padding=1), (x, w, b), gy)
        got = torch.autograd.grad(winograd_conv3x3_autograd(x, w, b), (x, w, b), gy)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, rtol=0, atol=1e-10)
        wg = winograd_weight_grad(x.detach(), gy, max_tiles=2)  # several row blocks
        torch.testing.assert_close(wg, ref[1], rtol=0, atol=1e-10)


def test_winograd_conv_module_trains_like_nn_conv2d():
    torch.manual_seed(0)
    conv = conv3x3(256, 32)
    assert isinstance(conv, WinogradConv2d) and conv.winograd  # 256 input channels: eligible
    assert not conv3x3(128, 32).winograd and type(conv3x3(256, 32, stride=2)) is torch.nn.Conv2d
    plain = torch.nn.Conv2d(256, 32, 3, padding=1)
    plain.load_state_dict(conv.state_dict())  # same parameters and keys
    x = torch.randn(2, 256, 20, 20)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), conv(xb)
    torch.testing.assert_close(yb, ya, rtol=0, atol=2e-5 * ya.abs().max().item())
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=2e-5 * xa.grad.abs().max().item())
    torch.testing.assert_close(
        conv.weight.grad, plain.weight.grad, rtol=0, atol=2e-5 * plain.weight.grad.abs().max().item()
    )
    torch.testing.assert_close(conv.bias.grad, plain.bias.grad, rtol=1e-5, atol=1e-4)


def test_switches_and_scripting():
    model = torch.nn.Sequential(conv3x3(256, 256), torch.nn.ReLU(), conv3x3(64, 64), conv3x3(256, 8))
    assert set_winograd(model, False) == 0 and set_winograd(model, True) == 2  # the 64-channel conv stays off
    with winograd_disabled(model):
        assert not any(getattr(m, "winograd", False) for m in model)
    assert [getattr(m, "winograd", None) for m in model] == [True, None, False, True]
    scripted = torch.jit.script(model[0])  # TorchScript takes the plain convolution
    x = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            scripted(x), torch.nn.functional.conv2d(x, model[0].weight, model[0].bias, padding=1)
        )


def test_training_step_same_losses_and_gradients():
    """An R50 RetinaNet's loss and gradients with Winograd equal those with direct convolutions."""
    cfg = load_config("torchvision_retinanet_resnet50_fpn", ["model.num_classes=91"])
    torch.manual_seed(0)
    model = RetinaNet.from_config(cfg).train()
    images = torch.rand(2, 3, 160, 160)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.tensor([[40.0, 30.0, 150.0, 100.0], [5.0, 5.0, 60.0, 60.0]]), "labels": torch.tensor([7, 1])},
    ]

    def loss_and_grads(enabled: bool) -> tuple[float, list[torch.Tensor]]:
        set_winograd(model, enabled)
        model.zero_grad(set_to_none=True)
        out = model(images, targets)
        loss = out["loss_cls"] + out["loss_box"]
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    la, ga = loss_and_grads(False)
    lb, gb = loss_and_grads(True)
    assert lb == pytest.approx(la, rel=1e-5)
    assert len(ga) == len(gb) > 0
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()) + 1e-8)
