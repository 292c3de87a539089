"""Reduced-precision inference: ``test.amp: bf16`` runs the detector under ``torch.autocast``.

:func:`with_amp` ``(model, cfg)`` returns ``model`` itself (``test.amp: off``) or an :class:`Autocast`
wrapper: convolutions run in bfloat16 (on CPUs with AMX or AVX512-BF16, and on CUDA) while
post-processing stays in float32, because box decoding promotes to the float32 anchors. Detections
come back as float32, with the contract of the wrapped model (a list of ``{boxes [d, 4], scores [d],
labels [d]}``). Measured speed and AP change: BENCHMARKS.md.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from retinanet.config import Config

__all__ = ["Autocast", "with_amp", "native_bf16"]

log = logging.getLogger("retinanet.inference")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (a CPU without it emulates it, slower than fp32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: absent in some builds
    return bool(check()) if check is not None else False


def _device(model: nn.Module) -> torch.device:
    """Where ``model``'s tensors live (a BN-folded model holds buffers only)."""
    tensor = next(iter(model.buffers()), None)
    if tensor is None:
        tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _to_float32(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_float32(v) for v in x)
    return x


class Autocast(nn.Module):
    """``model`` run under ``torch.autocast(device, dtype)``; floating outputs returned as float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(_device(self.model).type, dtype=self.dtype):
            out = self.model(*args, **kwargs)
        return _to_float32(out)

    def train(self, mode: bool = True) -> "Autocast":
        self.model.train(mode)  # a fused (eval-only) model refuses mode=True, as it should
        self.training = mode
        return self


def with_amp(model: nn.Module, cfg: Config) -> nn.Module:
    """``model`` wrapped as ``cfg.test.amp`` says (``off``: ``model`` itself; ``bf16``: :class:`Autocast`)."""
    if cfg.test.amp == "off":
        return model
    if not native_bf16(_device(model)):
        log.warning("test.amp=bf16 on a device without native bfloat16: emulated, slower than float32")
    wrapped = Autocast(model, torch.bfloat16)
    wrapped.training = model.training
    return wrapped
