"""The RetinaNet detector: backbone + FPN (P3..P7) + shared subnets, its training losses and its
inference post-processing.

``RetinaNet(cfg).forward(images, targets=None, image_sizes=None)``

- ``images``: float tensor ``[B, 3, H, W]``, already normalized and padded (H, W multiples of
  ``data.size_divisibility``: 128 by default, any multiple of 32 works, P6/P7 are then
  ``ceil(H / stride)``; see ``retinanet.data.collate``). No preprocessing happens inside the model.
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

from retinanet.ops.anchors import AnchorGenerator
from retinanet.ops.boxes import BoxCoder, batched_nms
from retinanet.config import ModelConfig
from retinanet.losses.focal import giou_loss, l1_loss, sigmoid_focal_loss, smooth_l1_loss
from retinanet.ops.matcher import Matcher
from retinanet.modeling.backbone import build_backbone
from retinanet.modeling.fpn import FPN, BackboneWithFPN
from retinanet.modeling.head import RetinaNetHead

__all__ = ["RetinaNet", "build_model", "topk_above"]

_SAMPLE = 1 << 15  # logits sampled per level to estimate a threshold below the k-th largest
_CHUNK = 1 << 20  # logits compared at once when collecting candidates (1 MB of bool scratch on CPU)
_sample_cache: dict = {}


def _sample_index(m: int, device: torch.device) -> Tensor:
    """A fixed pseudo-random set of ``_SAMPLE`` positions in ``[0, m)`` (cached per ``m``, device)."""
    key = (m, str(device))
    idx = _sample_cache.get(key)
    if idx is None:
        if len(_sample_cache) >= 32:
            _sample_cache.clear()
        idx = torch.randint(m, (_SAMPLE,), generator=torch.Generator().manual_seed(m)).to(device)
        _sample_cache[key] = idx
    return idx


_BLOCK = 128  # values per block whose maximum is taken first in _nonzero_gt (largest inputs)


def _block_size(m: int) -> int:
    """Block length for _nonzero_gt: 128 for the largest levels, smaller ones so that the few thousand
    values a top-k threshold lets through stay in a small fraction of the blocks."""
    return _BLOCK if m >= (1 << 23) else (64 if m >= (1 << 21) else 32)


def _nonzero_gt(x: Tensor, tau: float) -> Tensor:
    """Ascending indices of ``x[i] > tau`` (1-D ``x``), without a logits-sized temporary on CPU.

    On CPU: the maximum of each block of ``_BLOCK`` values is taken in one vectorized read, and only
    the blocks whose maximum exceeds ``tau`` are looked at element by element (a few thousand values
    when ``tau`` selects a few thousand). When many blocks qualify, a chunked compare through one
    small reused buffer is used instead."""
    m = x.numel()
    if m <= _CHUNK or x.device.type != "cpu":
        return (x > tau).nonzero().squeeze(1)
    if x.is_contiguous():
        bs = _block_size(m)
        nb = m // bs
        blocks = x[:nb * bs].view(nb, bs)
        # "not <=" so that a block whose maximum is NaN is looked at too (its other values may count)
        hot = (blocks.amax(1) <= tau).logical_not_().nonzero().squeeze(1)
        if hot.numel() * 4 <= nb:
            rc = (blocks.index_select(0, hot) > tau).nonzero()  # row-major: ascending indices
            idx = hot[rc[:, 0]].mul_(bs).add_(rc[:, 1])
            if nb * bs < m:
                idx = torch.cat([idx, (x[nb * bs:] > tau).nonzero().squeeze(1).add_(nb * bs)])
            return idx
    buf = torch.empty(_CHUNK, dtype=torch.bool, device=x.device)
    parts = []
    for s in range(0, m, _CHUNK):
        c = x[s:s + _CHUNK]
        nz = torch.gt(c, tau, out=buf[:c.numel()]).nonzero().squeeze(1)
        if nz.numel():
            parts.append(nz.add_(s))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=x.device)


def topk_above(x: Tensor, k: int, thresh: float = -math.inf) -> Tensor:
    """Ascending indices of the ``k`` largest values of the 1-D ``x`` among those ``> thresh``.

    The same set as ``x.topk(k)`` followed by ``> thresh`` (ties at the k-th value aside, where topk's
    own choice is arbitrary), in about one read of ``x``: a threshold ``tau`` is estimated from a fixed
    sample so that a few thousand values exceed it; if at least ``k`` do, the k largest are among them
    (exact), else it falls back to ``thresh`` itself. NaN never counts as above a threshold.
    """
    m = x.numel()
    if k <= 0 or m == 0:
        return torch.empty(0, dtype=torch.int64, device=x.device)
    tau = thresh
    if m > k and m > 4 * _SAMPLE:
        sample = x[_sample_index(m, x.device)]
        r = min(_SAMPLE, -(-4 * k * _SAMPLE // m) + 16)
        tau = max(thresh, float(sample.topk(r, sorted=False).values.min()))
    idx = _nonzero_gt(x, tau)
    if tau > thresh and idx.numel() < k:  # the estimate was too high: exact threshold
        idx = _nonzero_gt(x, thresh) if thresh > -math.inf else torch.arange(m, device=x.device)
    if idx.numel() > k:
        sel = x[idx].topk(k, sorted=False).indices
        idx = idx[sel].sort().values
    return idx

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
        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)
        self.fused = False  # True for the inference-only copy made by fuse_for_inference()

    def fuse_for_inference(self, inplace: bool = False, use_mkldnn: Optional[bool] = None) -> "RetinaNet":
        """An inference-only copy (or, with ``inplace``, this model) with every FrozenBatchNorm2d folded
        into its conv, and with ``use_mkldnn=True`` conv + bias + residual + ReLU fused into one oneDNN
        call (see :mod:`retinanet.modeling.fuse`). Same detections up to float rounding.

        The fused model is in eval mode and refuses ``train()``; its state dict is not the checkpoint
        format, so keep the unfused model for checkpoints, training and export.
        """
        from retinanet.modeling.fuse import fuse_for_inference

        model = fuse_for_inference(self, inplace=inplace, use_mkldnn=use_mkldnn)
        model.fused = True
        return model

    def train(self, mode: bool = True) -> "RetinaNet":
        if mode and getattr(self, "fused", False):
            raise RuntimeError("this RetinaNet was fused for inference (fuse_for_inference) and cannot be "
                               "trained; train the unfused model")
        return super().train(mode)

    # ------------------------------------------------------------------------------------------
    def forward(self, images: Tensor, targets: Optional[list[dict[str, Tensor]]] = None,
                image_sizes: Optional[Sequence[tuple[int, int]]] = None):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got shape {tuple(images.shape)}")
        if self.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
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
        # the foreground count of the whole global batch (summed over DDP processes), clamped at 1 as
        # a whole, then split over the processes (DDP averages their gradients): W processes then
        # compute exactly what one process with the global batch does, even when almost no anchor is
        # foreground; the EMA tracks the global count too, so it does not depend on W
        normalizer = num_fg.clone()
        world = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(normalizer)
            world = dist.get_world_size()
        if cfg.loss_normalizer == "ema":
            with torch.no_grad():
                self.fg_ema.mul_(cfg.normalizer_momentum).add_((1 - cfg.normalizer_momentum) * normalizer)
            normalizer = self.fg_ema.clone()
        normalizer = normalizer.clamp(min=1.0) / world

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
        """Top-k per level above the score threshold, decode, one batched NMS, best D per image.

        Candidates enter NMS in (image, anchor, class) order, so equal scores are resolved the same way
        whatever the top-k selection did internally."""
        cfg = self.cfg
        B, N, K = cls_logits.shape
        p = cfg.score_thresh
        logit_thresh = -math.inf if p <= 0 else (math.inf if p >= 1 else math.log(p / (1 - p)))

        # 1. top-k candidates above the threshold per level and image (on logits: sigmoid is monotonic),
        #    without sorting whole levels (see topk_above); kept in (image, anchor, class) order
        b_parts, f_parts, start = [], [], 0
        for n in level_sizes:
            k = min(cfg.topk_candidates, n * K)
            for b in range(B):
                idx = topk_above(cls_logits[b, start:start + n].reshape(-1), k, logit_thresh)
                b_parts.append(torch.full_like(idx, b))
                f_parts.append(idx.add_(start * K))
            start += n
        b_idx, flat = torch.cat(b_parts), torch.cat(f_parts)
        order = torch.argsort(b_idx * (N * K) + flat)
        b_idx, flat = b_idx[order], flat[order]

        # 2. decode and clip every surviving candidate of every image at once
        anchor_idx = torch.div(flat, K, rounding_mode="floor")
        labels = flat - anchor_idx * K
        scores = cls_logits.reshape(B, N * K)[b_idx, flat].float().sigmoid()
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
