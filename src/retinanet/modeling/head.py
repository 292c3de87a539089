"""RetinaNet classification and box-regression subnets (Lin et al. 2017, Sec. 4), torchvision key names.

Both subnets are shared across pyramid levels. Each is a tower of ``num_convs`` x (3x3 conv, C channels,
[GroupNorm(32)], ReLU) followed by a 3x3 output conv: ``K * A`` logits (classification, sigmoid per class)
or ``4 * A`` box deltas (class-agnostic regression).

``RetinaNetHead.forward(features)`` takes ``[P3..P7]`` (each ``[B, C, H_l, W_l]``) and returns
``cls_logits [B, N, K]`` and ``box_deltas [B, N, 4]`` with ``N = sum_l H_l * W_l * A``, flattened in the
anchor order of docs/architecture.md: levels in order, then positions row-major ``(y, x)``, then the A
anchors. Per level the conv output ``[B, A*K, H, W]`` is read as ``[B, A, K, H, W]`` and permuted to
``[B, H, W, A, K]``; the only copy is the one ``torch.cat`` over levels (for NCHW and channels-last alike).

Init: all convs normal(std=0.01), bias 0; the classification output bias is ``-log((1 - prior) / prior)``
so every anchor starts at foreground probability ``prior`` (0.01), which keeps the first focal-loss steps
from being swamped by the ~100k easy background anchors.

Keys: ``classification_head.conv.{i}.0.weight`` (``.1.weight``/``.1.bias`` for GN; with GN the tower convs
have no bias, as torchvision's v2 head), ``classification_head.cls_logits.*``,
``regression_head.conv.{i}...``, ``regression_head.bbox_reg.*``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from retinanet.modeling.conv import conv3x3

__all__ = [
    "RetinaNetHead",
    "RetinaNetClassificationHead",
    "RetinaNetRegressionHead",
    "flatten_levels",
    "init_cls_logits",
]

HEAD_NORMS = (None, "GN")


def _tower(channels: int, num_convs: int, norm: Optional[str]) -> nn.Sequential:
    if norm not in HEAD_NORMS:
        raise ValueError(f"head norm must be None or 'GN', got {norm!r}")
    if norm == "GN" and channels % 32:
        raise ValueError(f"head norm 'GN' uses 32 groups: channels must be a multiple of 32, got {channels}")
    if num_convs < 0:
        raise ValueError(f"num_convs must be >= 0, got {num_convs}")
    blocks = []
    for _ in range(num_convs):
        layers: list[nn.Module] = [conv3x3(channels, channels, bias=norm is None)]
        if norm == "GN":
            layers.append(nn.GroupNorm(32, channels))
        layers.append(nn.ReLU(inplace=True))
        blocks.append(nn.Sequential(*layers))
    return nn.Sequential(*blocks)


def _init_normal(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def flatten_levels(outputs: Sequence[Tensor], last: int) -> Tensor:
    """Per-level conv outputs ``[B, A*last, H, W]`` -> ``[B, sum H*W*A, last]`` in (level, y, x, a) order.

    ``[B, A*last, H, W]`` is viewed (no copy, NCHW or channels-last) as ``[B, A*last, H*W]`` and
    transposed to ``[B, H*W, A*last]``; the single ``cat`` over levels then writes a contiguous result
    whose row ``(y*W + x)*A + a`` holds channels ``a*last .. a*last + last - 1``.
    """
    if not outputs:
        raise ValueError("flatten_levels: no feature levels")
    b = outputs[0].shape[0]
    views = [o.flatten(2).transpose(1, 2) for o in outputs]
    return torch.cat(views, dim=1).view(b, -1, last)


def init_cls_logits(conv: nn.Conv2d, prior: float) -> None:
    """The classification output's init: weights normal(std=0.01), bias ``-log((1 - prior) / prior)``
    (every anchor starts at foreground probability ``prior``)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    nn.init.normal_(conv.weight, std=0.01)
    assert conv.bias is not None
    nn.init.constant_(conv.bias, -math.log((1.0 - prior) / prior))


class RetinaNetClassificationHead(nn.Module):
    """Classification subnet: ``conv`` tower + ``cls_logits`` (K*A outputs, prior-probability bias)."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        prior: float = 0.01,
        norm: Optional[str] = None,
    ) -> None:
        super().__init__()
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must be in (0, 1), got {prior}")
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.conv = _tower(in_channels, num_convs, norm)
        self.cls_logits = conv3x3(in_channels, num_anchors * num_classes)
        _init_normal(self.conv)
        init_cls_logits(self.cls_logits, prior)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return flatten_levels([self.cls_logits(self.conv(f)) for f in features], self.num_classes)


class RetinaNetRegressionHead(nn.Module):
    """Box subnet: ``conv`` tower + ``bbox_reg`` (4*A class-agnostic deltas)."""

    def __init__(self, in_channels: int, num_anchors: int, num_convs: int = 4, norm: Optional[str] = None) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = _tower(in_channels, num_convs, norm)
        self.bbox_reg = conv3x3(in_channels, num_anchors * 4)
        _init_normal(self)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return flatten_levels([self.bbox_reg(self.conv(f)) for f in features], 4)


class RetinaNetHead(nn.Module):
    """Both subnets: ``forward([P3..P7]) -> (cls_logits [B, N, K], box_deltas [B, N, 4])``."""

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        num_classes: int,
        num_convs: int = 4,
        prior: float = 0.01,
        norm: Optional[str] = None,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("num_anchors", num_anchors), ("num_classes", num_classes)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"RetinaNetHead: {name} must be a positive int, got {v!r}")
        self.in_channels = in_channels
        self.num_anchors = num_anchors
        self.num_classes = num_classes
        self.classification_head = RetinaNetClassificationHead(
            in_channels, num_anchors, num_classes, num_convs, prior, norm
        )
        self.regression_head = RetinaNetRegressionHead(in_channels, num_anchors, num_convs, norm)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        if not features:
            raise ValueError("RetinaNetHead: expected a non-empty list of feature maps")
        for i, f in enumerate(features):
            if f.dim() != 4 or f.shape[1] != self.in_channels:
                raise ValueError(
                    f"RetinaNetHead: level {i} must be [B, {self.in_channels}, H, W], got shape {tuple(f.shape)}"
                )
        return self.classification_head(features), self.regression_head(features)
