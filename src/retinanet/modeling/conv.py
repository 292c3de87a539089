"""The 3x3 convolution of the detector's wide layers, run through Winograd F(4x4, 3x3) on the CPU.

:class:`WinogradConv2d` is an ``nn.Conv2d`` (3x3, stride 1, padding 1; same parameters and state_dict
keys) whose forward and backward use :func:`~retinanet.ops.winograd.winograd_conv3x3_autograd` where
that is the faster, supported path: ``winograd`` set (on by default for ``WINOGRAD_MIN_CHANNELS`` or
more input channels, ungrouped), a float32 CPU input of at least ``WINOGRAD_MIN_POSITIONS`` positions, no
autocast. Elsewhere (CUDA, bf16, small maps, TorchScript) it is ``F.conv2d``. The head towers and output
convs, the FPN output convs and the ResNet blocks' stride-1 3x3 convs are built with :func:`conv3x3`.

``set_winograd(module, enabled)`` switches every such conv (``model.winograd`` in the config);
``winograd_disabled(module)`` turns them off for a block of code (export traces plain convolutions).
Thresholds and speed: ``benchmarks/bench_winograd.py``, BENCHMARKS.md.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.ops.winograd import winograd_applies, winograd_conv3x3_autograd

__all__ = [
    "WinogradConv2d",
    "conv3x3",
    "set_winograd",
    "winograd_disabled",
    "WINOGRAD_MIN_CHANNELS",
    "WINOGRAD_MIN_POSITIONS",
]

# Where Winograd beats oneDNN's direct conv (benchmarks/bench_winograd.py, BENCHMARKS.md)
WINOGRAD_MIN_CHANNELS = 256
WINOGRAD_MIN_POSITIONS = 256


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 3, padding=1, groups=groups, bias=bias)`` that runs through
    Winograd where it applies (see the module doc). ``winograd``: this conv's switch."""

    __jit_unused_properties__ = ["eligible"]

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, groups=groups, bias=bias)
        self.winograd = self.eligible

    @property
    def eligible(self) -> bool:
        """Wide and ungrouped enough for Winograd to pay (``WINOGRAD_MIN_CHANNELS``)."""
        return self.groups == 1 and self.in_channels >= WINOGRAD_MIN_CHANNELS

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self.winograd:
            return self.conv(x, self.weight, self.bias)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def conv(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """This conv's geometry with the given ``weight`` / ``bias`` (a folded BatchNorm's, say)."""
        if self.winograd and winograd_applies(x, WINOGRAD_MIN_POSITIONS):
            return winograd_conv3x3_autograd(x, weight, bias)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    """A 3x3 conv with padding 1: :class:`WinogradConv2d` at stride 1, ``nn.Conv2d`` otherwise."""
    if stride == 1:
        return WinogradConv2d(in_channels, out_channels, bias=bias, groups=groups)
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=bias)


def set_winograd(module: nn.Module, enabled: bool) -> int:
    """Switch Winograd on (the eligible convs) or off for every :class:`WinogradConv2d` in ``module``;
    returns how many convs use it now."""
    count = 0
    for m in module.modules():
        if isinstance(m, WinogradConv2d):
            m.winograd = bool(enabled) and m.eligible
            count += m.winograd
    return count


@contextmanager
def winograd_disabled(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block every :class:`WinogradConv2d` of ``module`` is a plain conv; the switches are
    restored after."""
    convs = [m for m in module.modules() if isinstance(m, WinogradConv2d)]
    saved = [m.winograd for m in convs]
    for m in convs:
        m.winograd = False
    try:
        yield module
    finally:
        for m, s in zip(convs, saved):
            m.winograd = s
