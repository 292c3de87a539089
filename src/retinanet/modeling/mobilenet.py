"""MobileNetV2 (width 1.0) body in torchvision's layout, without the classifier.

``MobileNetV2(norm)(x[B, 3, H, W]) -> [C3, C4, C5]``: the outputs of ``features.6`` (32 channels,
stride 8), ``features.13`` (96, stride 16) and ``features.18`` (the 1x1 320 -> 1280 conv, stride 32).
Keys are torchvision's (``features.2.conv.0.1.running_var``, ...), so its ImageNet file loads; only
``classifier.*`` is left unused. Freezing stages, split by output stride: 1 = ``features.0-1``,
2 = ``features.2-3``, 3 = ``features.4-6``, 4 = ``features.7-13``, 5 = ``features.14-18``.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from retinanet.modeling.backbone_base import Backbone
from retinanet.modeling.norm import FrozenBatchNorm2d, conv_bn, norm_layer

__all__ = ["FoldedSequential", "InvertedResidual", "MobileNetV2"]


class FoldedSequential(nn.Sequential):
    """``nn.Sequential`` that runs each ``Conv2d`` followed by a :class:`FrozenBatchNorm2d` as one
    :func:`~retinanet.modeling.norm.conv_bn` call; everything else runs as in ``nn.Sequential``.
    Same modules and keys."""

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


def _conv_norm_relu6(
    inp: int, out: int, kernel: int, stride: int, norm: Callable[[int], nn.Module], groups: int = 1
) -> nn.Sequential:
    """conv (no bias) -> norm -> ReLU6; keys ``0.weight``, ``1.*`` as torchvision's Conv2dNormActivation."""
    return FoldedSequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        norm(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise (stride) -> 1x1 linear projection, residual if possible."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_norm_relu6(inp, hidden, 1, 1, norm))
        layers += [
            _conv_norm_relu6(hidden, hidden, 3, stride, norm, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            norm(oup),
        ]
        self.conv = FoldedSequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return y.add_(x) if self.use_res_connect else y


class MobileNetV2(Backbone):
    """MobileNetV2 (width 1.0) ``features`` in torchvision layout; taps after features.6 / .13 / .18."""

    # expansion t, channels c, repeats n, first stride s (Sandler et al. 2018, Table 2)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    TAPS = (6, 13, 18)

    def __init__(self, norm: str = "frozen_bn") -> None:
        super().__init__()
        self.name = "mobilenet_v2"
        make_norm = norm_layer(norm)
        layers: list[nn.Module] = [_conv_norm_relu6(3, 32, 3, 2, make_norm)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t, make_norm))
                inp = c
        layers.append(_conv_norm_relu6(inp, 1280, 1, 1, make_norm))
        self.features = nn.Sequential(*layers)
        self.out_channels = [32, 96, 1280]
        split = {1: range(0, 2), 2: range(2, 4), 3: range(4, 7), 4: range(7, 14), 5: range(14, 19)}
        self.stages = {k: [f"features.{i}" for i in r] for k, r in split.items()}
        self.init_weights()

    def forward(self, x: Tensor) -> list[Tensor]:
        self.check_images(x)
        outs: list[Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                outs.append(x)
        return outs
