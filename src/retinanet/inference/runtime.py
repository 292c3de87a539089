"""Run an exported detector with fixed-size outputs (ONNX in ONNX Runtime, or a pt2 program).

The exported pt2 and ONNX files (:mod:`retinanet.export`) take ``images [B, 3, H, W]`` (uint8 0-255 or
float32 0-1, as ``meta["input_dtype"]`` says) and ``image_sizes int64 [B, 2]`` and return the padded
detections ``boxes [B, D, 4], scores [B, D], labels [B, D], num_detections [B]`` (slots past
``num_detections`` are padding), boxes in the pixels of the input image.

- :class:`PaddedRunner` turns such a callable into the eager model's contract: ``runner(images,
  image_sizes=None, output_sizes=None) -> list of B dicts {boxes [d, 4], scores [d], labels [d]}``, boxes
  mapped to ``output_sizes`` with :func:`~retinanet.modeling.postprocess.rescale_boxes` (the model's way).
- :func:`onnx_session` / :func:`onnx_metadata`: an ONNX Runtime session of a file and the metadata the
  exporter stored in it (needs only ``onnxruntime``).
- :class:`RuntimePredictor`: :class:`~retinanet.inference.predictor.Predictor`'s interface for an ONNX
  file (``retinanet predict --weights model.onnx``): same resizing, same detections dicts.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from retinanet.data.transforms import build_transforms
from retinanet.inference.predictor import ImageLike, image_batches
from retinanet.modeling.postprocess import rescale_boxes
from retinanet.modeling.preprocess import batch_images

__all__ = [
    "PaddedRunner",
    "RuntimePredictor",
    "onnx_runner",
    "onnx_session",
    "onnx_metadata",
    "require_onnxruntime",
]

Padded = Tuple[Tensor, Tensor, Tensor, Tensor]


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "running an ONNX file needs the onnxruntime package: pip install onnxruntime "
            "(or pip install 'retinanet[export]')"
        ) from None
    return onnxruntime


def onnx_session(path: Union[str, Path], device: str = "cpu") -> Any:
    """An ``onnxruntime.InferenceSession`` of ``path`` (CUDA provider first for a ``cuda`` device)."""
    ort = require_onnxruntime()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    providers = ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: no notes on constant folding
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise ValueError(f"{path}: ONNX Runtime cannot load it: {str(e).splitlines()[0][:300]}") from None


def onnx_metadata(session: Any, path: Union[str, Path] = "model") -> Dict[str, Any]:
    """The ``retinanet`` metadata dict of an ONNX session; ValueError naming ``path`` if absent."""
    raw = session.get_modelmeta().custom_metadata_map.get("retinanet")
    if not raw:
        raise ValueError(f"{path}: no 'retinanet' metadata: not an ONNX file exported by retinanet")
    meta = json.loads(raw)
    if meta.get("outputs_layout") != "padded":
        raise ValueError(f"{path}: exported without post-processing (an older export); export it again")
    return meta


class PaddedRunner:
    """``run(images, image_sizes) -> padded outputs`` with the eager model's call contract (module docstring).

    ``input_dtype``: what ``run`` takes (``torch.uint8`` or ``torch.float32``); uint8 images are turned
    into 0-1 floats exactly, float images into uint8 by rounding ``x * 255`` (exact for images that came
    from uint8, e.g. after the default Pillow resize; a warning says when it is not).
    """

    def __init__(self, run: Callable[[Tensor, Tensor], Padded], input_dtype: torch.dtype) -> None:
        self.run = run
        self.input_dtype = input_dtype

    def padded(self, images: Tensor, image_sizes: Optional[Tensor] = None) -> Padded:
        """The raw ``(boxes, scores, labels, num_detections)`` of ``images [B, 3, H, W]``."""
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError(f"images must be a [B, 3, H, W] RGB tensor, got {list(images.shape)}")
        b, h, w = images.size(0), images.size(2), images.size(3)
        sizes = torch.tensor([[h, w]] * b) if image_sizes is None else image_sizes.to(torch.int64).cpu()
        if sizes.shape != (b, 2):
            raise ValueError(f"image_sizes must be a [B, 2] tensor of (h, w) per image, got {list(sizes.shape)}")
        with torch.no_grad():
            return self.run(self._cast(images), sizes)

    def __call__(
        self, images: Tensor, image_sizes: Optional[Tensor] = None, output_sizes: Optional[Tensor] = None
    ) -> List[Dict[str, Tensor]]:
        boxes, scores, labels, num = self.padded(images, image_sizes)
        b, h, w = images.size(0), images.size(2), images.size(3)
        sizes = [(h, w)] * b if image_sizes is None else [(int(s[0]), int(s[1])) for s in image_sizes.tolist()]
        targets = sizes if output_sizes is None else [(int(s[0]), int(s[1])) for s in output_sizes.tolist()]
        out: List[Dict[str, Tensor]] = []
        for i in range(b):
            n = int(num[i])
            bx = rescale_boxes(boxes[i, :n], float(sizes[i][0]), float(sizes[i][1]), *map(float, targets[i]))
            out.append({"boxes": bx, "scores": scores[i, :n], "labels": labels[i, :n]})
        return out

    def _cast(self, images: Tensor) -> Tensor:
        if images.dtype == self.input_dtype:
            return images.contiguous()
        if self.input_dtype == torch.float32:
            return images.to(torch.float32).div(255.0) if images.dtype == torch.uint8 else images.float()
        q = images.float().mul(255.0).round().clamp(0, 255)
        if not torch.equal(q.div(255.0), images.float()):
            warnings.warn(
                "the exported file takes uint8 images; float images that are not multiples of 1/255 were "
                "rounded (export with --input-dtype float32 to feed them unchanged)",
                stacklevel=3,
            )
        return q.to(torch.uint8)


def onnx_runner(session: Any, input_dtype: torch.dtype) -> PaddedRunner:
    """A :class:`PaddedRunner` that runs ``session`` (inputs ``images``, ``image_sizes``)."""

    def run(images: Tensor, sizes: Tensor) -> Padded:
        feeds = {"images": images.cpu().numpy(), "image_sizes": sizes.cpu().numpy().astype(np.int64)}
        boxes, scores, labels, num = session.run(["boxes", "scores", "labels", "num_detections"], feeds)
        return torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), torch.from_numpy(num)

    return PaddedRunner(run, input_dtype)


class RuntimePredictor:
    """Predictor of an exported ONNX file in ONNX Runtime, with :class:`Predictor`'s ``predict`` /
    ``predict_many`` and attributes (``class_names``, ``label_to_category_id``, ``transforms``).

    ``score_thresh`` may only raise the exported threshold: detections at or below it are dropped after
    the file's post-processing, which keeps the same detections as the model run with that threshold.
    """

    def __init__(self, weights: Union[str, Path], device: str = "cpu", score_thresh: Optional[float] = None) -> None:
        self.session = onnx_session(weights, "cpu" if device == "auto" else device)
        self.meta = onnx_metadata(self.session, weights)
        m = self.meta
        self.class_names: List[str] = list(m["class_names"])
        self.label_to_category_id: List[int] = [int(c) for c in m["label_to_category_id"]]
        self.transforms = build_transforms(
            train=False,
            min_size=int(m["test_min_size"]),
            max_size=int(m["max_size"]),
            resize=m["resize"],
            rounding=m["resize_rounding"],
        )
        self.score_thresh = None
        if score_thresh is not None:
            if not float(m["score_thresh"]) <= score_thresh <= 1:
                raise ValueError(
                    f"score threshold {score_thresh}: {weights} was exported with score threshold "
                    f"{m['score_thresh']}; only a value in [{m['score_thresh']}, 1] can be applied to it"
                )
            self.score_thresh = float(score_thresh)
        self.runner = onnx_runner(self.session, torch.uint8 if m["input_dtype"] == "uint8" else torch.float32)

    def predict(self, image: ImageLike) -> dict:
        """Detections for one image: ``boxes`` [n, 4] (file pixels), ``scores``, ``labels``, ``names``."""
        return next(iter(self.predict_many([image], batch_size=1)))

    def predict_many(
        self, images: Iterable[ImageLike], batch_size: int = 2, num_workers: int = 0, progress: bool = False
    ) -> Iterable[dict]:
        """Yield one detection dict per input, in input order (as :meth:`Predictor.predict_many`)."""
        for batch in image_batches(images, self.transforms, batch_size, num_workers, progress):
            stacked, sizes = batch_images(batch.images)
            outs = self.runner(stacked, sizes, torch.tensor([t["orig_size"] for t in batch.targets]))
            for t, det in zip(batch.targets, outs):
                yield self._result(det, int(t["image_id"]))

    def _result(self, det: Dict[str, Tensor], index: int) -> dict:
        if self.score_thresh is not None:
            det = {k: v[det["scores"] > self.score_thresh] for k, v in det.items()}
        labels = det["labels"].to(torch.int64)
        return {
            "boxes": det["boxes"].float(),
            "scores": det["scores"].float(),
            "labels": labels,
            "names": [self.class_names[i] for i in labels.tolist()],
            "image_index": index,
        }
