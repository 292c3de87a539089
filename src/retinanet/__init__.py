"""retinanet: RetinaNet and the Focal Loss (Lin et al., 2017) in plain PyTorch.

The names most users need are importable from the package root (loaded on first use)::

    from retinanet import load_config, Trainer, Predictor, RetinaNet, sigmoid_focal_loss
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "sigmoid_focal_loss": "retinanet.losses",
    "sigmoid_cross_entropy_loss": "retinanet.losses",
    "smooth_l1_loss": "retinanet.losses",
    "giou_loss": "retinanet.losses",
    "box_iou": "retinanet.ops",
    "nms": "retinanet.ops.nms",
    "batched_nms": "retinanet.ops.nms",
    "BoxCoder": "retinanet.ops",
    "AnchorGenerator": "retinanet.ops",
    "Matcher": "retinanet.ops",
    "RetinaNet": "retinanet.modeling.retinanet",
    "build_model": "retinanet.modeling.build",
    "Config": "retinanet.config",
    "load_config": "retinanet.config",
    "Trainer": "retinanet.training.trainer",
    "Predictor": "retinanet.inference.predictor",
    "evaluate_coco": "retinanet.inference.coco_eval",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retinanet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
