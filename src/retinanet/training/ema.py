"""Weight EMA: an exponential moving average of a model's weights, updated after each optimizer step.

``ModelEMA(model, decay, tau)`` holds ``module``, a copy of the model (eval mode, no gradients). After
the ``n``-th optimizer step :meth:`ModelEMA.update` sets every trainable parameter to

    ema = d * ema + (1 - d) * param,   d = decay * (1 - exp(-n / tau))   (d = decay when tau == 0)

so the average follows the weights closely early in training and slowly later (the ramp of the
YOLOX / mmdetection detector recipes). Frozen parameters and all buffers (FrozenBatchNorm2d statistics,
BatchNorm running statistics and counters) are copied from the model as they are. A DDP-wrapped model
is unwrapped. :meth:`state_dict` is a plain model state dict (the same keys as the model's), so a
checkpoint's ``"ema"`` entry loads into a :class:`~retinanet.modeling.retinanet.RetinaNet` like its
``"model"``; the update count is stored beside it.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
from torch import nn

from retinanet.modeling.state_dict import load_model_state

__all__ = ["ModelEMA"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


class ModelEMA:
    """The EMA copy of ``model``; see the module docstring."""

    def __init__(self, model: nn.Module, decay: float = 0.9998, tau: float = 2000.0) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau = float(decay), float(tau)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay of the ``updates``-th update."""
        if self.tau <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in the weights of ``model`` (the trained one, possibly DDP-wrapped)."""
        src = _unwrap(model)
        self.updates += 1
        d = self.decay_at(self.updates)
        mine = dict(self.module.named_parameters())
        for name, p in src.named_parameters():
            e = mine[name]
            if p.requires_grad:
                e.mul_(d).add_(p.detach(), alpha=1.0 - d)
            else:
                e.copy_(p)
        mine_buffers = dict(self.module.named_buffers())
        for name, b in src.named_buffers():
            mine_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, Any], updates: int) -> None:
        """Restore the averaged weights (a model state dict) and the update count."""
        load_model_state(self.module, state)
        self.updates = int(updates)
