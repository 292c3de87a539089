"""Building a backbone by name: ResNet-18/34/50/101/152, ResNeXt-101 32x8d, MobileNetV2.

``build_backbone(name, norm, freeze_at)`` returns a
:class:`~retinanet.modeling.backbone_base.Backbone`: ``forward(x[B, 3, H, W]) -> [C3, C4, C5]`` at
strides 8, 16, 32, channel counts in ``.out_channels``.
State-dict keys are torchvision's, so its ImageNet files load (:mod:`retinanet.modeling.weights`).

``norm``: ``"frozen_bn"`` (default, :class:`~retinanet.modeling.norm.FrozenBatchNorm2d`: ImageNet
statistics and affine stay fixed) or ``"bn"`` (trainable ``nn.BatchNorm2d``, e.g. for training from
scratch). ``freeze_at`` = k makes stages 1..k untrainable: 0 nothing, 1 the stem, 2 stem + first stage
(default), ... 5 everything (the stages of each family are listed in its module).
"""

from __future__ import annotations

from typing import Callable

from retinanet.modeling.backbone_base import Backbone
from retinanet.modeling.mobilenet import MobileNetV2
from retinanet.modeling.norm import NORMS
from retinanet.modeling.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["BACKBONES", "build_backbone"]

#: backbone name -> constructor taking the norm name
BACKBONES: dict[str, Callable[[str], Backbone]] = {
    "resnet18": lambda norm: ResNet("resnet18", BasicBlock, (2, 2, 2, 2), norm),
    "resnet34": lambda norm: ResNet("resnet34", BasicBlock, (3, 4, 6, 3), norm),
    "resnet50": lambda norm: ResNet("resnet50", Bottleneck, (3, 4, 6, 3), norm),
    "resnet101": lambda norm: ResNet("resnet101", Bottleneck, (3, 4, 23, 3), norm),
    "resnet152": lambda norm: ResNet("resnet152", Bottleneck, (3, 8, 36, 3), norm),
    "resnext101_32x8d": lambda norm: ResNet(
        "resnext101_32x8d", Bottleneck, (3, 4, 23, 3), norm, groups=32, width_per_group=8
    ),
    "mobilenet_v2": lambda norm: MobileNetV2(norm),
}


def build_backbone(name: str, norm: str = "frozen_bn", freeze_at: int = 2) -> Backbone:
    """Build a backbone by name (see ``BACKBONES``), randomly initialized, with stages ``1..freeze_at``
    frozen; :func:`retinanet.modeling.build.build_model` loads its weights.

    Returns a :class:`Backbone`: ``forward(x[B,3,H,W]) -> [C3, C4, C5]``, ``.out_channels`` (3 ints).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    backbone = BACKBONES[name](norm)
    backbone.freeze(freeze_at)
    return backbone
