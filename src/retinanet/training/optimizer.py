"""The optimizer of a run: SGD (the paper's) or AdamW over the detector's trainable parameters.

``build_optimizer(cfg, model) -> torch.optim.Optimizer`` at the learning rate ``solver.lr()`` (the base
rate scaled by the global batch). With ``solver.backbone_lr_factor != 1`` the backbone body's trainable
parameters form their own group whose ``lr_factor`` the trainer multiplies into the scheduled rate; the
FPN and head keep factor 1. With factor 1 there is one group, so checkpoints of either kind resume.
"""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import nn

from retinanet.config import Config

__all__ = ["build_optimizer"]


def _param_groups(model: nn.Module, factor: float) -> Union[list[nn.Parameter], list[dict[str, Any]]]:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if factor == 1.0:
        return [p for _, p in trainable]
    body = [p for n, p in trainable if n.startswith("backbone.body.")]
    rest = [p for n, p in trainable if not n.startswith("backbone.body.")]
    groups = ({"params": body, "lr_factor": factor}, {"params": rest, "lr_factor": 1.0})
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    """``solver.optimizer`` (``sgd`` or ``adamw``; AdamW's beta1 is ``solver.momentum``) over ``model``."""
    s = cfg.solver
    params = _param_groups(model, s.backbone_lr_factor)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr(), betas=(s.momentum, 0.999), weight_decay=s.weight_decay)
    return torch.optim.SGD(params, lr=s.lr(), momentum=s.momentum, weight_decay=s.weight_decay)
