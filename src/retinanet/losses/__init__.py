"""Losses of RetinaNet: the focal loss and sigmoid cross-entropy (:mod:`~retinanet.losses.focal`) and the
box regression losses (:mod:`~retinanet.losses.box`)."""

from retinanet.losses.box import giou_loss, l1_loss, smooth_l1_loss
from retinanet.losses.focal import sigmoid_cross_entropy_loss, sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss", "sigmoid_cross_entropy_loss", "smooth_l1_loss", "l1_loss", "giou_loss"]
