"""Tensor operations on boxes and anchors (no ``nn.Module``, no model state).

- :mod:`~retinanet.ops.boxes`: area, IoU, clipping, small-box filtering (and the helpers shared below);
- :mod:`~retinanet.ops.box_coder`: anchor-relative box deltas;
- :mod:`~retinanet.ops.nms`: exact vectorized (batched) non-maximum suppression;
- :mod:`~retinanet.ops.anchors`: the anchor grid of the FPN levels;
- :mod:`~retinanet.ops.matcher`: the IoU anchor-to-gt matcher;
- :mod:`~retinanet.ops.topk`: top-k above a threshold (post-processing candidates);
- :mod:`~retinanet.ops.focal_kernel`: the fused CPU kernel behind :func:`retinanet.losses.sigmoid_focal_loss`.

The functions ``nms`` and ``batched_nms`` are imported from :mod:`retinanet.ops.nms` (the module keeps
its name here).
"""

from retinanet.ops.anchors import AnchorGenerator
from retinanet.ops.box_coder import BoxCoder
from retinanet.ops.boxes import box_area, box_iou, clip_boxes, remove_small_boxes
from retinanet.ops.matcher import Matcher

__all__ = ["box_area", "box_iou", "clip_boxes", "remove_small_boxes", "BoxCoder", "AnchorGenerator", "Matcher"]
