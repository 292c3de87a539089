"""Inference-only fusion of a RetinaNet (or any of this package's backbones / FPN / heads).

``fuse_for_inference(module, inplace=False)`` returns a module that computes the same outputs (up to
float rounding) with fewer passes over memory:

- every :class:`~retinanet.modeling.backbone.FrozenBatchNorm2d` is folded into the conv that feeds it
  (weights scaled per output channel, a bias added; computed in float64);
- each conv then runs as one :class:`FusedConv2d`: ``F.conv2d`` with the folded bias, followed by the
  in-place residual add and ReLU / ReLU6 (default, ``use_mkldnn=False``);
- optionally (``use_mkldnn=True``) conv + bias + residual add + activation run as one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise``, the op ``torch.compile`` uses for the same fusion),
  which saves the elementwise passes and their thread synchronisations. Measured on the project's
  2-vCPU machine (BENCHMARKS.md) this is no faster on a quiet machine and sometimes a few % slower,
  but much faster when other processes compete for the cores (fewer parallel regions to wait on); it
  falls back to the plain path where the op is missing or the input is not CPU float32 without
  autograd.

The result is for inference only: its ``state_dict`` is not the original's (BatchNorm entries are
gone, conv weights are scaled), so keep the unfused model for checkpoints, training and export; a
fused :class:`~retinanet.modeling.retinanet.RetinaNet` refuses ``train()``. The original module is
left untouched unless ``inplace=True``.

Structure recognised (as this package lays modules out): ResNet ``Bottleneck`` / ``BasicBlock``
(conv-BN-ReLU, conv-BN + shortcut, ReLU), the ResNet stem ``conv1, bn1, relu``, ``nn.Sequential``
runs ``[Conv2d, FrozenBatchNorm2d?, ReLU | ReLU6?]`` (MobileNetV2, FPN blocks, head towers), and any
other bare ``Conv2d`` (FPN P6/P7, head output convs). GroupNorm heads keep their GroupNorm and ReLU.
"""

from __future__ import annotations

import copy
import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.modeling.backbone import BasicBlock, Bottleneck, FrozenBatchNorm2d, ResNet

__all__ = ["FusedConv2d", "fuse_for_inference", "mkldnn_fusion_available"]

_ACTS = (None, "relu", "relu6")


@functools.lru_cache(maxsize=1)
def mkldnn_fusion_available() -> bool:
    """True when oneDNN's fused convolution ops exist in this PyTorch build and give correct results
    (checked once on a tiny problem against ``F.conv2d``)."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return False
        mk = torch.ops.mkldnn
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 8, 5, 6, generator=g).contiguous(memory_format=torch.channels_last)
        o = torch.randn(1, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(4, 8, 3, 3, generator=g)
        b = torch.randn(4, generator=g)
        ref = F.conv2d(x, w, b, stride=2, padding=1)
        with torch.no_grad():
            packed = mk._reorder_convolution_weight(w, [1, 1], [2, 2], [1, 1], 1, list(x.shape))
            y1 = mk._convolution_pointwise(x, packed, b, [1, 1], [2, 2], [1, 1], 1, "relu", [], "")
            y2 = mk._convolution_pointwise.binary(x, o, packed, b, [1, 1], [2, 2], [1, 1], 1, "add", 1.0,
                                                  "relu", [], "")
        return bool(torch.allclose(y1, ref.relu(), atol=1e-4) and torch.allclose(y2, (ref + o).relu(), atol=1e-4))
    except Exception:  # noqa: BLE001 - any failure means: use the plain path
        return False


class FusedConv2d(nn.Module):
    """``act(conv(x) [+ residual])`` with a folded FrozenBatchNorm2d, for inference.

    ``forward(x, residual=None)``: ``x [B, C_in, H, W]``; ``residual`` (optional) of the output's shape
    is added before the activation (ResNet shortcut). ``act`` is None, ``"relu"`` or ``"relu6"``.
    Weights are buffers (nothing trainable). ``F.conv2d`` and in-place ops, or with ``use_mkldnn`` (on
    CPU float32 inputs without autograd) one oneDNN call for conv + bias + add + activation.
    """

    def __init__(self, conv: nn.Conv2d, bn: Optional[FrozenBatchNorm2d] = None, act: Optional[str] = None,
                 use_mkldnn: Optional[bool] = None) -> None:
        super().__init__()
        if act not in _ACTS:
            raise ValueError(f"FusedConv2d: act must be one of {_ACTS}, got {act!r}")
        if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv2d: needs an nn.Conv2d with numeric zero padding")
        w = conv.weight.detach()
        b = conv.bias.detach() if conv.bias is not None else None
        if bn is not None:
            if bn.num_features != conv.out_channels:
                raise ValueError(f"FusedConv2d: BatchNorm has {bn.num_features} channels, conv gives "
                                 f"{conv.out_channels}")
            scale, shift = (t.detach().double() for t in bn.scale_shift())
            fw = w.double() * scale.view(-1, 1, 1, 1)
            fb = shift if b is None else b.double() * scale + shift
            w, b = fw.to(w.dtype), fb.to(w.dtype)
        if b is None:
            b = torch.zeros(conv.out_channels, dtype=w.dtype, device=w.device)
        memory_format = torch.channels_last if (w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last)
                                                and not w.is_contiguous()) else torch.contiguous_format
        self.register_buffer("weight", w.clone().contiguous(memory_format=memory_format))
        self.register_buffer("bias", b.clone().contiguous())
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        self.act = act
        self.use_mkldnn = bool(use_mkldnn) and mkldnn_fusion_available()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={tuple(self.stride)}, "
                f"padding={tuple(self.padding)}, groups={self.groups}, act={self.act}, mkldnn={self.use_mkldnn}")

    def _fast(self, x: Tensor) -> bool:
        return (self.use_mkldnn and x.device.type == "cpu" and x.dtype == torch.float32
                and self.weight.dtype == torch.float32 and x.dim() == 4
                and not (torch.is_grad_enabled() and x.requires_grad))

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        if self._fast(x) and (residual is None or (residual.dtype == x.dtype and residual.device == x.device)):
            mk = torch.ops.mkldnn
            w = self.weight
            unary, scalars = ("none", []) if self.act is None else (
                ("relu", []) if self.act == "relu" else ("hardtanh", [0.0, 6.0]))
            if residual is None:
                return mk._convolution_pointwise(x, w, self.bias, self.padding, self.stride, self.dilation,
                                                 self.groups, unary, scalars, "")
            # oneDNN post-ops want the addend in the output's layout
            fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not \
                x.is_contiguous() else torch.contiguous_format
            residual = residual.contiguous(memory_format=fmt)
            return mk._convolution_pointwise.binary(
                x, residual, w, self.bias, self.padding, self.stride, self.dilation, self.groups, "add", 1.0,
                None if self.act is None else unary, scalars, "")
        y = F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype), self.stride, self.padding,
                     self.dilation, self.groups)
        if residual is not None:
            y = y.add_(residual) if not (torch.is_grad_enabled() and y.requires_grad) else y + residual
        if self.act == "relu":
            y = y.relu_()
        elif self.act == "relu6":
            y = y.clamp_(0.0, 6.0)
        return y


class FusedBottleneck(nn.Module):
    """Inference form of :class:`~retinanet.modeling.backbone.Bottleneck` (and of ``BasicBlock`` when
    ``conv3`` is None): ``relu(conv3(relu(conv2(relu(conv1(x))))) + shortcut(x))`` with BN folded."""

    def __init__(self, block: nn.Module, use_mkldnn: Optional[bool]) -> None:
        super().__init__()
        self.conv1 = FusedConv2d(block.conv1, block.bn1, "relu", use_mkldnn)
        last_act_conv = isinstance(block, Bottleneck)
        if last_act_conv:
            self.conv2 = FusedConv2d(block.conv2, block.bn2, "relu", use_mkldnn)
            self.conv3 = FusedConv2d(block.conv3, block.bn3, "relu", use_mkldnn)
        else:
            self.conv2 = FusedConv2d(block.conv2, block.bn2, "relu", use_mkldnn)
            self.conv3 = None
        self.downsample: Optional[FusedConv2d] = None
        if block.downsample is not None:
            ds_conv, ds_bn = block.downsample[0], block.downsample[1]
            self.downsample = FusedConv2d(ds_conv, _as_frozen_bn(ds_bn), None, use_mkldnn)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        if self.conv3 is None:  # BasicBlock: the second conv takes the shortcut
            return self.conv2(self.conv1(x), residual=identity)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


def _as_frozen_bn(m: nn.Module) -> Optional[FrozenBatchNorm2d]:
    """A FrozenBatchNorm2d equivalent of an eval-mode BatchNorm2d (or the FrozenBatchNorm2d itself)."""
    if isinstance(m, FrozenBatchNorm2d):
        return m
    if isinstance(m, nn.BatchNorm2d) and m.track_running_stats and m.running_mean is not None:
        f = FrozenBatchNorm2d(m.num_features, m.eps).to(m.running_mean.device)
        with torch.no_grad():
            f.weight.copy_(m.weight if m.affine else torch.ones_like(m.running_mean))
            f.bias.copy_(m.bias if m.affine else torch.zeros_like(m.running_mean))
            f.running_mean.copy_(m.running_mean)
            f.running_var.copy_(m.running_var)
        return f
    return None


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))


def _fuse_sequential(seq: nn.Sequential, use_mkldnn: Optional[bool]) -> None:
    """Rewrite runs ``[Conv2d, BN?, ReLU|ReLU6?]`` of an ``nn.Sequential`` in place."""
    mods = list(seq._modules.items())
    i = 0
    while i < len(mods):
        name, m = mods[i]
        if isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            j = i + 1
            bn = None
            if j < len(mods) and _is_bn(mods[j][1]):
                bn = _as_frozen_bn(mods[j][1])
                if bn is None:  # a BatchNorm in training statistics mode: leave this run alone
                    i += 1
                    continue
                j += 1
            act = None
            if j < len(mods) and type(mods[j][1]) in (nn.ReLU, nn.ReLU6):
                act = "relu" if type(mods[j][1]) is nn.ReLU else "relu6"
                j += 1
            seq._modules[name] = FusedConv2d(m, bn, act, use_mkldnn)
            for k in range(i + 1, j):
                seq._modules[mods[k][0]] = nn.Identity()
            i = j
        else:
            i += 1


def _fuse_tree(module: nn.Module, use_mkldnn: Optional[bool]) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, (Bottleneck, BasicBlock)):
            setattr(module, name, FusedBottleneck(child, use_mkldnn))
            continue
        if isinstance(child, nn.Sequential):
            _fuse_sequential(child, use_mkldnn)
        _fuse_tree(child, use_mkldnn)
    if isinstance(module, ResNet) and isinstance(module.conv1, nn.Conv2d):
        bn = _as_frozen_bn(module.bn1)
        if bn is not None:
            module.conv1 = FusedConv2d(module.conv1, bn, "relu", use_mkldnn)
            module.bn1 = nn.Identity()
            module.relu = nn.Identity()
    # any conv left on its own (FPN P6/P7, head output convs)
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d and child.padding_mode == "zeros" and not isinstance(child.padding, str):
            setattr(module, name, FusedConv2d(child, None, None, use_mkldnn))


def fuse_for_inference(module: nn.Module, inplace: bool = False, use_mkldnn: Optional[bool] = None) -> nn.Module:
    """The inference-fused form of ``module`` (see the module doc); eval mode, no gradients.

    ``use_mkldnn``: False / None (default) = plain PyTorch ops on the folded weights; True = one oneDNN
    fused convolution per conv (raises if this PyTorch build lacks it).
    """
    if use_mkldnn and not mkldnn_fusion_available():
        raise RuntimeError("fuse_for_inference: oneDNN fused convolution is not available in this PyTorch build")
    if not inplace:
        module = copy.deepcopy(module)
    module.eval()
    _fuse_tree(module, use_mkldnn)
    for p in module.parameters():
        p.requires_grad_(False)
    return module
