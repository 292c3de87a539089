"""Export a trained checkpoint for deployment, and load what was exported.

    retinanet export --weights model_final.pth --out model.pt                    # TorchScript
    retinanet export --weights model_final.pth --out model.pt2 --format pt2      # torch.export
    retinanet export --weights model_final.pth --out model.onnx --format onnx    # needs onnx + onnxscript

Every format takes what the model takes: RGB images ``[B, 3, H, W]``, uint8 0-255 or float 0-1, already
resized (shorter side ``meta["test_min_size"]``, longer at most ``meta["max_size"]``); normalizing and
padding are inside. The detector formats return what the model returns
(:class:`~retinanet.export.detector.ExportableDetector`)::

    forward(images, image_sizes: Optional[int64 [B, 2]] = None, output_sizes: Optional[int64 [B, 2]] = None)
        -> list of dicts {"boxes" float32 [d, 4] (x1, y1, x2, y2), "scores" [d], "labels" int64 [d]}

with boxes in the pixels of ``output_sizes`` (e.g. the original image's size; default ``image_sizes``,
the valid ``(h, w)`` of each image stacked at the top-left of the batch; default ``(H, W)``).

- **torchscript** (``torch.jit.load``; needs no ``retinanet``): the whole detector. The network is traced,
  anchors and post-processing are the model's own code, scripted.
- **pt2** (``torch.export``): the network (normalize, pad, backbone, FPN, head) as an ExportedProgram;
  :func:`load_exported` wraps it with the model's post-processing (needs ``retinanet``).
- **onnx**: the same network as pt2, ``(images, image_sizes) -> (cls_logits, box_deltas)``.

The metadata (``read_metadata``) holds the class names, the input contract and the ``spec`` of
:class:`~retinanet.export.detector.DetectorSpec`. The checkpoint is loaded with ``weights_only``
(or safetensors): exporting never executes pickled code. With ``check`` the written file is loaded
back and compared with the eager model on two image sizes and batch sizes 1 and 2.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from retinanet.export.detector import DetectorNetwork, DetectorSpec, ExportableDetector
from retinanet.inference.predictor import LoadedDetector, load_detector
from retinanet.modeling.retinanet import RetinaNet
from retinanet.utils.io import atomic_write

__all__ = ["export_model", "ExportError", "load_exported", "read_metadata", "FORMATS", "METADATA_FILE"]

FORMATS = ("torchscript", "pt2", "onnx")
METADATA_FILE = "retinanet.json"
BOX_ATOL, SCORE_ATOL = 1e-3, 1e-5  # what the export check accepts
log = logging.getLogger("retinanet.export")


class ExportError(ValueError):
    """Export failed or its check found a difference; the message says why (and what to install)."""


def _examples(height: int, width: int) -> List[Tuple[Tensor, Tensor]]:
    """Check inputs: the export size at batch 1, then a larger, non-square size at batch 2 whose first
    image is smaller than the batch (exercises ``image_sizes``)."""
    g = torch.Generator().manual_seed(0)
    one = torch.rand(1, 3, height, width, generator=g)
    h2, w2 = height + 40, width + 72
    two = torch.rand(2, 3, h2, w2, generator=g)
    two[0, :, h2 - 24 :, :] = 0
    sizes2 = torch.tensor([[h2 - 24, w2], [h2, w2]])
    return [(one, torch.tensor([[height, width]])), (two, sizes2)]


def build_torchscript(model: RetinaNet, height: int = 256, width: int = 256) -> torch.jit.ScriptModule:
    """The TorchScript detector of ``model`` (eval mode): traced network + scripted post-processing."""
    model = model.eval()
    images, sizes = _examples(height, width)[0]
    network = DetectorNetwork(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings of shape checks; torch.jit deprecation
        traced = torch.jit.trace(network, (images, sizes), check_trace=False)
        return torch.jit.script(ExportableDetector(traced, DetectorSpec.of(model)))


def _dynamic_shapes(div: int) -> Dict[str, Any]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=256)
    blocks = max(8192 // div, 3)
    h, w = Dim("h_blocks", min=2, max=blocks), Dim("w_blocks", min=2, max=blocks)
    return {"images": {0: batch, 2: div * h, 3: div * w}, "image_sizes": {0: batch}}


def _torch_export(model: RetinaNet, height: int, width: int, dynamic: bool) -> Tuple[Any, bool]:
    """``(ExportedProgram of DetectorNetwork, dynamic)``: dynamic batch and size if asked and possible.
    The program takes images padded to multiples of ``size_divisibility`` (``ExportableDetector`` pads)."""
    network = DetectorNetwork(model).eval()
    div = max(model.size_divisibility, 1)
    images, sizes = _examples(height, width)[1]
    images = torch.nn.functional.pad(images, (0, -images.shape[-1] % div, 0, -images.shape[-2] % div))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamic:
            try:
                return torch.export.export(network, (images, sizes), dynamic_shapes=_dynamic_shapes(div)), True
            except Exception as e:  # fall back to the example's size
                log.warning(
                    "torch.export with dynamic sizes failed (%s: %s); exporting for %dx%d, batch %d only",
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                    images.shape[-2],
                    images.shape[-1],
                    images.shape[0],
                )
        return torch.export.export(network, (images, sizes)), False


def _metadata(det: LoadedDetector, fmt: str, size: Tuple[int, int], dynamic: bool) -> Dict[str, Any]:
    spec = DetectorSpec.of(det.model)
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
        "detections_per_image": spec.detections_per_image,
        "spec": spec.to_dict(),
        "export_size": list(size),
        "dynamic": dynamic,
        "inputs": {
            "images": "[B, 3, H, W] RGB, uint8 0-255 or float 0-1, resized, not normalized",
            "image_sizes": "int64 [B, 2], (h, w) of each image in the batch"
            + (" (optional)" if fmt == "torchscript" else ""),
            **({"output_sizes": "optional int64 [B, 2], (h, w) to return boxes in"} if fmt == "torchscript" else {}),
        },
        "outputs": (
            "list of dicts: boxes float32 [d, 4] xyxy pixels, scores float32 [d], labels int64 [d]"
            if fmt != "onnx"
            else "cls_logits float32 [B, N, K], box_deltas float32 [B, N, 4]"
        ),
    }


def _compare(
    run: Callable[..., List[Dict[str, Tensor]]], model: RetinaNet, what: str, examples: List[Tuple[Tensor, Tensor]]
) -> Tuple[float, float]:
    """Largest box and score deviation of ``run`` from the eager model; ExportError on any difference
    in the number, labels or order of the detections or beyond the tolerances."""
    worst_box, worst_score = 0.0, 0.0
    for images, sizes in examples:
        h, w = images.shape[-2:]
        eager_in = [im[:, : int(s[0]), : int(s[1])] for im, s in zip(images, sizes)]
        with torch.no_grad():
            want = model(eager_in)
            got = run(images, sizes)
        for i, (g, e) in enumerate(zip(got, want)):
            if g["labels"].shape != e["labels"].shape or not torch.equal(g["labels"], e["labels"]):
                raise ExportError(
                    f"{what}: image {i} of a {images.shape[0]} x {h} x {w} batch: "
                    f"{g['labels'].numel()} detections vs {e['labels'].numel()} from the eager "
                    "model (or different labels)"
                )
            if g["labels"].numel():
                worst_box = max(worst_box, float((g["boxes"] - e["boxes"]).abs().max()))
                worst_score = max(worst_score, float((g["scores"] - e["scores"]).abs().max()))
    if worst_box > BOX_ATOL or worst_score > SCORE_ATOL:
        raise ExportError(
            f"{what}: boxes differ by up to {worst_box:.3g} px and scores by {worst_score:.3g} "
            f"from the eager model (allowed {BOX_ATOL} px, {SCORE_ATOL})"
        )
    return worst_box, worst_score


def export_model(
    weights: Union[str, Path],
    out: Union[str, Path],
    fmt: str = "torchscript",
    config: Optional[str] = None,
    height: int = 256,
    width: int = 256,
    check: bool = True,
    overrides: Optional[List[str]] = None,
    dynamic: bool = True,
) -> Path:
    """Load ``weights`` (``config`` for files that carry none) and write ``out`` in ``fmt``.

    ``height`` x ``width``: the example input size (pt2/ONNX with ``dynamic=False`` accept only it and
    batch 2). With ``check``, the written file is loaded back and its detections compared with the
    eager model's (:class:`ExportError` on a difference; ONNX is not checked here). Returns ``out``.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int(height) < 32 or int(width) < 32:
        raise ExportError(f"export size must be at least 32 x 32, got {height}x{width}")
    if fmt == "onnx":
        _require_onnx()
    det = load_detector(weights, config=config, device="cpu", overrides=overrides)
    model = det.model.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        scripted = build_torchscript(model, height, width)
        extra = {METADATA_FILE: json.dumps(_metadata(det, fmt, (height, width), True))}
        _write(out, lambda f: _jit_save(scripted, f, extra))
    else:
        div = max(model.size_divisibility, 1)  # torch.export specializes sizes of one block
        height, width = max(height, 2 * div), max(width, 2 * div)
        program, is_dynamic = _torch_export(model, height, width, dynamic)
        shape = program.example_inputs[0][0].shape
        meta = _metadata(det, fmt, (int(shape[-2]), int(shape[-1])), is_dynamic)
        if fmt == "pt2":
            _write(out, lambda f: _pt2_save(program, f, {METADATA_FILE: json.dumps(meta)}))
        else:
            _export_onnx(program, out, meta)
    if check and fmt != "onnx":
        try:
            loaded, meta = load_exported(out)
            examples = _examples(height, width)
            box, score = _compare(loaded, model, str(out), examples if meta["dynamic"] else examples[1:])
        except Exception:
            out.unlink(missing_ok=True)  # a file that failed its check is not kept
            raise
        log.info("checked %s: boxes within %.2g px, scores within %.2g of the eager model", out, box, score)
    return out


def _jit_save(module: torch.jit.ScriptModule, f: Any, extra: Dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; the format still loads
        torch.jit.save(module, f, _extra_files=extra)


def _pt2_save(program: Any, f: Any, extra: Dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on weights not on the CPU
        torch.export.save(program, f, extra_files=extra)


def _write(out: Path, write: Callable[[Any], None]) -> None:
    try:
        atomic_write(out, write)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from e


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(
            f"ONNX export needs the {' and '.join(missing)} package(s), which are not installed: "
            f"pip install {' '.join(missing)}  (or use --format torchscript / pt2)"
        )


def _export_onnx(program: Any, out: Path, meta: Dict[str, Any]) -> None:  # pragma: no cover - needs onnx
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=["images", "image_sizes"], output_names=["cls_logits", "box_deltas"]
        )
    assert onnx_program is not None  # dynamo=True always returns an ONNXProgram
    proto = onnx_program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "retinanet", json.dumps(meta)
    _write(out, lambda f: f.write(proto.SerializeToString()))
    onnx.checker.check_model(str(out))


def read_metadata(path: Union[str, Path]) -> Dict[str, Any]:
    """The metadata dict stored in an exported file (TorchScript, pt2 or ONNX)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":  # pragma: no cover - needs onnx
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props.get("retinanet", "{}"))
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(f"/{METADATA_FILE}") or name == METADATA_FILE:
                    return json.loads(z.read(name))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a model exported by retinanet (cannot read it: {e})") from None
    raise ExportError(f"{path}: no {METADATA_FILE} inside: not a model exported by retinanet")


def load_exported(path: Union[str, Path], map_location: str = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """``(detector, metadata)`` of an exported TorchScript or pt2 file; the detector is called like
    the eager model's export contract (module docstring). Loading runs no pickled Python code."""
    path = Path(path)
    meta = read_metadata(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if meta.get("format") == "torchscript":
            return torch.jit.load(str(path), map_location=map_location).eval(), meta
        if meta.get("format") == "pt2":
            network = torch.export.load(str(path)).module()
            return ExportableDetector(network, DetectorSpec(**meta["spec"])), meta
    raise ExportError(f"{path}: cannot load format {meta.get('format')!r} here (ONNX: use onnxruntime)")
