"""RetinaNet's inference post-processing, for the eager model and the TorchScript export.

The pt2 and ONNX files run the fixed-shape form of these steps (:mod:`retinanet.export.padded`: the same
numbers, decoding and clipping, candidates and outputs padded to fixed sizes).

``PostProcessor(box_coder, score_thresh, topk_candidates, nms_thresh, detections_per_image)`` turns the
head's outputs into detections:

    forward(cls_logits [B, N, K], box_deltas [B, N, 4], anchors [N, 4], level_sizes: list[int],
            image_sizes [B, 2] (h, w) int) -> list of B dicts {boxes [d, 4], scores [d], labels [d]}

1. per image and pyramid level (``level_sizes``: anchors per level, in the flat anchor order), the
   ``topk_candidates`` best (anchor, class) logits above ``logit(score_thresh)`` (on logits: sigmoid is
   monotonic), kept in (image, anchor, class) order so equal scores resolve the same way everywhere;
2. decode those candidates' boxes and clip them to their image;
3. one batched NMS over all images and classes (a different image or class never suppresses);
4. the best ``detections_per_image`` per image, by decreasing score.

Step 1 runs :func:`~retinanet.ops.topk.topk_above` in eager mode and ``torch.topk`` (same set) when
traced or scripted. :func:`rescale_boxes` maps boxes from the network's input (the resized image) to
the original image's size: the one way back to original pixels, for the model and every export.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

from retinanet.ops.box_coder import BoxCoder, decode_boxes
from retinanet.ops.boxes import clip_boxes_to_sizes, exact_threshold
from retinanet.ops.nms import greedy_nms
from retinanet.ops.topk import topk_above

__all__ = ["PostProcessor", "rescale_boxes", "rescale_detections", "score_to_logit"]

Detections = List[Dict[str, Tensor]]


def score_to_logit(p: float) -> float:
    """The logit whose sigmoid is ``p``; -inf for ``p <= 0`` and +inf for ``p >= 1``."""
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return math.log(p / (1 - p))


@torch.jit.unused
def _eager_candidates(cls_logits: Tensor, level_sizes: List[int], topk: int, thresh: float) -> Tuple[Tensor, Tensor]:
    """Step 1 with :func:`topk_above` (one read of each level instead of a sort)."""
    num_images, _, num_classes = cls_logits.shape
    b_parts, f_parts, start = [], [], 0
    for n in level_sizes:
        k = min(topk, n * num_classes)
        for b in range(num_images):
            idx = topk_above(cls_logits[b, start : start + n].reshape(-1), k, thresh)
            b_parts.append(torch.full_like(idx, b))
            f_parts.append(idx.add_(start * num_classes))
        start += n
    return torch.cat(b_parts), torch.cat(f_parts)


def _topk_candidates(cls_logits: Tensor, level_sizes: List[int], topk: int, thresh: float) -> Tuple[Tensor, Tensor]:
    """Step 1 with ``torch.topk`` per level over all images at once (traceable, scriptable)."""
    num_images, _, num_classes = cls_logits.shape
    b_parts: List[Tensor] = []
    f_parts: List[Tensor] = []
    start = 0
    for n in level_sizes:
        level = cls_logits[:, start : start + n].reshape(num_images, n * num_classes)
        values, idx = level.topk(min(topk, n * num_classes), dim=1, sorted=False)
        hit = (values > thresh).nonzero()
        b_parts.append(hit[:, 0])
        f_parts.append(idx[hit[:, 0], hit[:, 1]] + start * num_classes)
        start += n
    return torch.cat(b_parts), torch.cat(f_parts)


class PostProcessor(nn.Module):
    """Threshold, per-level top-k, decode, clip, batched NMS, best-D (see the module docstring)."""

    def __init__(
        self,
        box_coder: BoxCoder,
        score_thresh: float = 0.05,
        topk_candidates: int = 1000,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        self.box_weights: Tuple[float, float, float, float] = box_coder.weights
        self.scale_clamp = float(box_coder.scale_clamp)
        self.score_thresh = float(score_thresh)
        self.logit_thresh = score_to_logit(self.score_thresh)
        self.topk_candidates = int(topk_candidates)
        self.nms_thresh = float(nms_thresh)
        self.nms_cmp = exact_threshold(self.nms_thresh, torch.float32, strict=True)  # boxes are float32
        self.detections_per_image = int(detections_per_image)

    def extra_repr(self) -> str:
        return (
            f"score_thresh={self.score_thresh}, topk_candidates={self.topk_candidates}, "
            f"nms_thresh={self.nms_thresh}, detections_per_image={self.detections_per_image}"
        )

    def candidates(self, cls_logits: Tensor, level_sizes: List[int]) -> Tuple[Tensor, Tensor]:
        """Step 1: ``(image index [C], flat (anchor * K + class) index [C])`` in (image, anchor, class) order."""
        n, k = cls_logits.shape[1], cls_logits.shape[2]
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            b_idx, flat = _topk_candidates(cls_logits, level_sizes, self.topk_candidates, self.logit_thresh)
        else:
            b_idx, flat = _eager_candidates(cls_logits, level_sizes, self.topk_candidates, self.logit_thresh)
        order = torch.argsort(b_idx * (n * k) + flat)
        return b_idx[order], flat[order]

    def forward(
        self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, level_sizes: List[int], image_sizes: Tensor
    ) -> Detections:
        num_images, n, k = cls_logits.shape
        b_idx, flat = self.candidates(cls_logits, level_sizes)
        anchor_idx = torch.div(flat, k, rounding_mode="floor")
        labels = flat - anchor_idx * k
        scores = cls_logits.reshape(num_images, n * k)[b_idx, flat].float().sigmoid()
        boxes = decode_boxes(
            box_deltas[b_idx, anchor_idx].float(), anchors[anchor_idx], self.box_weights, self.scale_clamp
        )
        boxes = clip_boxes_to_sizes(boxes, image_sizes.to(boxes.dtype)[b_idx])
        keep = greedy_nms(boxes, scores, b_idx * k + labels, self.nms_thresh, self.nms_cmp)  # by decreasing score
        return self.best_per_image(keep, b_idx, boxes, scores, labels, num_images)

    def best_per_image(
        self, keep: Tensor, b_idx: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, num_images: int
    ) -> Detections:
        """Step 4: split the kept candidates (by decreasing score) per image, at most D each."""
        kb, order = torch.sort(b_idx[keep], stable=True)  # stable: score order inside each image
        keep = keep[order]
        counts = torch.bincount(kb, minlength=num_images)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(kb.numel(), device=kb.device) - first[kb]
        sel = rank < self.detections_per_image
        keep, kb = keep[sel], kb[sel]
        per_image: List[int] = torch.bincount(kb, minlength=num_images).tolist()
        out: Detections = []
        for bx, sc, lb in zip(
            boxes[keep].split(per_image), scores[keep].split(per_image), labels[keep].split(per_image)
        ):
            out.append({"boxes": bx, "scores": sc, "labels": lb})
        return out


def rescale_boxes(boxes: Tensor, in_h: float, in_w: float, out_h: float, out_w: float) -> Tensor:
    """``[n, 4]`` boxes of an ``in_h x in_w`` image mapped to ``out_h x out_w`` (per-axis factors, float64
    on CPU so the mapping is exact) and clipped to it; same dtype as ``boxes``."""
    work = torch.float64 if boxes.device.type == "cpu" else torch.float32
    fx, fy = out_w / in_w, out_h / in_h
    factors = torch.tensor([fx, fy, fx, fy], dtype=work, device=boxes.device)
    scaled = (boxes.to(work) * factors).to(boxes.dtype)
    size = torch.tensor([[out_h, out_w]], dtype=scaled.dtype, device=scaled.device)
    return clip_boxes_to_sizes(scaled, size.expand(scaled.size(0), 2))


def rescale_detections(
    detections: Detections, input_sizes: Sequence[Tuple[int, int]], output_sizes: Sequence[Tuple[int, int]]
) -> Detections:
    """Each image's detections with boxes mapped from its network input size ``(h, w)`` to
    ``output_sizes`` (e.g. the original image's) by :func:`rescale_boxes`."""
    out: Detections = []
    for det, (h, w), (oh, ow) in zip(detections, input_sizes, output_sizes):
        new = dict(det)
        new["boxes"] = rescale_boxes(det["boxes"], float(h), float(w), float(oh), float(ow))
        out.append(new)
    return out
