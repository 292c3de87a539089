"""Test-time augmentation: run a detector on several views of each image and merge the detections.

``TTADetector(model, flip=True, sizes=(640, 1024), base_size=800, merge="nms", iou_threshold=0.55,
detections_per_image=100)`` wraps a detector with the call the evaluation loop and the predictor use,
``forward(images: list of [3, h, w], output_sizes: list of (H, W)) -> list of {boxes, scores, labels}``.
Views: the images as given (resized to the test size ``base_size`` by the data pipeline), each extra
shorter-side size in ``sizes`` (the image rescaled by ``size / base_size``, bilinear), and with ``flip``
the mirror image of every one of those. The wrapped model returns each view's boxes in the pixels of
``output_sizes``; a mirrored view's boxes are mirrored back (``x1' = W - x2``).

Merging, per image and class, the boxes of all views:

- ``"nms"``: greedy NMS at ``iou_threshold``, then the best ``detections_per_image``;
- ``"wbf"``: weighted box fusion (Solovyev et al. 2021): boxes in decreasing score order join the first
  cluster whose fused box overlaps them by more than ``iou_threshold``; a cluster's box is the
  score-weighted mean of its boxes and its score the mean score times ``min(n, V) / V`` for ``n`` boxes
  of ``V`` views, so a box only one view saw is down-weighted.

:func:`with_tta` ``(model, cfg)`` applies ``cfg.test`` (``tta``: ``"hflip"`` and shorter-side sizes;
``tta_merge``; ``tta_iou``) and returns ``model`` unchanged when ``cfg.test.tta`` is empty.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retinanet.config import Config
from retinanet.ops.boxes import box_iou
from retinanet.ops.nms import batched_nms

__all__ = ["TTADetector", "weighted_box_fusion", "with_tta", "MERGES"]

MERGES = ("nms", "wbf")
Detections = list[dict[str, Tensor]]


def weighted_box_fusion(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float, num_views: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Fuse ``[n, 4]`` boxes of ``num_views`` views (see the module docstring) -> ``(boxes [m, 4],
    scores [m], labels [m])`` sorted by decreasing score."""
    out_b: list[Tensor] = []
    out_s: list[Tensor] = []
    out_l: list[Tensor] = []
    for cls in labels.unique().tolist():
        sel = (labels == cls).nonzero().flatten()
        order = sel[scores[sel].argsort(descending=True, stable=True)]
        b, s = boxes[order].double(), scores[order].double()
        members: list[list[int]] = []
        fused = torch.empty((0, 4), dtype=torch.float64)
        for i in range(b.shape[0]):
            hit = -1
            if fused.shape[0]:
                over = (box_iou(b[i : i + 1], fused)[0] > iou_threshold).nonzero().flatten()
                hit = int(over[0]) if over.numel() else -1
            if hit < 0:
                members.append([i])
                fused = torch.cat([fused, b[i : i + 1]])
            else:
                members[hit].append(i)
                w = s[members[hit]]
                fused[hit] = (b[members[hit]] * w[:, None]).sum(0) / w.sum()
        for k, m in enumerate(members):
            out_b.append(fused[k])
            out_s.append(s[m].mean() * min(len(m), num_views) / num_views)
            out_l.append(torch.tensor(cls))
    if not out_b:
        return boxes.new_zeros((0, 4)), scores.new_zeros(0), labels.new_zeros(0)
    fb, fs, fl = torch.stack(out_b), torch.stack(out_s), torch.stack(out_l)
    order = fs.argsort(descending=True, stable=True)
    return fb[order].to(boxes.dtype), fs[order].to(scores.dtype), fl[order].to(labels.dtype)


class TTADetector(nn.Module):
    """A detector run on several views per image, detections merged (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        flip: bool = True,
        sizes: Sequence[int] = (),
        base_size: int = 800,
        merge: str = "nms",
        iou_threshold: float = 0.55,
        detections_per_image: int = 100,
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"TTA merge must be one of {MERGES}, got {merge!r}")
        self.model = model
        self.flip = bool(flip)
        self.scales = [1.0] + [float(s) / float(base_size) for s in sizes]
        self.merge = merge
        self.iou_threshold = float(iou_threshold)
        self.detections_per_image = int(detections_per_image)

    @property
    def num_views(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    def forward(self, images: Sequence[Tensor], output_sizes: Sequence[tuple[int, int]]) -> Detections:
        views: list[Detections] = []
        for scale in self.scales:
            scaled = list(images) if scale == 1.0 else [_rescale(im, scale) for im in images]
            views.append(self.model(scaled, output_sizes=output_sizes))
            if self.flip:
                mirrored = self.model([im.flip(-1) for im in scaled], output_sizes=output_sizes)
                views.append([_unflip(d, w) for d, (_, w) in zip(mirrored, output_sizes)])
        return [self._merge([v[i] for v in views]) for i in range(len(images))]

    def _merge(self, dets: Detections) -> dict[str, Tensor]:
        boxes = torch.cat([d["boxes"] for d in dets])
        scores = torch.cat([d["scores"] for d in dets])
        labels = torch.cat([d["labels"] for d in dets])
        if self.merge == "wbf":
            boxes, scores, labels = weighted_box_fusion(boxes, scores, labels, self.iou_threshold, self.num_views)
            keep = torch.arange(min(self.detections_per_image, scores.numel()), device=scores.device)
        else:
            keep = batched_nms(boxes, scores, labels, self.iou_threshold)[: self.detections_per_image]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def _rescale(image: Tensor, scale: float) -> Tensor:
    x = image.float() / 255.0 if image.dtype == torch.uint8 else image
    return F.interpolate(x[None], scale_factor=scale, mode="bilinear", align_corners=False)[0]


def _unflip(det: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    b = det["boxes"]
    return {**det, "boxes": torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], dim=1)}


def with_tta(model: nn.Module, cfg: Config) -> nn.Module:
    """``model`` wrapped in a :class:`TTADetector` as ``cfg.test`` says, or ``model`` when TTA is off."""
    t = cfg.test
    if not t.tta:
        return model
    tta = TTADetector(
        model,
        flip="hflip" in t.tta,
        sizes=[int(v) for v in t.tta if v != "hflip"],
        base_size=cfg.data.test_min_size,
        merge=t.tta_merge,
        iou_threshold=t.tta_iou,
        detections_per_image=cfg.model.detections_per_image,
    )
    return tta.train(model.training)  # a fused (eval-only) model must never be switched to training
