"""The detector's inference path in a form TorchScript compiles and ``torch.export`` traces.

``DetectorNetwork(model)``: ``(images [B, 3, H, W] uint8 or float 0-1, image_sizes [B, 2]) ->
(cls_logits [B, N, K], box_deltas [B, N, 4])``: normalize, pad, backbone, FPN, head (the dense part).

``ExportableDetector(network, spec)``: ``forward(images [B, 3, H, W], image_sizes [B, 2] | None,
output_sizes [B, 2] | None) -> list of B dicts {boxes [d, 4], scores [d], labels [d]}``: the network,
then the anchors of :func:`retinanet.ops.anchors.grid_anchors` and the model's own
:class:`~retinanet.modeling.postprocess.PostProcessor`, and boxes rescaled to ``output_sizes``
(default: ``image_sizes``, default: ``(H, W)``). ``image_sizes`` is the valid ``(h, w)`` of each image of
a batch the caller stacked at the top-left. ``spec`` (:class:`DetectorSpec`) holds every number it needs,
so it is rebuilt from an export's metadata as well as from a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from retinanet.modeling.postprocess import PostProcessor, rescale_boxes
from retinanet.modeling.preprocess import normalize_and_pad
from retinanet.modeling.retinanet import RetinaNet
from retinanet.ops.anchors import grid_anchors
from retinanet.ops.box_coder import BoxCoder

__all__ = ["DetectorSpec", "DetectorNetwork", "ExportableDetector"]


@dataclass
class DetectorSpec:
    """The non-learned numbers of a detector's inference path (JSON-serializable)."""

    pixel_mean: List[float]
    pixel_std: List[float]
    size_divisibility: int
    strides: List[int]
    cell_anchors: List[List[List[float]]]  # per level, A x (x1, y1, x2, y2) around the origin
    anchor_offset: float
    box_coder_weights: List[float]
    scale_clamp: float
    score_thresh: float
    topk_candidates: int
    nms_thresh: float
    detections_per_image: int
    strides_from_input: bool = False  # stride of a level = padded input size // its feature size

    @classmethod
    def of(cls, model: RetinaNet) -> "DetectorSpec":
        gen, post = model.anchor_generator, model.postprocessor
        return cls(
            pixel_mean=model.pixel_mean.flatten().tolist(),
            pixel_std=model.pixel_std.flatten().tolist(),
            size_divisibility=model.size_divisibility,
            strides=[int(s) for s in gen.strides],
            cell_anchors=[c.tolist() for c in gen.cell_anchors],
            anchor_offset=float(gen.offset),
            strides_from_input=bool(gen.strides_from_input),
            box_coder_weights=list(model.box_coder.weights),
            scale_clamp=model.box_coder.scale_clamp,
            score_thresh=post.score_thresh,
            topk_candidates=post.topk_candidates,
            nms_thresh=post.nms_thresh,
            detections_per_image=post.detections_per_image,
        )

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class DetectorNetwork(nn.Module):
    """Normalize + pad + backbone + FPN + head of ``model`` (see the module docstring)."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, model: RetinaNet) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head
        self.register_buffer("pixel_mean", model.pixel_mean.clone())
        self.register_buffer("pixel_std", model.pixel_std.clone())
        self.size_divisibility = model.size_divisibility
        self.channels_last = model.channels_last

    def forward(self, images: Tensor, image_sizes: Tensor) -> Tuple[Tensor, Tensor]:
        x = normalize_and_pad(images, image_sizes, self.pixel_mean, self.pixel_std, self.size_divisibility)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        cls_logits, box_deltas = self.head(self.backbone(x))
        return cls_logits, box_deltas


class ExportableDetector(nn.Module):
    """Network + anchors + post-processing + rescaling (see the module docstring)."""

    def __init__(self, network: nn.Module, spec: DetectorSpec) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("pixel_mean", torch.tensor(spec.pixel_mean, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(spec.pixel_std, dtype=torch.float32).view(3, 1, 1))
        self.register_buffer("cell_anchors", torch.tensor(spec.cell_anchors, dtype=torch.float64))
        self.size_divisibility = int(spec.size_divisibility)
        self.strides: List[int] = [int(s) for s in spec.strides]
        self.offset = float(spec.anchor_offset)
        self.strides_from_input = bool(spec.strides_from_input)
        weights = spec.box_coder_weights
        coder = BoxCoder((weights[0], weights[1], weights[2], weights[3]), spec.scale_clamp)
        self.postprocessor = PostProcessor(
            coder, spec.score_thresh, spec.topk_candidates, spec.nms_thresh, spec.detections_per_image
        )

    def forward(
        self, images: Tensor, image_sizes: Optional[Tensor] = None, output_sizes: Optional[Tensor] = None
    ) -> List[Dict[str, Tensor]]:
        if images.dim() != 4 or images.size(1) != 3:
            raise ValueError("images must be a [B, 3, H, W] RGB tensor (uint8 0-255 or float 0-1)")
        if images.dtype == torch.uint8:  # here, not in the traced network (tracing fixes one dtype's path)
            images = images.to(torch.float32).div_(255.0)
        b, h, w = images.size(0), images.size(2), images.size(3)
        if image_sizes is None:
            sizes = torch.tensor([[h, w]], dtype=torch.int64, device=images.device).expand(b, 2)
        else:
            if image_sizes.dim() != 2 or image_sizes.size(0) != b or image_sizes.size(1) != 2:
                raise ValueError("image_sizes must be a [B, 2] tensor of (h, w) per image")
            sizes = image_sizes.to(torch.int64)
        d = max(self.size_divisibility, 1)
        ph, pw = (h + d - 1) // d * d, (w + d - 1) // d * d
        if ph != h or pw != w:  # the network normalizes, then zeroes everything outside `sizes`
            images = torch.nn.functional.pad(images, (0, pw - w, 0, ph - h))
        cls_logits, box_deltas = self.network(images, sizes)
        anchors, level_sizes = self.anchors(ph, pw, cls_logits.device)
        dets = self.postprocessor(cls_logits, box_deltas, anchors, level_sizes, sizes.to(cls_logits.device))
        targets = sizes if output_sizes is None else output_sizes.to(torch.int64)
        out: List[Dict[str, Tensor]] = []
        for i, det in enumerate(dets):
            boxes = rescale_boxes(
                det["boxes"], float(sizes[i, 0]), float(sizes[i, 1]), float(targets[i, 0]), float(targets[i, 1])
            )
            out.append({"boxes": boxes, "scores": det["scores"], "labels": det["labels"]})
        return out

    def anchors(self, ph: int, pw: int, device: torch.device) -> Tuple[Tensor, List[int]]:
        """Anchors ``[N, 4]`` of a padded ``ph x pw`` input and the anchor count of each level."""
        levels: List[Tensor] = []
        counts: List[int] = []
        for i, s in enumerate(self.strides):
            lh, lw = (ph + s - 1) // s, (pw + s - 1) // s
            # a buffer: the class annotation that would type it is a string TorchScript cannot resolve
            cell = self.cell_anchors[i]  # type: ignore[index]
            sy, sx = (float(ph // lh), float(pw // lw)) if self.strides_from_input else (float(s), float(s))
            grid = grid_anchors(cell, sy, sx, self.offset, lh, lw).to(device, torch.float32)
            levels.append(grid)
            counts.append(grid.size(0))
        return torch.cat(levels, dim=0), counts
