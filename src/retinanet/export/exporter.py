"""Export a trained checkpoint for deployment, check the file, and load what was exported.

    retinanet export --weights model_final.pth --out model.onnx    # ONNX Runtime & co.
    retinanet export --weights model_final.pth --out model.pt2     # torch.export
    retinanet export --weights model_final.pth --out model.pt      # TorchScript (deprecated)

The format follows the file's suffix (:func:`format_for_path`) unless ``fmt`` / ``--format`` names it.

Every format holds the whole detector: normalize, pad, network, and the eager model's post-processing
(threshold, per-level top-k, decode, clip, per-class NMS, best ``D``). Inputs: RGB images ``[B, 3, H, W]``
already resized (shorter side ``meta["test_min_size"]``, longer at most ``meta["max_size"]``), any batch
size and size in ``meta["input_range"]``. Outputs, in the pixels of the input image:

- **onnx** and **pt2**: ``(images uint8|float32 [B, 3, H, W], image_sizes int64 [B, 2]) -> (boxes float32
  [B, D, 4], scores float32 [B, D], labels int64 [B, D], num_detections int64 [B])``: padded to ``D =
  meta["detections_per_image"]``, by decreasing score, slots past ``num_detections`` hold zeros and
  label -1 (:mod:`retinanet.export.padded`). The input dtype is chosen at export (``input_dtype``,
  ``meta["input_dtype"]``: uint8 0-255 or float32 0-1; by default what the model's resize gives). ONNX does the NMS with
  ``NonMaxSuppression`` and needs nothing of ours to run; a pt2 file needs ``import retinanet.export``
  (the NMS is the operator ``retinanet::nms_keep``).
- **torchscript** (``torch.jit.load``; needs no ``retinanet``): ``forward(images uint8 or float 0-1,
  image_sizes=None, output_sizes=None) -> list of B dicts {boxes [d, 4], scores [d], labels [d]}``, boxes
  in ``output_sizes`` pixels (default: ``image_sizes``, default ``(H, W)``). Deprecated by PyTorch 2.13.

The metadata (:func:`read_metadata`) holds the class names, the input contract and the ``spec`` of
:class:`~retinanet.export.detector.DetectorSpec`. The checkpoint is loaded with ``weights_only`` (or
safetensors): exporting never executes pickled code. With ``check`` the written file is run (ONNX in
ONNX Runtime) on random images of two sizes, batches of 1 and 2, and compared with the eager model
(:mod:`retinanet.export.check`); a file that fails is deleted. :func:`load_exported` returns a callable
with the eager model's contract for every format.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from retinanet.export.check import CheckResult, check_examples, compare_detections
from retinanet.export.common import METADATA_FILE, ExportError, write_atomic
from retinanet.export.detector import DetectorNetwork, DetectorSpec, ExportableDetector
from retinanet.inference.predictor import LoadedDetector, load_detector
from retinanet.inference.runtime import PaddedRunner, onnx_runner, onnx_session
from retinanet.modeling.conv import set_winograd, winograd_disabled
from retinanet.modeling.retinanet import RetinaNet

__all__ = [
    "export",
    "export_model",
    "format_for_path",
    "ExportError",
    "ExportReport",
    "load_exported",
    "read_metadata",
    "FORMATS",
    "INPUT_DTYPES",
    "METADATA_FILE",
]

FORMATS = ("torchscript", "pt2", "onnx")
#: the format a file's suffix stands for (TorchScript files are conventionally ``.pt`` or ``.ts``)
SUFFIX_FORMATS = {".onnx": "onnx", ".pt2": "pt2", ".pt": "torchscript", ".ts": "torchscript"}
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
log = logging.getLogger("retinanet.export")


@dataclass
class ExportReport:
    """What :func:`export` wrote and how its check went (``check`` is None when not checked)."""

    path: Path
    format: str
    check: Optional[CheckResult] = None


def build_torchscript(model: RetinaNet, height: int = 256, width: int = 256) -> torch.jit.ScriptModule:
    """The TorchScript detector of ``model`` (eval mode): traced network + scripted post-processing."""
    model = model.eval()
    images, sizes = check_examples(height, width, torch.float32, dynamic=False)[0]
    network = DetectorNetwork(model).eval()
    with warnings.catch_warnings(), torch.no_grad(), winograd_disabled(model):
        warnings.simplefilter("ignore")  # tracer warnings of shape checks; torch.jit deprecation
        traced = torch.jit.trace(network, (images, sizes), check_trace=False)
        return torch.jit.script(ExportableDetector(traced, DetectorSpec.of(model)))


def _metadata(det: LoadedDetector, fmt: str, size: Tuple[int, int], dtype: str, ranges: Dict[str, Any]) -> Dict:
    spec = DetectorSpec.of(det.model)
    padded = fmt != "torchscript"
    d = spec.detections_per_image
    return {
        "format": fmt,
        "class_names": list(det.class_names),
        "label_to_category_id": [int(c) for c in det.label_to_category_id],
        "mean": spec.pixel_mean,
        "std": spec.pixel_std,
        "size_divisibility": spec.size_divisibility,
        "test_min_size": int(det.cfg.data.test_min_size),
        "max_size": int(det.cfg.data.max_size),
        "resize": det.cfg.data.resize,
        "resize_rounding": det.cfg.data.resize_rounding,
        "label_space": det.cfg.model.label_space,
        "score_thresh": spec.score_thresh,
        "nms_thresh": spec.nms_thresh,
        "topk_candidates": spec.topk_candidates,
        "detections_per_image": d,
        "spec": spec.to_dict(),
        "export_size": list(size),
        "dynamic": ranges["height"][0] != ranges["height"][1] or ranges["batch"][0] != ranges["batch"][1],
        "input_dtype": dtype,
        "input_range": ranges,
        "outputs_layout": "padded" if padded else "list",
        "inputs": {
            "images": f"[B, 3, H, W] RGB {'uint8 0-255' if dtype == 'uint8' else dtype + ' 0-1'}"
            if padded
            else "[B, 3, H, W] RGB, uint8 0-255 or float 0-1",
            "image_sizes": "int64 [B, 2], (h, w) of each image stacked at the top-left of the batch"
            + ("" if padded else " (optional)"),
            **({} if padded else {"output_sizes": "optional int64 [B, 2], (h, w) to return boxes in"}),
        },
        "outputs": (
            f"boxes float32 [B, {d}, 4] (x1, y1, x2, y2) input pixels, scores float32 [B, {d}], labels int64 "
            f"[B, {d}], num_detections int64 [B]; slots >= num_detections are padding (zeros, label -1)"
            if padded
            else "list of dicts: boxes float32 [d, 4] xyxy pixels, scores float32 [d], labels int64 [d]"
        ),
    }


def format_for_path(out: Union[str, Path]) -> str:
    """The export format named by ``out``'s suffix (``SUFFIX_FORMATS``); :class:`ExportError` if none."""
    fmt = SUFFIX_FORMATS.get(Path(out).suffix.lower())
    if fmt is None:
        known = ", ".join(f"{k} ({v})" for k, v in SUFFIX_FORMATS.items())
        raise ExportError(
            f"cannot tell the export format from the file name {str(out)!r}: name it {known}, or pass the format"
        )
    return fmt


def export(
    weights: Union[str, Path],
    out: Union[str, Path],
    fmt: Optional[str] = None,
    config: Optional[str] = None,
    height: int = 256,
    width: int = 256,
    check: bool = True,
    overrides: Optional[List[str]] = None,
    dynamic: bool = True,
    input_dtype: Optional[str] = None,
) -> ExportReport:
    """Load ``weights`` (``config`` for files that carry none), write ``out`` in ``fmt`` (default: the
    format of ``out``'s suffix, :func:`format_for_path`) and check it.

    ``height`` x ``width``: the example input size and the first check size (with ``dynamic=False``,
    pt2 and ONNX accept only it, at batch 1). ``input_dtype`` (``"uint8"`` or ``"float32"``): the image
    dtype of pt2 and ONNX files; default: uint8 for models whose images are resized as uint8
    (``data.resize: pillow``), else float32, so resized images go in unchanged. With ``check``, the
    file is run and compared with the eager model (:class:`ExportError` on a difference, and the file
    is deleted).
    """
    fmt = format_for_path(out) if fmt is None else fmt
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if input_dtype is not None and input_dtype not in INPUT_DTYPES:
        raise ExportError(f"unknown input dtype {input_dtype!r}; choose one of {', '.join(INPUT_DTYPES)}")
    if int(height) < 32 or int(width) < 32:
        raise ExportError(f"export size must be at least 32 x 32, got {height}x{width}")
    if fmt == "onnx":
        _require_onnx(check)
    det = load_detector(weights, config=config, device="cpu", overrides=overrides)
    if det.cfg.test.tta:
        log.warning("test.tta=%s is not exported: the file runs the model on each image once", list(det.cfg.test.tta))
    model = det.model.eval().requires_grad_(False)  # an exporter may turn weights into numpy arrays
    set_winograd(model, False)  # files hold plain convolutions (runtimes choose their own algorithms)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if input_dtype is None:
        input_dtype = "uint8" if det.cfg.data.resize == "pillow" else "float32"
    dtype = INPUT_DTYPES[input_dtype]
    if fmt == "torchscript":
        scripted = build_torchscript(model, height, width)
        side = [1, 2**31 - 1]
        ranges = {"batch": list(side), "height": list(side), "width": list(side)}
        meta = _metadata(det, fmt, (height, width), "uint8 or float32", ranges)
        write_atomic(out, lambda f: _jit_save(scripted, f, {METADATA_FILE: json.dumps(meta)}))
    else:
        from retinanet.export.padded import export_program

        images, sizes = check_examples(height, width, dtype, dynamic=dynamic)[-1]
        try:
            program, ranges = export_program(model, images, sizes, dynamic)
        except Exception as e:
            raise ExportError(f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
        meta = _metadata(det, fmt, (height, width), input_dtype, ranges)
        if fmt == "pt2":
            write_atomic(out, lambda f: _pt2_save(program, f, {METADATA_FILE: json.dumps(meta)}))
        else:
            from retinanet.export.onnx import write_onnx

            write_onnx(program, out, meta)
    report = ExportReport(out, fmt)
    if check:
        try:
            report.check = check_exported(out, model, height, width)
        except BaseException:
            out.unlink(missing_ok=True)  # a file that failed its check is not kept
            raise
        log.debug("checked %s: %s", out, report.check.describe())
    return report


def export_model(weights: Union[str, Path], out: Union[str, Path], fmt: Optional[str] = None, **kwargs: Any) -> Path:
    """:func:`export`, returning the written path."""
    return export(weights, out, fmt, **kwargs).path


def check_exported(path: Union[str, Path], model: RetinaNet, height: int = 256, width: int = 256) -> CheckResult:
    """Run the exported file ``path`` (ONNX in ONNX Runtime) on :func:`check_examples` in its declared
    input range and compare it with ``model`` (:func:`compare_detections`; ExportError on a difference)."""
    run, meta = load_exported(path)
    dtype = torch.uint8 if meta["input_dtype"] != "float32" else torch.float32
    examples = check_examples(height, width, dtype, dynamic=bool(meta["dynamic"]))
    where = f"{path} ({'ONNX Runtime' if meta['format'] == 'onnx' else meta['format']})"
    result = compare_detections(run, model.eval(), where, examples, model.postprocessor.detections_per_image)
    if result.detections == 0:
        log.warning("%s: the eager model finds nothing on the check images: only empty outputs compared", path)
    return result


def _jit_save(module: torch.jit.ScriptModule, f: Any, extra: Dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; the format still loads
        torch.jit.save(module, f, _extra_files=extra)


def _pt2_save(program: Any, f: Any, extra: Dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on weights not on the CPU
        torch.export.save(program, f, extra_files=extra)


def _require_onnx(check: bool) -> None:
    from retinanet.export.onnx import missing_onnx_packages

    missing = missing_onnx_packages()
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            missing.append("onnxruntime")
    if missing:
        raise ExportError(
            f"ONNX export needs the {' and '.join(missing)} package(s), which are not installed: "
            f"pip install {' '.join(missing)}  (or pip install 'retinanet[export]'; or use --format pt2)"
        )


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The metadata dict stored in an exported file (TorchScript, pt2 or ONNX)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":
        try:
            import onnx
        except ImportError:
            raw = onnx_session(path).get_modelmeta().custom_metadata_map.get("retinanet", "{}")
        else:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            raw = props.get("retinanet", "{}")
        return json.loads(raw)
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(f"/{METADATA_FILE}") or name == METADATA_FILE:
                    return json.loads(z.read(name))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a model exported by retinanet (cannot read it: {e})") from None
    raise ExportError(f"{path}: no {METADATA_FILE} inside: not a model exported by retinanet")


def load_exported(
    path: Union[str, Path], map_location: str = "cpu"
) -> Tuple[Callable[..., List[Dict[str, Tensor]]], Dict[str, Any]]:
    """``(detector, metadata)`` of an exported file: ``detector(images [B, 3, H, W], image_sizes=None,
    output_sizes=None) -> list of B dicts {boxes, scores, labels}`` for every format (the TorchScript
    module itself; pt2 and ONNX wrapped by :class:`~retinanet.inference.runtime.PaddedRunner`). ONNX
    runs in ONNX Runtime. Loading runs no pickled Python code."""
    path = Path(path)
    meta = read_metadata(path)
    fmt = meta.get("format")
    if fmt in ("pt2", "onnx") and meta.get("outputs_layout") != "padded":
        raise ExportError(f"{path}: exported without post-processing by an older retinanet; export it again")
    dtype = torch.float32 if meta.get("input_dtype") == "float32" else torch.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location=map_location).eval(), meta
        if fmt == "pt2":
            import retinanet.export.nms_op  # noqa: F401  (registers the NMS operator the program calls)

            return PaddedRunner(torch.export.load(str(path)).module(), dtype), meta
        if fmt == "onnx":
            return onnx_runner(onnx_session(path, map_location), dtype), meta
    raise ExportError(f"{path}: unknown export format {fmt!r} in its metadata")
