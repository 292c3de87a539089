"""Build a detector from a config and load the weights the config names.

``build_model(cfg, class_names=None) -> RetinaNet``: :meth:`RetinaNet.from_config` (no file is read
there), then the backbone's ``cfg.model.backbone.weights`` (a torchvision-format file, or ``"imagenet"``)
when set, then the whole detector ``cfg.model.weights`` when set (:mod:`retinanet.modeling.finetune`:
everything whose name and shape fit; the classification output re-initialized and its rows copied
for the classes ``class_names`` shares with the source). With both set the detector file is loaded
last, so its tensors win. Constructors never read files; this is the one place a config's weight
paths are opened.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from retinanet.config import Config
from retinanet.data.categories import label_table
from retinanet.modeling.finetune import load_detector_weights
from retinanet.modeling.retinanet import RetinaNet
from retinanet.modeling.weights import load_backbone_weights

__all__ = ["build_model"]

log = logging.getLogger("retinanet.model")


def build_model(cfg: Config, class_names: Optional[Sequence[str]] = None) -> RetinaNet:
    """The detector of ``cfg`` with the weights of ``cfg.model.backbone.weights`` and ``cfg.model.weights``
    loaded. ``class_names``: the names of the ``cfg.model.num_classes`` outputs (the training set's),
    used to keep source classes by name when ``cfg.model.weights`` is set; with
    ``model.label_space="coco_category_ids"`` they default to the COCO names."""
    model = RetinaNet.from_config(cfg)
    m = cfg.model
    if m.backbone.weights is not None:
        report = load_backbone_weights(model.backbone.body, m.backbone.weights)
        log.info("backbone weights: %d tensors from %s", report.loaded, report.path)
    if m.weights is not None:
        if m.backbone.weights is not None:
            log.info(
                "model.weights=%s is loaded over model.backbone.weights=%s: the detector's tensors win",
                m.weights,
                m.backbone.weights,
            )
        if class_names is None and m.label_space == "coco_category_ids":
            class_names = label_table(m.label_space, m.num_classes)[0]
        load_detector_weights(model, m.weights, class_names, prior=m.prior)
    return model
