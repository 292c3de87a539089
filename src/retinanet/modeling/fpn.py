"""Feature Pyramid Network producing P3..P7 for RetinaNet (Lin et al. 2017, Sec. 4), torchvision key names.

``FPN(in_channels=[c3, c4, c5], out_channels=256, p6_from="C5")`` maps ``[C3, C4, C5]`` (strides 8, 16,
32; tensors ``[B, c_l, H_l, W_l]``) to ``[P3, P4, P5, P6, P7]``, each ``[B, out_channels, h_l, w_l]``:

- lateral 1x1 convs ``inner_blocks.{i}.0`` on each C_l;
- top-down path: the coarser merged map is upsampled (nearest) to the lateral's exact size (so odd
  sizes work) and added;
- 3x3 output convs ``layer_blocks.{i}.0`` give P3..P5;
- ``extra_blocks.p6``: 3x3 stride-2 conv on C5 (``p6_from="C5"``, the paper, detectron2, torchvision v2)
  or on P5 (``"P5"``, torchvision v1); ``extra_blocks.p7``: 3x3 stride-2 conv on ReLU(P6).

Spatial sizes: with an input of ``H x W`` through a stride-2 backbone, ``h_l = ceil(H / 2^l)``.
All convs: kaiming_uniform(a=1) weights, zero bias (as torchvision / detectron2).
``BackboneWithFPN(body, fpn)`` chains a backbone and an FPN: ``forward(x[B,3,H,W]) -> [P3..P7]``.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.modeling.conv import conv3x3

__all__ = ["FPN", "LastLevelP6P7", "BackboneWithFPN"]

P6_SOURCES = ("C5", "P5")


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(C5 or P5), P7 = conv3x3/2(ReLU(P6)); keys ``p6.*``, ``p7.*``."""

    def __init__(self, in_channels: int, out_channels: int, p6_from: str = "C5") -> None:
        super().__init__()
        if p6_from not in P6_SOURCES:
            raise ValueError(f"p6_from must be one of {P6_SOURCES}, got {p6_from!r}")
        self.p6_from = p6_from
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)

    def forward(self, c5: Tensor, p5: Tensor) -> list[Tensor]:
        p6 = self.p6(c5 if self.p6_from == "C5" else p5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class FPN(nn.Module):
    """Feature pyramid: ``forward([C3, C4, C5]) -> [P3, P4, P5, P6, P7]`` with ``out_channels`` each."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, p6_from: str = "C5") -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if not in_channels or any(c <= 0 for c in in_channels):
            raise ValueError(f"FPN in_channels must be a non-empty list of positive ints, got {in_channels}")
        if out_channels <= 0:
            raise ValueError(f"FPN out_channels must be > 0, got {out_channels}")
        self.in_channels = in_channels
        self.out_channels = int(out_channels)
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Sequential(conv3x3(out_channels, out_channels)) for _ in in_channels)
        p6_in = in_channels[-1] if p6_from == "C5" else out_channels
        self.extra_blocks = LastLevelP6P7(p6_in, out_channels, p6_from)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                assert m.bias is not None
                nn.init.zeros_(m.bias)

    @property
    def num_levels(self) -> int:
        return len(self.in_channels) + 2

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps (C3..C5), got {len(features)}")
        for i, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"FPN input {i}: expected [B, {c}, H, W], got shape {tuple(f.shape)}")
        last = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[i](features[i])
            # the conv output is not needed by its backward, so the sum can reuse its storage
            last = lateral.add_(F.interpolate(last, size=lateral.shape[-2:], mode="nearest"))
            results.insert(0, self.layer_blocks[i](last))
        results.extend(self.extra_blocks(features[-1], results[-1]))
        return results


class BackboneWithFPN(nn.Module):
    """``body`` (images -> [C3, C4, C5]) followed by ``fpn`` ([C3, C4, C5] -> [P3..P7]).

    Keys ``body.*`` and ``fpn.*`` (``backbone.body.*`` / ``backbone.fpn.*`` inside the detector).
    ``.out_channels``: the FPN width (int).
    """

    def __init__(self, body: nn.Module, fpn: FPN) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.out_channels
        self.strides = [8, 16, 32, 64, 128]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.body(x))
