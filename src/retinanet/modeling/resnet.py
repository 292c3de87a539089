"""ResNet-18/34/50/101/152 and ResNeXt bodies (torchvision layout, no average pool or classifier).

``ResNet(name, block, layers, norm)(x[B, 3, H, W]) -> [C3, C4, C5]``: the outputs of ``layer2``,
``layer3`` and ``layer4`` (strides 8, 16, 32; ``128``, ``256``, ``512`` times ``block.expansion``
channels). Module and state-dict key names are torchvision's (``conv1``, ``bn1``,
``layer1.0.downsample.0.weight``, ...), so its ImageNet files load. Freezing stages: 1 = ``conv1, bn1``
(stem), 2 = ``layer1``, 3 = ``layer2``, 4 = ``layer3``, 5 = ``layer4``. A frozen BatchNorm is applied
through its conv's weights (:func:`~retinanet.modeling.norm.conv_bn`); modules and keys stay the same.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from torch import Tensor, nn

from retinanet.modeling.backbone_base import Backbone
from retinanet.modeling.conv import conv3x3
from retinanet.modeling.norm import conv_bn, norm_layer

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 (stride) -> 3x3, identity or 1x1 projection shortcut."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        norm: Callable[[int], nn.Module],
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64")
        self.conv1 = conv3x3(inplanes, planes, stride, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, bias=False)
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

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        norm: Callable[[int], nn.Module],
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv3x3(width, width, stride, groups, bias=False)
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


class ResNet(Backbone):
    """ResNet / ResNeXt body (torchvision layout, no avgpool/fc). Returns outputs of layer2..layer4."""

    conv1: nn.Module  # the stem's modules become FusedConv2d / Identity in an inference-fused copy
    bn1: nn.Module
    relu: nn.Module
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(
        self,
        name: str,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        norm: str = "frozen_bn",
        groups: int = 1,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        self.name = name
        make_norm = norm_layer(norm)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = make_norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(inplanes, planes, stride if j == 0 else 1, make_norm, groups, width_per_group))
                inplanes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = [128 * block.expansion, 256 * block.expansion, 512 * block.expansion]
        self.stages = {1: ["conv1", "bn1"], 2: ["layer1"], 3: ["layer2"], 4: ["layer3"], 5: ["layer4"]}
        self.init_weights()

    def forward(self, x: Tensor) -> list[Tensor]:
        self.check_images(x)
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x)))
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
