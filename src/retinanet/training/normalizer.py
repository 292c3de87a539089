"""The divisor of RetinaNet's summed losses: the number of foreground anchors of the global batch.

``LossNormalizer(mode="batch" | "ema", momentum=0.9)(num_fg) -> Tensor`` (scalar). ``num_fg`` is this
process's foreground count; it is summed over all processes (DistributedDataParallel), optionally
smoothed by an exponential moving average (detectron2's normalizer), clamped at 1 as a whole, then
divided by the number of processes, since DDP averages their gradients: W processes then compute
exactly what one process with the global batch computes, even when almost no anchor is foreground.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["LossNormalizer", "NORMALIZER_MODES"]

NORMALIZER_MODES = ("batch", "ema")


class LossNormalizer:
    """Foreground-count normalizer; its EMA state is saved in checkpoints as ``fg_ema``."""

    def __init__(self, mode: str = "batch", momentum: float = 0.9, initial: float = 100.0) -> None:
        if mode not in NORMALIZER_MODES:
            raise ValueError(f"loss normalizer must be one of {NORMALIZER_MODES}, got {mode!r}")
        self.mode = mode
        self.momentum = float(momentum)
        self.initial = float(initial)
        self._ema: Optional[Tensor] = None

    @property
    def fg_ema(self) -> float:
        """The moving average of the global foreground count (its initial value until the first step)."""
        return self.initial if self._ema is None else float(self._ema.item())

    def load(self, fg_ema: float) -> None:
        """Restore the moving average saved by a checkpoint."""
        self.initial, self._ema = float(fg_ema), None

    def __call__(self, num_fg: Tensor) -> Tensor:
        normalizer = num_fg.detach().to(torch.float32).clone()
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(normalizer)
            world = dist.get_world_size()
        if self.mode == "ema":
            if self._ema is None:
                self._ema = torch.tensor(self.initial, dtype=torch.float32, device=normalizer.device)
            self._ema.mul_(self.momentum).add_((1 - self.momentum) * normalizer)
            normalizer = self._ema.clone()
        return normalizer.clamp(min=1.0) / world
