"""Deployment: TorchScript, torch.export (pt2) and ONNX files of a trained detector."""

from retinanet.export.detector import DetectorNetwork, DetectorSpec, ExportableDetector
from retinanet.export.exporter import FORMATS, ExportError, export_model, load_exported, read_metadata

__all__ = [
    "DetectorNetwork",
    "DetectorSpec",
    "ExportableDetector",
    "FORMATS",
    "ExportError",
    "export_model",
    "load_exported",
    "read_metadata",
]
