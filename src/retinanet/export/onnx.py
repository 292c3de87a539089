"""ONNX export of the detector with post-processing inside (``NonMaxSuppression`` for the NMS step).

``write_onnx(program, out, meta)`` converts the ``torch.export`` program of
:class:`~retinanet.export.padded.PaddedDetector` with ``torch.onnx.export`` (the dynamo exporter) and
writes ``out``: inputs ``images [batch, 3, height, width]`` (uint8 or float32, ``meta["input_dtype"]``)
and ``image_sizes int64 [batch, 2]``, outputs ``boxes float32 [batch, D, 4]``, ``scores float32
[batch, D]``, ``labels int64 [batch, D]``, ``num_detections int64 [batch]``, and ``meta`` as the JSON
metadata property ``retinanet``. Two operators get our translations
(:mod:`retinanet.export.nms_op`): ``retinanet::nms_keep`` becomes ``NonMaxSuppression``, and a stable
sort becomes ``TopK`` (stable in ONNX). Needs the ``onnx`` and ``onnxscript`` packages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator

import torch

from retinanet.export.common import ExportError, write_atomic
from retinanet.export.nms_op import onnx_nms_keep, onnx_sort_stable
from retinanet.export.padded import INPUT_NAMES, OUTPUT_NAMES

__all__ = ["write_onnx", "missing_onnx_packages", "translation_table", "OPSET"]

OPSET = 18


def translation_table() -> Dict[Any, Any]:
    """``torch.onnx.export``'s ``custom_translation_table`` for the operators of the detector."""
    return {
        torch.ops.retinanet.nms_keep.default: onnx_nms_keep,
        torch.ops.aten.sort.stable: onnx_sort_stable,
    }


def missing_onnx_packages() -> list[str]:
    """The packages ONNX export needs that are not installed (``onnx``, ``onnxscript``)."""
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return missing


def _name_dims(proto: Any, program: Any) -> None:
    """Name the dynamic dims of the graph's inputs and outputs ``batch``, ``height``, ``width``."""
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == "images")
    shape = node.meta["val"].shape
    dims = ((0, "batch"), (2, "height"), (3, "width"))
    names = {str(shape[i]): key for i, key in dims if not isinstance(shape[i], int)}
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Loggers ``names`` at ERROR: the converter's optimizer logs every step at INFO, and its registry
    warns that torchvision's operators are not there (we use none of them)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def write_onnx(program: Any, out: Path, meta: Dict[str, Any]) -> None:
    """Convert ``program`` and write ``out`` (module docstring); ``onnx.checker`` checks the file."""
    import onnx

    with warnings.catch_warnings(), _quiet("onnxscript", "onnx_ir", "torch.onnx._internal.exporter._registration"):
        warnings.simplefilter("ignore")
        try:
            onnx_program = torch.onnx.export(
                program,
                dynamo=True,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=OPSET,
                custom_translation_table=translation_table(),
                verbose=False,
            )
        except Exception as e:
            raise ExportError(f"ONNX conversion failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
    assert onnx_program is not None  # dynamo=True always returns an ONNXProgram
    proto = onnx_program.model_proto
    _name_dims(proto, program)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "retinanet", json.dumps(meta)
    write_atomic(out, lambda f: f.write(proto.SerializeToString()))
    onnx.checker.check_model(str(out))
