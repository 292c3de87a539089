"""Build a detector from a config and load the weights the config names.

``build_model(cfg) -> RetinaNet``: :meth:`RetinaNet.from_config` (no file is read there), then the
backbone's ``cfg.model.backbone.weights`` (a torchvision-format file, or ``"imagenet"``) when set.
Constructors never read files; this is the one place a config's weight paths are opened.
"""

from __future__ import annotations

import logging

from retinanet.config import Config
from retinanet.modeling.retinanet import RetinaNet
from retinanet.modeling.weights import load_backbone_weights

__all__ = ["build_model"]

log = logging.getLogger("retinanet.model")


def build_model(cfg: Config) -> RetinaNet:
    """The detector of ``cfg`` with the backbone weights of ``cfg.model.backbone.weights`` loaded."""
    model = RetinaNet.from_config(cfg)
    weights = cfg.model.backbone.weights
    if weights is not None:
        report = load_backbone_weights(model.backbone.body, weights)
        log.info("backbone weights: %d tensors from %s", report.loaded, report.path)
    return model
