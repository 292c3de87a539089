"""Inference-only fusion of a RetinaNet (or any of this package's backbones / FPN / heads).

``fuse_for_inference(module, inplace=False)`` returns a module that computes the same outputs (up to
float rounding) with fewer passes over memory: every frozen (or eval-mode) BatchNorm is folded into the
conv that feeds it (:func:`~retinanet.modeling.norm.fold_frozen_bn`, in float64), and each conv runs as
one :class:`FusedConv2d`: ``F.conv2d`` with the folded bias, then the in-place residual add and
ReLU / ReLU6.

The result is for inference only: its ``state_dict`` is not the original's (BatchNorm entries are gone,
conv weights are scaled), so keep the unfused model for checkpoints, training and export. The original
module is left untouched unless ``inplace=True``.

Structure recognised: ResNet ``Bottleneck`` / ``BasicBlock``, the ResNet stem ``conv1, bn1, relu``,
``nn.Sequential`` runs ``[Conv2d, BatchNorm?, ReLU | ReLU6?]`` (MobileNetV2, FPN blocks, head towers),
and any other bare ``Conv2d`` (FPN P6/P7, head output convs). GroupNorm heads keep their GroupNorm and
ReLU.
"""

from __future__ import annotations

import copy
from typing import Optional, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.modeling.conv import WINOGRAD_MIN_CHANNELS, WINOGRAD_MIN_POSITIONS
from retinanet.modeling.norm import FrozenBatchNorm2d, fold_frozen_bn
from retinanet.modeling.resnet import BasicBlock, Bottleneck, ResNet
from retinanet.ops.winograd import winograd_applies, winograd_conv3x3, winograd_weights

__all__ = ["FusedConv2d", "fuse_for_inference"]

_ACTS = (None, "relu", "relu6")

M = TypeVar("M", bound=nn.Module)


class FusedConv2d(nn.Module):
    """``act(conv(x) [+ residual])`` with a folded FrozenBatchNorm2d, for inference.

    ``forward(x, residual=None)``: ``x [B, C_in, H, W]``; ``residual`` (optional) of the output's shape
    is added before the activation (ResNet shortcut). ``act`` is None, ``"relu"`` or ``"relu6"``.
    Weights are buffers (nothing trainable). After :meth:`use_winograd`, a 3x3 stride-1 conv runs
    through :func:`~retinanet.ops.winograd.winograd_conv3x3` where that applies (float32 CPU input of at
    least ``winograd_min_positions`` positions, no autocast), else ``F.conv2d``.
    """

    weight: Tensor
    bias: Tensor
    winograd_u: Optional[Tensor]

    def __init__(self, conv: nn.Conv2d, bn: Optional[FrozenBatchNorm2d] = None, act: Optional[str] = None) -> None:
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"FusedConv2d: act must be one of {_ACTS}, got {act!r}")
        if not _plain_conv(conv):
            raise ValueError("FusedConv2d: needs an nn.Conv2d with numeric zero padding")
        w = conv.weight.detach()
        b = conv.bias.detach() if conv.bias is not None else None
        if bn is not None:
            if bn.num_features != conv.out_channels:
                raise ValueError(
                    f"FusedConv2d: BatchNorm has {bn.num_features} channels, conv gives {conv.out_channels}"
                )
            with torch.no_grad():
                fw, fb = fold_frozen_bn(bn, w.double(), None if b is None else b.double())
            w, b = fw.to(w.dtype), fb.to(w.dtype)
        if b is None:
            b = torch.zeros(conv.out_channels, dtype=w.dtype, device=w.device)
        memory_format = (
            torch.channels_last
            if (w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
            else torch.contiguous_format
        )
        self.register_buffer("weight", w.clone().contiguous(memory_format=memory_format))
        self.register_buffer("bias", b.clone().contiguous())
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = list(conv.stride)
        self.padding = list(cast(tuple[int, ...], conv.padding))  # _plain_conv: not "same" / "valid"
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.act = act
        self.register_buffer("winograd_u", None, persistent=False)
        self.winograd_min_positions = 0
        if getattr(conv, "winograd", False):  # a WinogradConv2d with its switch on
            self.use_winograd()

    def use_winograd(self, min_positions: int = WINOGRAD_MIN_POSITIONS) -> bool:
        """Precompute the Winograd-domain weights if this is a 3x3, stride-1, padding-1, undilated,
        ungrouped conv; returns whether it will use them (on inputs of >= ``min_positions`` positions)."""
        plain_3x3 = (self.kernel_size, self.stride, self.padding, self.dilation, self.groups) == (
            (3, 3),
            [1, 1],
            [1, 1],
            [1, 1],
            1,
        )
        if plain_3x3:
            self.winograd_u = winograd_weights(self.weight)
            self.winograd_min_positions = min_positions
        return plain_3x3

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, groups={self.groups}, act={self.act}"
        )

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if self.winograd_u is not None and winograd_applies(x, self.winograd_min_positions) and not x.requires_grad:
            y = winograd_conv3x3(x, self.winograd_u, self.bias)
        else:
            y = F.conv2d(
                x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding, self.dilation, self.groups
            )
        if residual is not None:
            y = y.add_(residual) if not (torch.is_grad_enabled() and y.requires_grad) else y + residual
        if self.act == "relu":
            y = y.relu_()
        elif self.act == "relu6":
            y = y.clamp_(0.0, 6.0)
        return y


class FusedBottleneck(nn.Module):
    """Inference form of :class:`~retinanet.modeling.resnet.Bottleneck` (and of ``BasicBlock`` when
    ``conv3`` is None): ``relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut(x))`` with BN folded."""

    def __init__(self, block: BasicBlock | Bottleneck) -> None:
        super().__init__()
        self.conv1 = FusedConv2d(block.conv1, _as_frozen_bn(block.bn1), "relu")
        self.conv2 = FusedConv2d(block.conv2, _as_frozen_bn(block.bn2), "relu")
        self.conv3: Optional[FusedConv2d] = None
        if isinstance(block, Bottleneck):
            self.conv3 = FusedConv2d(block.conv3, _as_frozen_bn(block.bn3), "relu")
        self.downsample: Optional[FusedConv2d] = None
        if block.downsample is not None:
            self.downsample = FusedConv2d(cast(nn.Conv2d, block.downsample[0]), _as_frozen_bn(block.downsample[1]))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.conv3 is None:  # BasicBlock: the second conv takes the shortcut
            return self.conv2(self.conv1(x), residual=identity)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


def _plain_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))


def _foldable(m: nn.Module) -> bool:
    """A FrozenBatchNorm2d, or a BatchNorm2d that normalizes with running statistics in eval mode."""
    return isinstance(m, FrozenBatchNorm2d) or (
        isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None
    )


def _norms(block: nn.Module) -> list[nn.Module]:
    return [m for m in block.modules() if _is_bn(m)]


def _as_frozen_bn(m: nn.Module) -> FrozenBatchNorm2d:
    """A FrozenBatchNorm2d equivalent of a foldable BatchNorm (or the FrozenBatchNorm2d itself)."""
    if isinstance(m, FrozenBatchNorm2d):
        return m
    if not (isinstance(m, nn.BatchNorm2d) and _foldable(m)):
        raise ValueError(f"cannot fold {m}: not a BatchNorm with running statistics")
    mean, var = m.running_mean, m.running_var
    assert mean is not None and var is not None  # _foldable: it tracks running statistics
    f = FrozenBatchNorm2d(m.num_features, m.eps).to(mean.device)
    with torch.no_grad():
        f.weight.copy_(m.weight if m.affine else torch.ones_like(mean))
        f.bias.copy_(m.bias if m.affine else torch.zeros_like(mean))
        f.running_mean.copy_(mean)
        f.running_var.copy_(var)
    return f


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Rewrite runs ``[Conv2d, BN?, ReLU|ReLU6?]`` of an ``nn.Sequential`` in place."""
    mods = list(seq._modules.items())
    i = 0
    while i < len(mods):
        name, m = mods[i]
        if not _plain_conv(m):
            i += 1
            continue
        j = i + 1
        bn = None
        if j < len(mods) and _is_bn(mods[j][1]):
            if not _foldable(mods[j][1]):  # a BatchNorm using batch statistics: leave this run alone
                i += 1
                continue
            bn = _as_frozen_bn(mods[j][1])
            j += 1
        act = None
        if j < len(mods) and type(mods[j][1]) in (nn.ReLU, nn.ReLU6):
            act = "relu" if type(mods[j][1]) is nn.ReLU else "relu6"
            j += 1
        seq._modules[name] = FusedConv2d(cast(nn.Conv2d, m), bn, act)  # _plain_conv(m) holds
        for k in range(i + 1, j):
            seq._modules[mods[k][0]] = nn.Identity()
        i = j


def _fuse_tree(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, (Bottleneck, BasicBlock)) and all(map(_foldable, _norms(child))):
            setattr(module, name, FusedBottleneck(child))
            continue
        if isinstance(child, nn.Sequential):
            _fuse_sequential(child)
        _fuse_tree(child)
    if isinstance(module, ResNet) and isinstance(module.conv1, nn.Conv2d) and _foldable(module.bn1):
        module.conv1 = FusedConv2d(module.conv1, _as_frozen_bn(module.bn1), "relu")
        module.bn1 = nn.Identity()
        module.relu = nn.Identity()
    # any conv left on its own (FPN P6/P7, head output convs)
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and _plain_conv(child):
            setattr(module, name, FusedConv2d(child))


def fuse_for_inference(module: M, inplace: bool = False, winograd: Optional[bool] = None) -> M:
    """The inference-fused form of ``module`` (see the module doc); eval mode, no gradients.

    ``winograd``: None keeps each conv's own switch (:class:`~retinanet.modeling.conv.WinogradConv2d`);
    True runs every 3x3 stride-1 conv with at least ``WINOGRAD_MIN_CHANNELS`` input channels through
    Winograd F(4x4, 3x3) on maps of at least ``WINOGRAD_MIN_POSITIONS`` positions (CPU, float32); False
    none.
    """
    if not inplace:
        module = copy.deepcopy(module)
    module.eval()
    _fuse_tree(module)
    for m in module.modules():
        if isinstance(m, FusedConv2d) and winograd is not None:
            m.winograd_u = None
            if winograd and m.in_channels >= WINOGRAD_MIN_CHANNELS and m.groups == 1:
                m.use_winograd()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
