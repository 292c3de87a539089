"""The RetinaNet detector: backbone + FPN (P3..P7) + shared subnets, its training losses and its
inference post-processing.

``RetinaNet(cfg).forward(images, targets=None, image_sizes=None)``

- ``images``: float tensor ``[B, 3, H, W]``, already normalized and padded (H, W multiples of 128;
  see ``retinanet.data.collate``). No preprocessing happens inside the model.
- ``targets`` (training): a list of ``B`` dicts with ``boxes`` ``[n, 4]`` (x1, y1, x2, y2 pixels of
  ``images``) and ``labels`` ``[n]`` (contiguous class indices ``0..K-1``).
- ``image_sizes``: ``(h, w)`` of each image before padding; detections are clipped to it.

Training returns ``{"loss_cls", "loss_box", "num_fg"}``: the focal loss summed over every non-ignored
anchor and the box loss summed over foreground anchors, both divided by the number of foreground
anchors in the whole batch (summed over all processes under DistributedDataParallel). Eval returns a
list of ``B`` dicts ``{"boxes" [d, 4], "scores" [d], "labels" [d]}``, ``d <= detections_per_image``.

Anchors, head outputs and targets share one flat anchor order (levels P3..P7, positions row-major,
then the A anchors), so the loss is one vectorized call over ``[B, N, K]``; only the matching loops
over images. Post-processing is batched: top-k per level on logits, one decode, one batched NMS for
all images and classes, then the best ``detections_per_image`` per image.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..anchors import AnchorGenerator
from ..boxes import BoxCoder, batched_nms
from ..config import ModelConfig
from ..losses import giou_loss, l1_loss, sigmoid_focal_loss, smooth_l1_loss
from ..matcher import Matcher
from .backbone import build_backbone
from .fpn import FPN, BackboneWithFPN
from .head import RetinaNetHead

__all__ = ["RetinaNet", "build_model"]

Detections = list[dict[str, Tensor]]


class RetinaNet(nn.Module):
    """RetinaNet with a focal-loss classification subnet and a box regression subnet."""

    def __init__(self, cfg: ModelConfig, backbone_weights: Optional[str] = None) -> None:
        super().__init__()
        self.cfg = cfg
        b = cfg.backbone
        body = build_backbone(b.name, norm=b.norm, freeze_at=b.freeze_at,
                              weights=backbone_weights if backbone_weights is not None else b.weights)
        fpn = FPN(list(body.out_channels), cfg.fpn_channels, p6_from=cfg.p6_from)
        self.backbone = BackboneWithFPN(body, fpn)
        a = cfg.anchors
        self.anchor_generator = AnchorGenerator(sizes=a.sizes, strides=a.strides, scales=a.scales,
                                                ratios=a.ratios, offset=a.offset)
        self.num_classes = cfg.num_classes
        self.head = RetinaNetHead(cfg.fpn_channels, self.anchor_generator.num_anchors, cfg.num_classes,
                                  num_convs=cfg.head_convs, prior=cfg.prior, norm=cfg.head_norm)
        self.matcher = Matcher(cfg.fg_iou_threshold, cfg.bg_iou_threshold, cfg.allow_low_quality_matches)
        self.box_coder = BoxCoder(weights=cfg.box_coder_weights)
        # EMA of the foreground count (detectron2's normalizer); kept out of the state dict so that
        # torchvision-format weight files load; the trainer checkpoints it separately.
        self.register_buffer("fg_ema", torch.tensor(100.0), persistent=False)

    # ------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, targets: Optional[list[dict[str, Tensor]]] = None,
                image_sizes: Optional[Sequence[tuple[int, int]]] = None):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
        features = self.backbone(images)
        cls_logits, box_deltas = self.head(features)
        anchors = self.anchors_for(features)
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet in training mode needs targets (or call model.eval())")
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {len(targets)} targets for {images.shape[0]} images")
            return self.losses(cls_logits, box_deltas, anchors, targets)
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        level_sizes = [f.shape[-2] * f.shape[-1] * self.anchor_generator.num_anchors for f in features]
        return self.postprocess(cls_logits, box_deltas, anchors, level_sizes, image_sizes)

    def anchors_for(self, features: list[Tensor]) -> Tensor:
        """All anchors ``[N, 4]`` (float32) for the given P3..P7 feature maps, levels concatenated."""
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        per_level = self.anchor_generator(sizes, device=features[0].device)
        return per_level[0] if len(per_level) == 1 else torch.cat(per_level, dim=0)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def match(self, anchors: Tensor, targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Assign anchors to ground truth.

        Returns ``cls_targets`` ``[B, N]`` (class index, -1 background, -2 ignored) and
        ``matched_boxes`` ``[F, 4]``: the ground-truth box of every foreground anchor, in the
        row-major order of ``cls_targets >= 0``.
        """
        cls_targets, fg_boxes = [], []
        for t in targets:
            gt = t["boxes"].to(anchors.device, torch.float32)
            labels = t["labels"].to(anchors.device)
            idx = self.matcher.match(gt, anchors)
            fg = idx >= 0
            cls_t = idx.clone()
            if gt.shape[0] > 0:
                cls_t[fg] = labels[idx[fg]].long()
                fg_boxes.append(gt[idx[fg]])
            cls_targets.append(cls_t)
        boxes = torch.cat(fg_boxes) if fg_boxes else anchors.new_zeros((0, 4))
        return torch.stack(cls_targets), boxes

    def losses(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor,
               targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        cfg = self.cfg
        cls_targets, matched_boxes = self.match(anchors, targets)
        fg = cls_targets >= 0
        num_fg = fg.sum().to(torch.float32)
        normalizer = num_fg.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(normalizer)
            normalizer = normalizer / dist.get_world_size()
        if cfg.loss_normalizer == "ema":
            with torch.no_grad():
                self.fg_ema.mul_(cfg.normalizer_momentum).add_((1 - cfg.normalizer_momentum) * normalizer)
            normalizer = self.fg_ema.clone()
        normalizer = normalizer.clamp(min=1.0)

        gamma = cfg.focal_gamma if cfg.cls_loss == "focal" else 0.0
        loss_cls = sigmoid_focal_loss(cls_logits, cls_targets, alpha=cfg.focal_alpha, gamma=gamma,
                                      reduction="sum") / normalizer

        b_idx, a_idx = fg.nonzero(as_tuple=True)
        pred = box_deltas[b_idx, a_idx].float()
        fg_anchors = anchors[a_idx]
        if cfg.box_loss == "giou":
            loss_box = giou_loss(self.box_coder.decode(pred, fg_anchors), matched_boxes, reduction="sum")
        else:
            target_deltas = self.box_coder.encode(matched_boxes, fg_anchors)
            if cfg.box_loss == "smooth_l1":
                loss_box = smooth_l1_loss(pred, target_deltas, beta=cfg.smooth_l1_beta, reduction="sum")
            else:
                loss_box = l1_loss(pred, target_deltas, reduction="sum")
        loss_box = cfg.box_loss_weight * loss_box / normalizer
        return {"loss_cls": loss_cls, "loss_box": loss_box, "num_fg": num_fg.detach()}

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor,
                    level_sizes: Sequence[int], image_sizes: Sequence[tuple[int, int]]) -> Detections:
        """Top-k per level above the score threshold, decode, one batched NMS, best D per image."""
        cfg = self.cfg
        B, N, K = cls_logits.shape
        p = cfg.score_thresh
        logit_thresh = -math.inf if p <= 0 else (math.inf if p >= 1 else math.log(p / (1 - p)))

        # 1. top-k candidates per level (on logits: sigmoid is monotonic), batched over images
        vals, flat_idx, start = [], [], 0
        for n in level_sizes:
            lg = cls_logits[:, start:start + n, :].reshape(B, n * K)
            k = min(cfg.topk_candidates, n * K)
            v, i = lg.topk(k, dim=1, sorted=False)
            vals.append(v)
            flat_idx.append(i + start * K)
            start += n
        vals_t = torch.cat(vals, dim=1)
        idx_t = torch.cat(flat_idx, dim=1)

        # 2. threshold, decode and clip every surviving candidate of every image at once
        b_idx, j = (vals_t > logit_thresh).nonzero(as_tuple=True)
        flat = idx_t[b_idx, j]
        anchor_idx = torch.div(flat, K, rounding_mode="floor")
        labels = flat - anchor_idx * K
        scores = vals_t[b_idx, j].float().sigmoid()
        boxes = self.box_coder.decode(box_deltas[b_idx, anchor_idx].float(), anchors[anchor_idx])
        sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device).reshape(-1, 2)[b_idx]
        boxes = torch.stack([boxes[:, 0].clamp(min=0).minimum(sizes[:, 1]),
                             boxes[:, 1].clamp(min=0).minimum(sizes[:, 0]),
                             boxes[:, 2].clamp(min=0).minimum(sizes[:, 1]),
                             boxes[:, 3].clamp(min=0).minimum(sizes[:, 0])], dim=1)

        # 3. one NMS over all images and classes (different image or class never suppress)
        keep = batched_nms(boxes, scores, b_idx * K + labels, cfg.nms_thresh)  # by decreasing score

        # 4. best D per image: stable sort by image keeps the score order inside each image
        kb = b_idx[keep]
        kb, order = torch.sort(kb, stable=True)
        keep = keep[order]
        counts = torch.bincount(kb, minlength=B)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(kb.numel(), device=kb.device) - first[kb]
        sel = rank < cfg.detections_per_image
        keep, kb = keep[sel], kb[sel]
        per_image = torch.bincount(kb, minlength=B).tolist()
        out_boxes = boxes[keep].split(per_image)
        out_scores = scores[keep].split(per_image)
        out_labels = labels[keep].split(per_image)
        return [{"boxes": bx, "scores": sc, "labels": lb}
                for bx, sc, lb in zip(out_boxes, out_scores, out_labels)]


def build_model(cfg: ModelConfig, backbone_weights: Optional[str] = None) -> RetinaNet:
    """Construct a :class:`RetinaNet` from a :class:`ModelConfig`."""
    return RetinaNet(cfg, backbone_weights=backbone_weights)
