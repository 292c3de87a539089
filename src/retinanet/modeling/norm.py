"""Normalization layers of the backbones, and folding a frozen BatchNorm into the conv before it.

- :class:`FrozenBatchNorm2d`: BatchNorm2d with fixed statistics and affine (buffers only), input
  ``[B, C, H, W]`` in any memory format (the output keeps it); loads ``nn.BatchNorm2d`` state dicts.
- :func:`norm_layer`: ``"frozen_bn"`` -> :class:`FrozenBatchNorm2d`, ``"bn"`` -> ``nn.BatchNorm2d``.
- :func:`fold_frozen_bn`: the conv weight ``[C_out, C_in / groups, kh, kw]`` and bias ``[C_out]`` that
  compute ``bn(conv(x))`` in one conv. The one BN fold of the package: used in the training forward
  (:func:`conv_bn`, differentiable) and by :mod:`retinanet.modeling.fuse` for inference.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.modeling.conv import WinogradConv2d

__all__ = ["NORMS", "FrozenBatchNorm2d", "norm_layer", "fold_frozen_bn", "conv_bn"]

NORMS = ("frozen_bn", "bn")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, nothing trainable).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel, computed as
    ``x * scale + shift`` (one ``addcmul``). State dicts of ``nn.BatchNorm2d`` load: their
    ``num_batches_tracked`` entry is ignored.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

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


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The norm module class for ``norm`` (one of ``NORMS``), called with the channel count."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def fold_frozen_bn(bn: FrozenBatchNorm2d, weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Conv ``(weight * scale, bias * scale + shift)`` (a missing bias counts as 0) such that
    ``conv(x, *folded) == bn(conv(x, weight, bias))``.

    Computed in the wider of the weight's and the BN buffers' dtypes (pass float64 weights for an
    exact inference fold) and differentiable with respect to ``weight`` and ``bias``.
    """
    scale, shift = bn.scale_shift()
    dtype = torch.promote_types(weight.dtype, scale.dtype)
    scale, shift = scale.to(dtype), shift.to(dtype)
    folded_weight = weight.to(dtype) * scale.view(-1, *([1] * (weight.dim() - 1)))
    folded_bias = shift if bias is None else torch.addcmul(shift, bias.to(dtype), scale)
    return folded_weight, folded_bias


def conv_bn(conv: nn.Module, bn: nn.Module, x: Tensor) -> Tensor:
    """``bn(conv(x))``; a :class:`FrozenBatchNorm2d` is folded into the conv's weights first (one pass
    over the output less, forward and backward). Any other norm (``nn.BatchNorm2d``, ``nn.Identity``)
    runs as is."""
    if not (type(bn) is FrozenBatchNorm2d and type(conv) in (nn.Conv2d, WinogradConv2d)):
        return bn(conv(x))
    assert isinstance(conv, nn.Conv2d)
    if conv.padding_mode != "zeros":
        return bn(conv(x))
    weight, bias = fold_frozen_bn(bn, conv.weight, conv.bias)
    dtype = conv.weight.dtype
    if isinstance(conv, WinogradConv2d) and conv.winograd:
        return conv.conv(x, weight.to(dtype), bias.to(dtype))
    return F.conv2d(x, weight.to(dtype), bias.to(dtype), conv.stride, conv.padding, conv.dilation, conv.groups)
