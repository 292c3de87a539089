"""The whole detector with fixed-size outputs, for ``torch.export`` (pt2) and ONNX.

``PaddedDetector(network, spec, input_dtype)``: ``forward(images [B, 3, H, W] uint8 0-255 or float32 0-1
(the dtype the file was exported for), image_sizes int64 [B, 2]) -> (boxes float32 [B, D, 4],
scores float32 [B, D], labels int64 [B, D], num_detections int64 [B])``, ``D = spec.detections_per_image``.
Image ``i`` has ``num_detections[i]`` detections in slots ``0 .. n-1``, by decreasing score, boxes
``(x1, y1, x2, y2)`` in the pixels of the input image (its valid ``image_sizes[i]`` region, stacked at
the top-left); the other slots hold zeros and label -1.

It pads to multiples of ``size_divisibility``, runs :class:`~retinanet.export.detector.DetectorNetwork`,
and post-processes with the eager model's :class:`~retinanet.modeling.postprocess.PostProcessor` numbers
and functions (threshold on logits, per-level top-k, decode, clip, per-class greedy NMS, best D) in a
form without data-dependent shapes (:func:`padded_postprocess`); NMS is the operator of
:mod:`retinanet.export.nms_op`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Tuple
from unittest import mock

import torch
from torch import Tensor, nn

from retinanet.export.detector import DetectorNetwork, DetectorSpec, ExportableDetector
from retinanet.export.nms_op import nms_keep
from retinanet.modeling.conv import winograd_disabled
from retinanet.modeling.postprocess import PostProcessor
from retinanet.modeling.retinanet import RetinaNet
from retinanet.ops.anchors import grid_anchors
from retinanet.ops.box_coder import decode_boxes
from retinanet.ops.boxes import clip_boxes_to_sizes

__all__ = ["PaddedDetector", "padded_postprocess", "export_program", "INPUT_NAMES", "OUTPUT_NAMES"]

INPUT_NAMES = ("images", "image_sizes")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
MAX_BATCH, MAX_SIDE = 256, 8192  # the dynamic range declared to torch.export: batch 1..256, sides 1..8192


def padded_postprocess(
    post: PostProcessor,
    cls_logits: Tensor,
    box_deltas: Tensor,
    anchors: Tensor,
    level_sizes: List[int],
    image_sizes: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``post``'s detections of ``cls_logits [B, N, K]``, ``box_deltas [B, N, 4]`` and ``anchors [N, 4]``
    as ``(boxes [B, D, 4], scores [B, D], labels [B, D], num_detections [B])`` (module docstring).

    Each level contributes exactly ``topk_candidates`` candidates per image (a level with fewer anchor
    x class entries is filled with ``-inf`` logits, which never pass the threshold), so every shape after
    the network depends on the batch size only.
    """
    b, n, k = cls_logits.shape
    topk, d = post.topk_candidates, post.detections_per_image
    logits = cls_logits.float().reshape(b, n * k)  # then column slices per level: no copy depends on B
    filler = logits.new_full((b, topk), float("-inf"))
    values: List[Tensor] = []
    indices: List[Tensor] = []
    start = 0
    for size in level_sizes:
        level = torch.cat((logits[:, start * k : (start + size) * k], filler), dim=1)
        v, i = level.topk(topk, dim=1)
        values.append(v)
        indices.append(torch.where(i < size * k, i + start * k, n * k))  # filler: past the last entry
        start += size
    # candidates in (anchor, class) order: the eager model's order, which resolves equal scores
    flat, order = torch.cat(indices, dim=1).sort(dim=1)
    logit = torch.cat(values, dim=1).gather(1, order)
    valid = logit > post.logit_thresh
    anchor_idx = torch.div(flat, k, rounding_mode="floor").clamp(max=n - 1)
    labels = flat - torch.div(flat, k, rounding_mode="floor") * k
    scores = logit.sigmoid()
    deltas = box_deltas.float().gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
    boxes = decode_boxes(deltas, anchors[anchor_idx], post.box_weights, post.scale_clamp)
    boxes = clip_boxes_to_sizes(boxes, image_sizes.to(boxes.dtype).unsqueeze(1))
    # rank by decreasing score (ties: candidate order), as the eager NMS and best-D do
    c = flat.size(1)
    ranked, rank_order = torch.where(valid, scores, -1.0).sort(dim=1, descending=True, stable=True)
    in_rank = valid.gather(1, rank_order)
    priority = torch.where(in_rank, (c - torch.arange(c, device=flat.device)).to(torch.float32), -1.0)
    boxes = boxes.gather(1, rank_order.unsqueeze(-1).expand(-1, -1, 4))
    labels = labels.gather(1, rank_order)
    keep = nms_keep(boxes, priority, labels, k, post.nms_thresh, post.nms_cmp)
    # the D best kept: priorities are distinct, so topk's order is exact; D filler slots if C < D
    key = torch.cat((torch.where(keep, priority, -1.0), priority.new_full((b, d), -2.0)), dim=1)
    top, slot = key.topk(d, dim=1)
    found = top > 0
    boxes = torch.cat((boxes, boxes.new_zeros((b, d, 4))), dim=1).gather(1, slot.unsqueeze(-1).expand(-1, -1, 4))
    scores = torch.cat((ranked, ranked.new_zeros((b, d))), dim=1).gather(1, slot)
    labels = torch.cat((labels, labels.new_zeros((b, d))), dim=1).gather(1, slot)
    boxes = torch.where(found.unsqueeze(-1), boxes, 0.0)
    scores = torch.where(found, scores, 0.0)
    labels = torch.where(found, labels, -1)
    return boxes, scores, labels, found.sum(dim=1)


class PaddedDetector(ExportableDetector):
    """Pad + network + anchors + :func:`padded_postprocess` (see the module docstring)."""

    def __init__(self, network: nn.Module, spec: DetectorSpec, input_dtype: torch.dtype = torch.uint8) -> None:
        super().__init__(network, spec)
        self.input_dtype = input_dtype

    def forward(self, images: Tensor, image_sizes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        if images.dtype == torch.uint8:
            images = images.to(torch.float32) / 255.0
        h, w = images.size(2), images.size(3)
        div = max(self.size_divisibility, 1)
        ph, pw = (h + div - 1) // div * div, (w + div - 1) // div * div
        images = torch.nn.functional.pad(images, (0, pw - w, 0, ph - h))
        sizes = image_sizes.to(torch.int64)
        cls_logits, box_deltas = self.network(images, sizes)
        anchors, level_sizes = self.anchors(ph, pw, cls_logits.device)
        return padded_postprocess(self.postprocessor, cls_logits, box_deltas, anchors, level_sizes, sizes)

    def anchors(self, ph: int, pw: int, device: torch.device) -> Tuple[Tensor, List[int]]:
        """:meth:`ExportableDetector.anchors` with the strides kept as ints: with ``strides_from_input``
        they depend on the (symbolic) input size, which ``float()`` would fix to the example's."""
        levels: List[Tensor] = []
        counts: List[int] = []
        for i, s in enumerate(self.strides):
            lh, lw = (ph + s - 1) // s, (pw + s - 1) // s
            sy, sx = (ph // lh, pw // lw) if self.strides_from_input else (s, s)
            cell = self.cell_anchors[i]  # type: ignore[index]
            levels.append(grid_anchors(cell, sy, sx, self.offset, lh, lw).to(device, torch.float32))
            counts.append(levels[-1].size(0))
        return torch.cat(levels, dim=0), counts


def _contiguous_conv_format() -> Any:
    """While tracing, the CPU conv of a fake tensor picks its output memory format from the sizes, which
    adds the guards ``batch > 1`` and ``side > size_divisibility`` (size-1 dims make NCHW and NHWC
    ambiguous). The exported network runs contiguous NCHW, so pin the choice to that (only the traced
    strides depend on it); without this hook, the narrower range is what the file declares."""
    name = "_conv_determine_backend_memory_format"
    if not hasattr(torch._C, name):
        return contextlib.nullcontext()
    return mock.patch.object(torch._C, name, lambda *args: torch.contiguous_format)


def export_program(
    model: RetinaNet, images: Tensor, image_sizes: Tensor, dynamic: bool = True
) -> Tuple[Any, Dict[str, List[int]]]:
    """``(ExportedProgram of PaddedDetector(model), {"batch"|"height"|"width": [min, max]})``: with
    ``dynamic``, any batch and image size in the declared range, else the example's shape only.
    ``images`` (its dtype is the input dtype of the program) and ``image_sizes``: the example input."""
    from torch.export import Dim
    from torch.fx.experimental import _config

    fx_config: Any = _config  # its patch() is generated at import

    network = DetectorNetwork(model)
    network.channels_last = False  # the memory format hook above assumes NCHW
    detector = PaddedDetector(network, DetectorSpec.of(model), images.dtype).eval()
    shapes = None
    if dynamic:
        batch = Dim("batch", min=1, max=MAX_BATCH)
        height, width = Dim("height", min=1, max=MAX_SIDE), Dim("width", min=1, max=MAX_SIDE)
        shapes = {"images": {0: batch, 2: height, 3: width}, "image_sizes": {0: batch}}
    with (
        torch.no_grad(),
        fx_config.patch(backed_size_oblivious=True),
        _contiguous_conv_format(),
        winograd_disabled(model),
    ):
        program = torch.export.export(detector, (images, image_sizes), dynamic_shapes=shapes)
    return program, _input_ranges(program)


def _input_ranges(program: Any) -> Dict[str, List[int]]:
    """The ``[min, max]`` the program accepts for the batch size, height and width of its images."""
    spec = next(s for s in program.graph_signature.input_specs if s.arg.name == "images")
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == spec.arg.name)
    out: Dict[str, List[int]] = {}
    for key, size in zip(("batch", "height", "width"), (node.meta["val"].shape[i] for i in (0, 2, 3))):
        if isinstance(size, int):
            out[key] = [size, size]
        else:
            vr = program.range_constraints[size.node.expr]
            out[key] = [int(vr.lower), int(vr.upper)]
    return out
