"""Export a trained checkpoint for deployment: TorchScript (full detector), torch.export, ONNX.

    retinanet export --weights model_final.pth --out model.pt                    # TorchScript
    retinanet export --weights model_final.pth --out model.pt2 --format pt2      # torch.export
    retinanet export --weights model_final.pth --out model.onnx --format onnx    # needs onnx + onnxscript

    from retinanet.export.exporter import export_model, load_exported
    export_model("model_final.pth", "model.pt")
    model, meta = load_exported("model.pt")      # torch.jit.load + the metadata below

The checkpoint is loaded with ``weights_only`` (or safetensors): exporting never executes pickled code.

Input of every artifact (what :func:`retinanet.data.collate` produces; no preprocessing is inside):
``images`` float32 ``[B, 3, H, W]``: RGB in 0-1, normalized per channel with ``meta["mean"]`` /
``meta["std"]`` (ImageNet), resized so that the shorter side is ``meta["test_min_size"]`` (longer side
at most ``meta["max_size"]``), zero-padded at the bottom/right to ``H, W`` multiples of
``meta["size_divisibility"]`` (128). ``H`` and ``W`` may differ from the export size (``--height``,
``--width``; they only set the example input): the TorchScript module accepts any batch size and any
multiple of 128 (checked at export time on a second size); the pt2 and ONNX files accept batch 1-256
and ``H, W`` multiples of 128 from 256 to 8192 (``meta["dynamic"]``; ``torch.export`` specializes
sizes of 1, so a P7 map of 1x1 is not covered: pad smaller images to 256), or only the export size
and batch 1 with ``--static`` (``dynamic=False``: a several times faster export).

**TorchScript** (``--format torchscript``, default; load with ``torch.jit.load``, no ``retinanet``
needed, also from C++): the whole detector, post-processing included::

    forward(images: Tensor[B, 3, H, W], image_sizes: Optional[Tensor[B, 2] int64] = None)
        -> List[Dict[str, Tensor]]   # one dict per image:
           "boxes"  float32 [d, 4]  (x1, y1, x2, y2) pixels of the resized input image, clipped to image_sizes
           "scores" float32 [d]     sigmoid class probability, decreasing
           "labels" int64   [d]     contiguous class index 0..K-1 (meta["class_names"][label],
                                    COCO category meta["label_to_category_id"][label])

``image_sizes`` is ``(h, w)`` of each image before padding (default: ``(H, W)``); ``d <=
detections_per_image``. The post-processing is the Python model's: per pyramid level the
``topk_candidates`` best (anchor, class) logits above ``score_thresh``, box decoding, class-wise
greedy NMS per image, the best ``detections_per_image``. To get boxes in the pixels of the original
file multiply x by ``orig_w / w`` and y by ``orig_h / h`` (the Predictor does this). The network
(backbone, FPN, head convolutions) is traced; anchors, decoding and NMS are scripted, so the module
works for any batch size and image size. Detections equal the Python model's
(:class:`~retinanet.modeling.retinanet.RetinaNet` in eval mode): labels and order identical, boxes
and scores to float rounding (``tests/test_export.py`` asserts ``atol=1e-4`` px and ``1e-6``; the
check ``export_model`` runs after writing allows ``1e-3`` px and ``1e-5``). The TorchScript file is
self-contained, but ``torch.jit`` is deprecated in recent PyTorch (it still works in 2.x and warns);
``pt2`` is the format that PyTorch maintains.

**pt2** (``--format pt2``; ``torch.export.load(path).module()``) and **ONNX** (``--format onnx``)
hold the dense network, because greedy NMS (a data-dependent loop) cannot be expressed in
``torch.export``::

    forward(images: Tensor[B, 3, H, W]) -> (boxes float32 [B, N, 4], cls_logits float32 [B, N, K])

with one row per anchor (``N = sum over P3..P7 of h_l * w_l * A``; levels in order, positions
row-major, then the ``A`` anchors): ``boxes`` decoded and clipped to ``(H, W)``, ``cls_logits`` before
the sigmoid. :func:`postprocess_dense` (pure PyTorch, uses :func:`retinanet.ops.boxes.batched_nms`) turns
them into the same per-image dicts as the TorchScript module; any runtime's NMS (class-wise, IoU >
``nms_thresh``) can be used instead.

**Metadata** (a JSON dict, :func:`read_metadata`): stored as the extra file ``retinanet.json`` of the
TorchScript / pt2 archive and as ``metadata_props["retinanet"]`` of the ONNX model. Keys:
``format``, ``class_names``, ``label_to_category_id``, ``mean``, ``std``, ``size_divisibility``,
``test_min_size``, ``max_size``, ``score_thresh``, ``nms_thresh``, ``topk_candidates``,
``detections_per_image``, ``num_anchors`` (A), ``strides``, ``export_size``, ``dynamic``, ``inputs``,
``outputs``. Prediction on new images in the file's pixels, with only torch::

    model, meta = load_exported("model.pt")
    # x: RGB 0-1 [3, h, w] resized to the shorter side meta["test_min_size"]; pad to multiples of 128
    x = (x - torch.tensor(meta["mean"])[:, None, None]) / torch.tensor(meta["std"])[:, None, None]
    padded = torch.zeros(1, 3, -(-h // 128) * 128, -(-w // 128) * 128); padded[0, :, :h, :w] = x
    det = model(padded, torch.tensor([[h, w]]))[0]   # boxes in the resized image's pixels
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from retinanet.ops.boxes import _f32_bound, batched_nms
from retinanet.data.collate import IMAGENET_MEAN, IMAGENET_STD
from retinanet.modeling.retinanet import RetinaNet

__all__ = ["export_model", "ExportError", "load_exported", "read_metadata", "postprocess_dense",
           "build_torchscript", "DenseRetinaNet", "FORMATS", "METADATA_FILE"]

FORMATS = ("torchscript", "pt2", "onnx")
METADATA_FILE = "retinanet.json"
_TINY = torch.finfo(torch.float32).tiny  # the IoU union floor of retinanet.ops.boxes


class ExportError(ValueError):
    """Export failed or its check found a difference; the message says why (and what to install)."""


# --------------------------------------------------------------------------------------------------
# modules


class _Network(nn.Module):
    """Backbone + FPN + head convolutions: ``images -> (cls [B, A*K, h, w] x 5, box [B, A*4, h, w] x 5)``."""

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.cls_conv = model.head.classification_head.conv
        self.cls_logits = model.head.classification_head.cls_logits
        self.box_conv = model.head.regression_head.conv
        self.bbox_reg = model.head.regression_head.bbox_reg
        self.channels_last = bool(getattr(model.cfg, "channels_last", False))

    def forward(self, images: Tensor) -> Tuple[Tuple[Tensor, ...], Tuple[Tensor, ...]]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(images)
        cls = tuple(self.cls_logits(self.cls_conv(f)) for f in feats)
        box = tuple(self.bbox_reg(self.box_conv(f)) for f in feats)
        return cls, box


class _Decoder(nn.Module):
    """Anchors for any feature-map sizes and box decoding, written so that TorchScript compiles it and
    bit-identical to :class:`~retinanet.ops.anchors.AnchorGenerator` and :class:`~retinanet.ops.boxes.BoxCoder`."""

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        gen = model.anchor_generator
        self.register_buffer("cell_anchors", torch.stack([c.to(torch.float64) for c in gen.cell_anchors]))
        self.strides: List[float] = [float(s) for s in gen.strides]
        self.offset = float(gen.offset)
        self.num_anchors = int(gen.num_anchors)
        self.num_classes = int(model.num_classes)
        w = model.box_coder.weights
        self.wx, self.wy, self.ww, self.wh = float(w[0]), float(w[1]), float(w[2]), float(w[3])
        self.scale_clamp = float(model.box_coder.scale_clamp)

    def level_anchors(self, level: int, h: int, w: int, device: torch.device) -> Tensor:
        stride = self.strides[level]
        cell = self.cell_anchors[level].to(device)
        shift_x = torch.arange(w, dtype=torch.float64, device=device) * stride + self.offset * stride
        shift_y = torch.arange(h, dtype=torch.float64, device=device) * stride + self.offset * stride
        sx = shift_x.unsqueeze(0).expand(h, w)
        sy = shift_y.unsqueeze(1).expand(h, w)
        shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
        return (shifts + cell.unsqueeze(0)).reshape(-1, 4).to(torch.float32)

    def decode(self, d: Tensor, anchors: Tensor) -> Tensor:
        aw = anchors[..., 2] - anchors[..., 0]
        ah = anchors[..., 3] - anchors[..., 1]
        ax = anchors[..., 0] + 0.5 * aw
        ay = anchors[..., 1] + 0.5 * ah
        dw = (d[..., 2] / self.ww).clamp(max=self.scale_clamp)
        dh = (d[..., 3] / self.wh).clamp(max=self.scale_clamp)
        cx = (d[..., 0] / self.wx) * aw + ax
        cy = (d[..., 1] / self.wy) * ah + ay
        half_w = 0.5 * (torch.exp(dw) * aw)
        half_h = 0.5 * (torch.exp(dh) * ah)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)

    def flatten(self, outs: List[Tensor], last: int) -> Tensor:
        """Per-level ``[B, A*last, h, w]`` -> ``[B, N, last]`` in the head's anchor order."""
        b = outs[0].size(0)
        return torch.cat([o.flatten(2).transpose(1, 2).reshape(b, -1, last) for o in outs], dim=1)

    def anchors(self, outs: List[Tensor]) -> Tensor:
        device = outs[0].device
        return torch.cat([self.level_anchors(i, o.size(2), o.size(3), device) for i, o in enumerate(outs)], dim=0)


class _PostProcess(nn.Module):
    """The eval post-processing of :meth:`RetinaNet.postprocess`, in TorchScript-compatible code."""

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        cfg = model.cfg
        self.decoder = _Decoder(model)
        p = float(cfg.score_thresh)
        self.logit_thresh = -math.inf if p <= 0 else (math.inf if p >= 1 else math.log(p / (1 - p)))
        self.topk = int(cfg.topk_candidates)
        # IoU > nms_thresh decided exactly as retinanet.ops.boxes.nms does for float32 IoUs
        self.iou_thresh = float(_f32_bound(float(cfg.nms_thresh), torch.float32, upper=False))
        self.detections_per_image = int(cfg.detections_per_image)
        self.tiny = float(_TINY)

    def nms(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        """Greedy class-wise NMS; kept indices by decreasing score (ties: lower index), at most D."""
        order = torch.sort(scores, dim=0, descending=True, stable=True)[1]
        n = order.numel()
        b = boxes[order]
        lab = labels[order]
        x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
        suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
        keep: List[int] = []
        for i in range(n):
            if bool(suppressed[i]):
                continue
            keep.append(i)
            if len(keep) >= self.detections_per_image:
                break
            if i + 1 < n:
                w = (torch.minimum(x2[i], x2[i + 1:]) - torch.maximum(x1[i], x1[i + 1:])).clamp(min=0)
                h = (torch.minimum(y2[i], y2[i + 1:]) - torch.maximum(y1[i], y1[i + 1:])).clamp(min=0)
                inter = w * h
                iou = inter / ((area[i] + area[i + 1:]) - inter).clamp(min=self.tiny)
                hit = (iou > self.iou_thresh) & (lab[i + 1:] == lab[i])
                suppressed[i + 1:] = suppressed[i + 1:] | hit
        return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]

    def forward(self, cls_out: List[Tensor], box_out: List[Tensor], image_sizes: Tensor) -> List[Dict[str, Tensor]]:
        dec = self.decoder
        k_cls = dec.num_classes
        bsz = cls_out[0].size(0)
        vals: List[Tensor] = []
        idxs: List[Tensor] = []
        start = 0
        for o in cls_out:
            n = o.size(2) * o.size(3) * dec.num_anchors
            lg = o.flatten(2).transpose(1, 2).reshape(bsz, n * k_cls)
            v, i = lg.topk(min(self.topk, n * k_cls), dim=1, sorted=False)
            vals.append(v)
            idxs.append(i + start * k_cls)
            start += n
        vals_t = torch.cat(vals, dim=1)
        idx_t = torch.cat(idxs, dim=1)
        deltas = dec.flatten(box_out, 4)
        anchors = dec.anchors(cls_out)
        sizes = image_sizes.to(torch.float32)
        results: List[Dict[str, Tensor]] = []
        for b in range(bsz):
            sel = vals_t[b] > self.logit_thresh
            # candidates in (anchor, class) order, as RetinaNet.postprocess: equal scores resolve alike
            flat, perm = idx_t[b][sel].sort()
            anchor_idx = torch.div(flat, k_cls, rounding_mode="floor")
            labels = flat - anchor_idx * k_cls
            scores = vals_t[b][sel][perm].float().sigmoid()
            boxes = dec.decode(deltas[b][anchor_idx].float(), anchors[anchor_idx])
            h = sizes[b, 0]
            w = sizes[b, 1]
            boxes = torch.stack([boxes[:, 0].clamp(min=0).minimum(w), boxes[:, 1].clamp(min=0).minimum(h),
                                 boxes[:, 2].clamp(min=0).minimum(w), boxes[:, 3].clamp(min=0).minimum(h)], dim=1)
            keep = self.nms(boxes, scores, labels)
            results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return results


class _Detector(nn.Module):
    """TorchScript top level: traced network + scripted post-processing (see the module docstring)."""

    def __init__(self, network: nn.Module, post: _PostProcess, size_divisibility: int) -> None:
        super().__init__()
        self.network = network
        self.post = post
        self.size_divisibility = int(size_divisibility)

    def forward(self, images: Tensor, image_sizes: Optional[Tensor] = None) -> List[Dict[str, Tensor]]:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError("images must be a normalized [B, 3, H, W] float tensor")
        div = self.size_divisibility
        if images.size(2) % div != 0 or images.size(3) % div != 0:
            raise ValueError("images must be padded to H and W multiples of size_divisibility (export metadata)")
        bsz = images.size(0)
        if image_sizes is None:
            sizes = torch.tensor([images.size(2), images.size(3)], dtype=torch.long,
                                 device=images.device).unsqueeze(0).expand(bsz, 2)
        else:
            sizes = image_sizes
            if sizes.dim() != 2 or sizes.size(0) != bsz or sizes.size(1) != 2:
                raise ValueError("image_sizes must be a [B, 2] tensor of (h, w) before padding")
        cls_t, box_t = self.network(images)
        cls_out: List[Tensor] = []
        box_out: List[Tensor] = []
        for t in cls_t:
            cls_out.append(t)
        for t in box_t:
            box_out.append(t)
        return self.post(cls_out, box_out, sizes)


class DenseRetinaNet(nn.Module):
    """``images [B, 3, H, W] -> (boxes [B, N, 4], cls_logits [B, N, K])`` for torch.export / ONNX.

    ``boxes`` are every anchor's decoded box clipped to ``(H, W)``; ``cls_logits`` the head's logits
    (scores = sigmoid). Post-process with :func:`postprocess_dense`.
    """

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        self.network = _Network(model)
        self.decoder = _Decoder(model)

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        cls_t, box_t = self.network(images)
        cls_out, box_out = list(cls_t), list(box_t)
        dec = self.decoder
        logits = dec.flatten(cls_out, dec.num_classes)
        boxes = dec.decode(dec.flatten(box_out, 4).float(), dec.anchors(cls_out))
        h, w = images.shape[-2], images.shape[-1]
        boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                             boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
        return boxes, logits


def num_anchors_per_level(height: int, width: int, num_anchors: int = 9,
                          strides: Sequence[int] = (8, 16, 32, 64, 128)) -> List[int]:
    """Rows of :class:`DenseRetinaNet`'s outputs per level for a padded ``height x width`` input."""
    return [math.ceil(height / s) * math.ceil(width / s) * num_anchors for s in strides]


def postprocess_dense(boxes: Tensor, cls_logits: Tensor, level_sizes: Sequence[int],
                      image_sizes: Optional[Sequence[Sequence[int]]] = None, *, score_thresh: float = 0.05,
                      nms_thresh: float = 0.5, topk_candidates: int = 1000,
                      detections_per_image: int = 100) -> List[Dict[str, Tensor]]:
    """Detections from :class:`DenseRetinaNet` outputs, as :meth:`RetinaNet.postprocess` makes them.

    ``boxes [B, N, 4]``, ``cls_logits [B, N, K]``; ``level_sizes`` the rows per level
    (:func:`num_anchors_per_level`); ``image_sizes`` ``(h, w)`` per image before padding (boxes are
    clipped to it). The thresholds come from ``meta`` of the artifact. Returns per image ``boxes``,
    ``scores``, ``labels`` sorted by decreasing score.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or cls_logits.dim() != 3 or cls_logits.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"postprocess_dense: expected boxes [B, N, 4] and cls_logits [B, N, K], got "
                         f"{tuple(boxes.shape)} and {tuple(cls_logits.shape)}")
    if sum(level_sizes) != boxes.shape[1]:
        raise ValueError(f"postprocess_dense: level_sizes {list(level_sizes)} sum to {sum(level_sizes)}, "
                         f"but there are {boxes.shape[1]} rows")
    bsz, _, k_cls = cls_logits.shape
    p = float(score_thresh)
    logit_thresh = -math.inf if p <= 0 else (math.inf if p >= 1 else math.log(p / (1 - p)))
    vals, idxs, start = [], [], 0
    for n in level_sizes:
        lg = cls_logits[:, start:start + n, :].reshape(bsz, n * k_cls)
        v, i = lg.topk(min(int(topk_candidates), n * k_cls), dim=1, sorted=False)
        vals.append(v)
        idxs.append(i + start * k_cls)
        start += n
    vals_t, idx_t = torch.cat(vals, 1), torch.cat(idxs, 1)
    if image_sizes is None:
        image_sizes = [(math.inf, math.inf)] * bsz
    out = []
    for b in range(bsz):
        sel = vals_t[b] > logit_thresh
        flat, perm = idx_t[b][sel].sort()  # (anchor, class) order: equal scores resolve as in the model
        anchor_idx = torch.div(flat, k_cls, rounding_mode="floor")
        labels = flat - anchor_idx * k_cls
        scores = vals_t[b][sel][perm].float().sigmoid()
        h, w = (float(x) for x in image_sizes[b])
        bx = boxes[b][anchor_idx].float()
        bx = torch.stack([bx[:, 0].clamp(0, w), bx[:, 1].clamp(0, h), bx[:, 2].clamp(0, w), bx[:, 3].clamp(0, h)], 1)
        keep = batched_nms(bx, scores, labels, nms_thresh)[:int(detections_per_image)]
        out.append({"boxes": bx[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


# --------------------------------------------------------------------------------------------------
# building and exporting


def _round_up(x: int, div: int) -> int:
    return max(div, int(math.ceil(int(x) / div)) * div)


def _example(height: int, width: int, div: int, batch: int = 1, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, _round_up(height, div), _round_up(width, div), generator=g)


def _trace_network(model: RetinaNet, example: Tensor) -> torch.jit.ScriptModule:
    net = _Network(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of shape checks, TorchScript deprecation
        with torch.no_grad():
            traced = torch.jit.trace(net, (example,), check_trace=False)
    # the trace must not have frozen the input size: compare with eager on another size and batch
    other = _example(example.shape[-2] + 128, example.shape[-1], 128, batch=2, seed=1).to(example.device)
    with torch.no_grad():
        got, want = traced(other), net(other)
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        if g.shape != w.shape or not torch.allclose(g, w, rtol=1e-4, atol=1e-4):
            raise ExportError("the traced network does not generalize to other image sizes "
                              f"({tuple(g.shape)} vs {tuple(w.shape)})")
    return traced


def build_torchscript(model: RetinaNet, height: int = 512, width: int = 512,
                      size_divisibility: int = 128) -> torch.jit.ScriptModule:
    """The TorchScript detector of ``model`` (eval mode; see the module docstring)."""
    model = model.eval()
    example = _example(height, width, size_divisibility).to(next(model.parameters()).device)
    traced = _trace_network(model, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(_Detector(traced, _PostProcess(model), size_divisibility))


def _metadata(det: Any, fmt: str, size: Tuple[int, int]) -> dict:
    cfg = det.cfg
    m, d = cfg.model, cfg.data
    meta = {
        "format": fmt,
        "class_names": list(det.class_names),
        "label_to_category_id": [int(c) for c in det.label_to_category_id],
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "size_divisibility": int(d.size_divisibility), "test_min_size": int(d.test_min_size),
        "max_size": int(d.max_size), "score_thresh": float(m.score_thresh), "nms_thresh": float(m.nms_thresh),
        "topk_candidates": int(m.topk_candidates), "detections_per_image": int(m.detections_per_image),
        "num_anchors": int(det.model.anchor_generator.num_anchors),
        "strides": [int(s) for s in m.anchors.strides], "export_size": list(size),
        "dynamic": fmt == "torchscript",
        "inputs": {"images": "float32 [B, 3, H, W], normalized, zero-padded to multiples of size_divisibility"},
    }
    if fmt == "torchscript":
        meta["inputs"]["image_sizes"] = "optional int64 [B, 2], (h, w) before padding"
        meta["outputs"] = "list of dicts: boxes float32 [d, 4] xyxy pixels, scores float32 [d], labels int64 [d]"
    else:
        meta["outputs"] = ("boxes float32 [B, N, 4] xyxy pixels clipped to (H, W); cls_logits float32 [B, N, K] "
                           "(scores = sigmoid); post-process with retinanet.export.exporter.postprocess_dense")
    return meta


def _check_close(got: List[Dict[str, Tensor]], want: List[Dict[str, Tensor]], what: str) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        if g["labels"].shape != w["labels"].shape or not torch.equal(g["labels"], w["labels"]):
            raise ExportError(f"{what}: image {i}: {g['labels'].numel()} detections vs {w['labels'].numel()} "
                              "from the Python model (or different labels)")
        if not (torch.allclose(g["boxes"], w["boxes"], rtol=0, atol=1e-3)
                and torch.allclose(g["scores"], w["scores"], rtol=0, atol=1e-5)):
            raise ExportError(f"{what}: image {i}: boxes or scores differ from the Python model")


def export_model(weights: Union[str, Path], out: Union[str, Path], fmt: str = "torchscript",
                 config: Optional[str] = None, height: int = 512, width: int = 512,
                 check: bool = True, overrides: Optional[List[str]] = None, dynamic: bool = True) -> Path:
    """Load ``weights`` (a checkpoint; ``config`` for files that carry none) and write ``out``.

    ``fmt``: ``torchscript`` (full detector), ``pt2`` (torch.export of :class:`DenseRetinaNet`) or
    ``onnx`` (the same dense network; needs ``pip install onnx onnxscript``). ``height`` x ``width``
    (rounded up to multiples of 128) is the example input. ``dynamic=False`` fixes the pt2 / ONNX
    input to that size and batch 1 (``torch.export`` with dynamic sizes takes several times longer;
    if it fails the export falls back to the fixed size and says so in ``meta["dynamic"]``). The
    TorchScript module always accepts any size. With ``check`` the written file is loaded back and
    its detections on a random input are compared with the Python model's (:class:`ExportError` on
    a difference). Returns ``out``.
    """
    from retinanet.inference.predictor import load_detector

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int(height) < 1 or int(width) < 1:
        raise ExportError(f"export size must be positive, got {height}x{width}")
    if fmt == "onnx":
        _require_onnx()
    det = load_detector(weights, config=config, device="cpu", overrides=overrides)
    model, div = det.model, det.cfg.data.size_divisibility
    example = _example(height, width, div)
    if fmt != "torchscript" and dynamic:
        # torch.export specializes sizes 0 and 1: the example needs batch 2 and 2+ blocks per side
        example = _example(max(height, 2 * div), max(width, 2 * div), div, batch=2)
    meta = _metadata(det, fmt, (int(example.shape[-2]), int(example.shape[-1])))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {METADATA_FILE: json.dumps(meta)}
    if fmt == "torchscript":
        scripted = build_torchscript(model, example.shape[-2], example.shape[-1], div)
        _atomic(out, lambda tmp: torch.jit.save(scripted, str(tmp), _extra_files=extra))
        if check:
            loaded, _ = load_exported(out)
            with torch.no_grad():
                _check_close(loaded(example), model(example), f"{out}")
    elif fmt == "pt2":
        dense = DenseRetinaNet(model).eval()
        program, meta["dynamic"] = _torch_export(dense, example, dynamic)
        extra = {METADATA_FILE: json.dumps(meta)}
        _atomic(out, lambda tmp: torch.export.save(program, str(tmp), extra_files=extra))
        if check:
            loaded, _ = load_exported(out)
            _check_dense(loaded, model, example, meta, str(out))
    else:
        _export_onnx(DenseRetinaNet(model).eval(), example, out, meta, dynamic)
    return out


def _atomic(out: Path, write) -> None:
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        write(tmp)
        tmp.replace(out)
    except OSError as e:
        raise ExportError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _dynamic_shapes() -> dict:
    from torch.export import Dim
    hb, wb = Dim("h_blocks", min=2, max=64), Dim("w_blocks", min=2, max=64)
    return {"images": {0: Dim("batch", min=1, max=256), 2: 128 * hb, 3: 128 * wb}}


def _torch_export(dense: DenseRetinaNet, example: Tensor, dynamic: bool):
    """``(ExportedProgram, dynamic)``: dynamic batch and size if asked and possible, else fixed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamic:
            try:
                return torch.export.export(dense, (example,), dynamic_shapes=_dynamic_shapes()), True
            except Exception as e:  # fall back to the export size only
                import logging
                logging.getLogger(__name__).warning(
                    "torch.export with dynamic sizes failed (%s: %s); exporting for %dx%d, batch %d only",
                    type(e).__name__, str(e).splitlines()[0][:200], example.shape[-2], example.shape[-1],
                    example.shape[0])
        return torch.export.export(dense, (example,)), False


def _check_dense(run, model: RetinaNet, example: Tensor, meta: dict, what: str) -> None:
    with torch.no_grad():
        boxes, logits = run(example)
        want = model(example)
    h, w = example.shape[-2:]
    got = postprocess_dense(boxes, logits, num_anchors_per_level(h, w, meta["num_anchors"], meta["strides"]),
                            [(h, w)] * example.shape[0], score_thresh=meta["score_thresh"],
                            nms_thresh=meta["nms_thresh"], topk_candidates=meta["topk_candidates"],
                            detections_per_image=meta["detections_per_image"])
    _check_close(got, want, what)


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"ONNX export needs the {' and '.join(missing)} package(s), which are not installed: "
                          f"pip install {' '.join(missing)}  (or use --format torchscript / pt2)")


def _export_onnx(dense: DenseRetinaNet, example: Tensor, out: Path, meta: dict,
                 dynamic: bool) -> None:  # pragma: no cover - needs onnx
    import onnx

    program, meta["dynamic"] = _torch_export(dense, example, dynamic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(program, (example,), str(out), input_names=["images"],
                          output_names=["boxes", "cls_logits"], dynamo=True, external_data=False)
    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "retinanet", json.dumps(meta)
    onnx.save(proto, str(out))


# --------------------------------------------------------------------------------------------------
# loading


def read_metadata(path: Union[str, Path]) -> dict:
    """The metadata dict stored in an exported file (TorchScript, pt2 or ONNX)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if path.suffix == ".onnx":  # pragma: no cover - needs onnx
        import onnx
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props.get("retinanet", "{}"))
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(f"/{METADATA_FILE}") or name == METADATA_FILE:
                    return json.loads(z.read(name))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ExportError(f"{path}: not a model exported by retinanet (cannot read it: {e})") from None
    raise ExportError(f"{path}: no {METADATA_FILE} inside: not a model exported by retinanet")


def load_exported(path: Union[str, Path], map_location: str = "cpu") -> tuple[Any, dict]:
    """``(callable, metadata)`` of an exported file: the TorchScript module (eval mode) or the pt2
    program's module. Loading a TorchScript or pt2 file runs no pickled Python code."""
    path = Path(path)
    meta = read_metadata(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if meta.get("format") == "torchscript":
            return torch.jit.load(str(path), map_location=map_location).eval(), meta
        if meta.get("format") == "pt2":
            return torch.export.load(str(path)).module(), meta
    raise ExportError(f"{path}: cannot load format {meta.get('format')!r} here (ONNX: use onnxruntime)")
