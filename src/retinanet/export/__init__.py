"""Deployment: ONNX, torch.export (pt2) and TorchScript files of a trained detector, post-processing inside."""

from retinanet.export.check import BOX_ATOL, SCORE_ATOL, CheckResult
from retinanet.export.common import ExportError
from retinanet.export.detector import DetectorNetwork, DetectorSpec, ExportableDetector
from retinanet.export.exporter import (
    FORMATS,
    ExportReport,
    check_exported,
    export,
    export_model,
    format_for_path,
    load_exported,
    read_metadata,
)
from retinanet.export.nms_op import nms_keep  # registers torch.ops.retinanet.nms_keep, which pt2 files call

__all__ = [
    "BOX_ATOL",
    "SCORE_ATOL",
    "CheckResult",
    "DetectorNetwork",
    "DetectorSpec",
    "ExportableDetector",
    "FORMATS",
    "ExportError",
    "ExportReport",
    "check_exported",
    "export",
    "export_model",
    "format_for_path",
    "load_exported",
    "nms_keep",
    "read_metadata",
]
