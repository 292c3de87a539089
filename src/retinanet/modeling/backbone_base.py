"""The contract every backbone keeps, and freezing its first stages.

A :class:`Backbone` takes a normalized image batch ``x[B, 3, H, W]`` and returns the feature list
``[C3, C4, C5]`` at strides 8, 16 and 32 (spatial size ``ceil(H / s) x ceil(W / s)``), with the channel
counts in ``.out_channels``. Subclasses (:mod:`retinanet.modeling.resnet`,
:mod:`retinanet.modeling.mobilenet`) name their five stages in ``.stages``; ``freeze(k)`` makes the
parameters of stages ``1..k`` untrainable and keeps their BatchNorm in eval mode.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """Base class: ``forward(x[B,3,H,W]) -> [C3, C4, C5]``, ``.out_channels``, ``.strides``, freezing.

    Subclasses fill ``stages`` (stage index 1..5 -> list of submodule names) and ``name``.
    """

    name: str = ""
    out_channels: list[int]
    strides: list[int]
    stages: dict[int, list[str]]
    #: key prefixes of the ImageNet classification files that a detector backbone does not use
    ignored_weight_prefixes: tuple[str, ...] = ("fc.", "classifier.")

    def __init__(self) -> None:
        super().__init__()
        self.freeze_at = 0
        self.strides = [8, 16, 32]

    def init_weights(self) -> None:
        """The random init of a backbone built without weights: Kaiming-normal (fan-out, ReLU gain)
        convs, BatchNorm with weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_images(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` is an image batch ``[B, 3, H, W]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [B, 3, H, W], got shape {tuple(x.shape)}")

    def freeze(self, freeze_at: int) -> None:
        """Make stages ``1..freeze_at`` untrainable (requires_grad False, BatchNorm kept in eval mode)."""
        if not isinstance(freeze_at, int) or isinstance(freeze_at, bool) or not 0 <= freeze_at <= 5:
            raise ValueError(f"freeze_at must be an int in 0..5, got {freeze_at!r}")
        self.freeze_at = freeze_at
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def frozen_modules(self) -> list[nn.Module]:
        """The submodules of stages ``1..freeze_at``."""
        return [self.get_submodule(n) for s in range(1, self.freeze_at + 1) for n in self.stages[s]]

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode:
            for module in self.frozen_modules():
                for m in module.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self
