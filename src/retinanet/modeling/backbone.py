"""Backbones for RetinaNet: ResNet-18/34/50/101/152, ResNeXt-101 32x8d, MobileNetV2, FrozenBatchNorm2d.

Every backbone takes a normalized image batch ``x[B, 3, H, W]`` and returns the feature list
``[C3, C4, C5]`` at strides 8, 16 and 32 (spatial size ``ceil(H / s) x ceil(W / s)``), with the channel
counts in ``.out_channels``. Module and state-dict key names follow torchvision (``conv1``, ``bn1``,
``layer1.0.downsample.0.weight``, ``features.2.conv.0.1.running_var``, ...), so torchvision ImageNet files
load directly (see :mod:`retinanet.modeling.weights`); the classifier (``fc`` / ``classifier``) and the
average pool are not part of a detector backbone.

Normalization: ``norm="frozen_bn"`` (default, :class:`FrozenBatchNorm2d`: the ImageNet statistics and
affine stay fixed, as in Detectron / detectron2 / torchvision detection) or ``norm="bn"``
(trainable ``nn.BatchNorm2d``, e.g. for training from scratch or with big per-device batches).

``freeze_at`` = k makes the parameters of the first k stages untrainable (and keeps their BatchNorm in
eval mode): 0 nothing, 1 the stem, 2 stem + first stage (default, = detectron2 ``FREEZE_AT=2``),
... 5 everything. Stages:

- ResNet/ResNeXt: 1 = ``conv1, bn1`` (stem), 2 = ``layer1``, 3 = ``layer2`` (C3), 4 = ``layer3`` (C4),
  5 = ``layer4`` (C5).
- MobileNetV2, split by output stride the same way: 1 = ``features.0-1`` (stride 2),
  2 = ``features.2-3`` (stride 4), 3 = ``features.4-6`` (stride 8, C3), 4 = ``features.7-13`` (stride 16,
  C4), 5 = ``features.14-18`` (stride 32, C5).

MobileNetV2 taps: C3 = output of ``features.6`` (32 ch), C4 = ``features.13`` (96 ch),
C5 = ``features.18`` (the 1x1 320 -> 1280 conv, 1280 ch). The 1280-channel layer is ImageNet-pretrained
(richer than the 320-channel ``features.17``) and costs little: at 320x320 it is ~41 MMACs against
~600 MMACs for the rest of the backbone and several GMACs for the detection head; it is also the choice
of mmdetection's MobileNetV2 and of torchvision's MobileNetV3-FPN detectors. Only the ImageNet
``classifier.*`` weights are left unused.

Channels-last inputs work throughout (FrozenBatchNorm2d keeps the memory format). ResNet blocks apply a
FrozenBatchNorm2d through the conv's weights (:func:`conv_bn`: same map, one memory pass less forward and
backward); the modules and state dicts stay as above. For inference, :func:`fuse_frozen_bn` folds every
FrozenBatchNorm2d into the conv before it (``retinanet.modeling.fuse`` goes further).
"""

from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.modeling.weights import load_backbone_weights

__all__ = [
    "BACKBONES",
    "FrozenBatchNorm2d",
    "Backbone",
    "ResNet",
    "MobileNetV2",
    "build_backbone",
    "fuse_frozen_bn",
    "load_weights",
]

#: Alias with the name used in docs/architecture.md.
load_weights = load_backbone_weights

NORMS = ("frozen_bn", "bn")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, nothing trainable).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel, computed as one
    fused multiply-add ``x * scale + shift`` with ``scale``/``shift`` of shape ``[1, C, 1, 1]`` computed once
    per call. Input ``[B, C, H, W]`` (any memory format; the output keeps it). State dicts from
    ``nn.BatchNorm2d`` load: their ``num_batches_tracked`` entry is ignored.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):  # type: ignore[override]
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """Per-channel ``(scale, shift)`` vectors ``[C]`` such that ``y = x * scale + shift``."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_shift()
        scale = scale.to(x.dtype).view(1, -1, 1, 1)
        shift = shift.to(x.dtype).view(1, -1, 1, 1)
        return torch.addcmul(shift, x, scale)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def conv_bn(conv: nn.Conv2d, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))``. A :class:`FrozenBatchNorm2d` is applied through the conv instead:
    ``conv(x, W * scale) + shift`` (the conv's own bias, if any, scaled too), which is the same affine
    map with one pass over the output less in the forward and one less in the backward (gradients
    reach ``W`` through the product). Any other norm (``nn.BatchNorm2d``, ``nn.Identity``) runs as is."""
    if type(bn) is not FrozenBatchNorm2d or type(conv) is not nn.Conv2d or conv.padding_mode != "zeros":
        return bn(conv(x))
    scale, shift = bn.scale_shift()
    w = conv.weight
    weight = w * scale.to(w.dtype).view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else torch.addcmul(shift, conv.bias, scale)
    return F.conv2d(x, weight, bias.to(w.dtype), conv.stride, conv.padding, conv.dilation, conv.groups)


def _norm_layer(norm: str) -> Callable[[int], nn.Module]:
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


# ----------------------------------------------------------------------------------------------
# ResNet / ResNeXt


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 (stride) -> 3x3, identity or 1x1 projection shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, norm: Callable[[int], nn.Module],
                 groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), norm(planes))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        out = self.relu(conv_bn(self.conv1, self.bn1, x))
        out = conv_bn(self.conv2, self.bn2, out)
        return self.relu(out.add_(identity))


class Bottleneck(nn.Module):
    """ResNet-50+/ResNeXt block: 1x1 -> 3x3 (stride, groups) -> 1x1 (x4), stride on the 3x3 (v1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, norm: Callable[[int], nn.Module],
                 groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = norm(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), norm(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        y = self.relu(conv_bn(self.conv1, self.bn1, x))
        y = self.relu(conv_bn(self.conv2, self.bn2, y))
        y = conv_bn(self.conv3, self.bn3, y)
        return self.relu(y.add_(identity))


class Backbone(nn.Module):
    """Base class: ``forward(x[B,3,H,W]) -> [C3, C4, C5]``, ``.out_channels``, ``.strides``, freezing.

    Subclasses fill ``stages`` (stage index 1..5 -> list of submodule names) and ``name``.
    """

    name: str = ""
    out_channels: list[int]
    strides: list[int]
    stages: dict[int, list[str]]
    #: key prefixes of the ImageNet classification files that a detector backbone does not use
    ignored_weight_prefixes: tuple[str, ...] = ("fc.", "classifier.")

    def __init__(self) -> None:
        super().__init__()
        self.freeze_at = 0
        self.strides = [8, 16, 32]

    def freeze(self, freeze_at: int) -> None:
        """Make stages ``1..freeze_at`` untrainable (requires_grad False, BatchNorm kept in eval mode)."""
        if not isinstance(freeze_at, int) or isinstance(freeze_at, bool) or not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be an int in 0..5, got {freeze_at!r}")
        self.freeze_at = freeze_at
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.get_submodule(n) for s in range(1, self.freeze_at + 1) for n in self.stages[s]]

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


class ResNet(Backbone):
    """ResNet / ResNeXt body (torchvision layout, no avgpool/fc). Returns outputs of layer2..layer4."""

    def __init__(self, name: str, block: type, layers: Sequence[int], norm: str = "frozen_bn",
                 groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        self.name = name
        norm_layer = _norm_layer(norm)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, stride if j == 0 else 1, norm_layer, groups, width_per_group))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = [128 * block.expansion, 256 * block.expansion, 512 * block.expansion]
        self.stages = {1: ["conv1", "bn1"], 2: ["layer1"], 3: ["layer2"], 4: ["layer3"], 5: ["layer4"]}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x)))
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


# ----------------------------------------------------------------------------------------------
# MobileNetV2


class FoldedSequential(nn.Sequential):
    """``nn.Sequential`` that runs each ``Conv2d`` followed by a :class:`FrozenBatchNorm2d` as one
    :func:`conv_bn` call (no separate pass over the output, forward or backward); everything else, and
    any pair rewritten by ``fuse_for_inference``, runs as in ``nn.Sequential``. Same keys."""

    def forward(self, x: Tensor) -> Tensor:
        mods = list(self._modules.values())
        i = 0
        while i < len(mods):
            m = mods[i]
            if type(m) is nn.Conv2d and i + 1 < len(mods) and type(mods[i + 1]) is FrozenBatchNorm2d:
                x = conv_bn(m, mods[i + 1], x)
                i += 2
            else:
                x = m(x)
                i += 1
        return x


def _conv_norm_relu6(inp: int, out: int, kernel: int, stride: int, norm: Callable[[int], nn.Module],
                     groups: int = 1) -> nn.Sequential:
    """conv (no bias) -> norm -> ReLU6; keys ``0.weight``, ``1.*`` as torchvision's Conv2dNormActivation."""
    return FoldedSequential(nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                            norm(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise (stride) -> 1x1 linear projection, residual if possible."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int,
                 norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_norm_relu6(inp, hidden, 1, 1, norm))
        layers += [_conv_norm_relu6(hidden, hidden, 3, stride, norm, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), norm(oup)]
        self.conv = FoldedSequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y.add_(x) if self.use_res_connect else y


class MobileNetV2(Backbone):
    """MobileNetV2 (width 1.0) ``features`` in torchvision layout; taps after features.6 / .13 / .18."""

    # expansion t, channels c, repeats n, first stride s (Sandler et al. 2018, Table 2)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))
    TAPS = (6, 13, 18)

    def __init__(self, norm: str = "frozen_bn") -> None:
        super().__init__()
        self.name = "mobilenet_v2"
        norm_layer = _norm_layer(norm)
        layers: list[nn.Module] = [_conv_norm_relu6(3, 32, 3, 2, norm_layer)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t, norm_layer))
                inp = c
        layers.append(_conv_norm_relu6(inp, 1280, 1, 1, norm_layer))
        self.features = nn.Sequential(*layers)
        self.out_channels = [32, 96, 1280]
        split = {1: range(0, 2), 2: range(2, 4), 3: range(4, 7), 4: range(7, 14), 5: range(14, 19)}
        self.stages = {k: [f"features.{i}" for i in r] for k, r in split.items()}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        outs: list[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                outs.append(x)
        return outs


# ----------------------------------------------------------------------------------------------
# Factory, fusion

BACKBONES: dict[str, Callable[[str], Backbone]] = {
    "resnet18": lambda norm: ResNet("resnet18", BasicBlock, (2, 2, 2, 2), norm),
    "resnet34": lambda norm: ResNet("resnet34", BasicBlock, (3, 4, 6, 3), norm),
    "resnet50": lambda norm: ResNet("resnet50", Bottleneck, (3, 4, 6, 3), norm),
    "resnet101": lambda norm: ResNet("resnet101", Bottleneck, (3, 4, 23, 3), norm),
    "resnet152": lambda norm: ResNet("resnet152", Bottleneck, (3, 8, 36, 3), norm),
    "resnext101_32x8d": lambda norm: ResNet("resnext101_32x8d", Bottleneck, (3, 4, 23, 3), norm,
                                            groups=32, width_per_group=8),
    "mobilenet_v2": lambda norm: MobileNetV2(norm),
}


def build_backbone(name: str, norm: str = "frozen_bn", freeze_at: int = 2,
                   weights: Optional[str] = None) -> Backbone:
    """Build a backbone by name (see ``BACKBONES``), load ``weights`` (a file or ``"imagenet"``), freeze.

    Returns a :class:`Backbone`: ``forward(x[B,3,H,W]) -> [C3, C4, C5]``, ``.out_channels`` (3 ints).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    backbone = BACKBONES[name](norm)
    if weights is not None:
        load_backbone_weights(backbone, weights)
    backbone.freeze(freeze_at)
    return backbone


def _fuse_conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> None:
    """Fold ``bn(conv(x))`` into ``conv`` in place (computed in float64)."""
    scale, shift = (t.double() for t in bn.scale_shift())
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    b = shift if conv.bias is None else conv.bias.detach().double() * scale + shift
    conv.weight = nn.Parameter(w.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def fuse_frozen_bn(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every FrozenBatchNorm2d into the Conv2d that feeds it, replacing it by ``nn.Identity``.

    Conv/BN pairs are recognised structurally, as this package (and torchvision) lays them out: inside
    an ``nn.Sequential`` a FrozenBatchNorm2d at index i following a Conv2d at index i-1, and in other
    modules a FrozenBatchNorm2d child ``bnN`` with a Conv2d sibling ``convN``. Returns the fused module
    (a deep copy unless ``inplace``), whose outputs equal the original's up to float rounding.
    """
    if not inplace:
        module = copy.deepcopy(module)
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        names = list(children)
        for i, (name, child) in enumerate(children.items()):
            if not isinstance(child, FrozenBatchNorm2d):
                continue
            conv: Optional[nn.Module] = None
            if isinstance(parent, nn.Sequential) and i > 0:
                conv = children[names[i - 1]]
            elif name.startswith("bn"):
                conv = children.get("conv" + name[2:])
            if isinstance(conv, nn.Conv2d) and conv.out_channels == child.num_features:
                _fuse_conv_bn(conv, child)
                setattr(parent, name, nn.Identity())
    return module
