"""Pictures: detections and galleries (`draw`, Pillow) and training curves (`plots`, matplotlib)."""

from retinanet.viz.draw import VizError, class_color, draw_detections, make_gallery, side_by_side
from retinanet.viz.plots import TrainingCurves, plot_training_curves, read_training_curves

__all__ = [
    "TrainingCurves",
    "VizError",
    "class_color",
    "draw_detections",
    "make_gallery",
    "plot_training_curves",
    "read_training_curves",
    "side_by_side",
]
