"""The RetinaNet detector: it owns its input and output.

``RetinaNet(backbone, head, anchor_generator, matcher, box_coder, postprocessor, ...)`` takes its parts
as objects; :meth:`RetinaNet.from_config` builds them from a :class:`~retinanet.config.Config` without
touching the disk (:func:`retinanet.modeling.build.build_model` also loads weights).

``forward(images, targets=None, output_sizes=None)``

- ``images``: a list of ``[3, h, w]`` tensors (float RGB in 0-1, or uint8 0-255) of any sizes, or one
  ``[B, 3, H, W]`` tensor. The model normalizes them with its ``pixel_mean`` / ``pixel_std`` buffers and
  zero-pads them (bottom/right) to a multiple of ``size_divisibility``.
- ``targets`` (training mode): ``B`` dicts with ``boxes`` ``[n, 4]`` (x1, y1, x2, y2 pixels of the given
  images) and ``labels`` ``[n]`` (contiguous class indices ``0..K-1``).
- ``output_sizes`` (eval mode): ``(h, w)`` per image to return boxes in, e.g. the original file's size
  when ``images`` were resized; default: the sizes of ``images``.

Training returns ``{"loss_cls", "loss_box", "num_fg"}``: the focal loss *summed* over every non-ignored
anchor (``cls_loss="ohem"``: the mean cross-entropy of the OHEM minibatch times ``num_fg``), the box
loss (times ``box_loss_weight``) summed over foreground anchors, and the foreground count. The caller
divides both by its normalizer (the trainer: the foreground count of the global batch, see
:mod:`retinanet.training.normalizer`). Eval returns ``B`` dicts ``{"boxes" [d, 4], "scores" [d],
"labels" [d]}`` (:class:`~retinanet.modeling.postprocess.PostProcessor`).

Anchors, head outputs and targets share one flat anchor order (levels P3..P7, positions row-major,
then the A anchors), so the loss is one vectorized call over ``[B, N, K]``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from retinanet.config import Config
from retinanet.losses import giou_loss, l1_loss, sigmoid_focal_loss, smooth_l1_loss
from retinanet.losses.ohem import ohem_cross_entropy
from retinanet.modeling.backbone import build_backbone
from retinanet.modeling.conv import set_winograd
from retinanet.modeling.fpn import FPN, BackboneWithFPN
from retinanet.modeling.head import RetinaNetHead
from retinanet.modeling.postprocess import Detections, PostProcessor, rescale_detections
from retinanet.modeling.preprocess import batch_images, normalize_and_pad
from retinanet.ops.anchors import AnchorGenerator
from retinanet.ops.box_coder import BoxCoder
from retinanet.ops.matcher import Matcher

__all__ = ["RetinaNet", "Detections"]

CLS_LOSSES = ("focal", "ce", "ohem")
BOX_LOSSES = ("smooth_l1", "l1", "giou")
Images = Union[Tensor, Sequence[Tensor]]


class RetinaNet(nn.Module):
    """Backbone + FPN + shared subnets, with its focal-loss training targets and post-processing."""

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(
        self,
        backbone: BackboneWithFPN,
        head: RetinaNetHead,
        anchor_generator: AnchorGenerator,
        matcher: Matcher,
        box_coder: BoxCoder,
        postprocessor: PostProcessor,
        *,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        size_divisibility: int = 32,
        cls_loss: str = "focal",
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 0.1,
        box_loss_weight: float = 1.0,
        channels_last: bool = False,
        ohem_batch: int = 128,
        ohem_nms: Optional[float] = 0.5,
        ohem_pos_fraction: Optional[float] = None,
    ) -> None:
        super().__init__()
        if cls_loss not in CLS_LOSSES or box_loss not in BOX_LOSSES:
            raise ValueError(
                f"cls_loss must be one of {CLS_LOSSES} and box_loss one of {BOX_LOSSES}, got {cls_loss!r}, {box_loss!r}"
            )
        self.backbone = backbone
        self.head = head
        self.anchor_generator = anchor_generator
        self.matcher = matcher
        self.box_coder = box_coder
        self.postprocessor = postprocessor
        self.num_classes = head.classification_head.num_classes
        # not in the state dict (torchvision-format files have no such keys): the config carries them
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False)
        self.size_divisibility = int(size_divisibility)
        self.cls_loss, self.focal_alpha, self.focal_gamma = cls_loss, float(focal_alpha), float(focal_gamma)
        self.box_loss, self.smooth_l1_beta = box_loss, float(smooth_l1_beta)
        self.box_loss_weight = float(box_loss_weight)
        self.ohem_batch, self.ohem_nms, self.ohem_pos_fraction = int(ohem_batch), ohem_nms, ohem_pos_fraction
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it
        self.fused = False  # True for the inference-only copy made by fuse_for_inference()

    @classmethod
    def from_config(cls, cfg: Config) -> "RetinaNet":
        """The detector of ``cfg.model`` (randomly initialized; no file is read)."""
        m = cfg.model
        b = m.backbone
        body = build_backbone(b.name, norm=b.norm, freeze_at=b.freeze_at)
        backbone = BackboneWithFPN(body, FPN(list(body.out_channels), m.fpn_channels, p6_from=m.p6_from))
        a = m.anchors
        anchors = AnchorGenerator(
            sizes=a.sizes,
            strides=a.strides,
            scales=a.scales,
            ratios=a.ratios,
            offset=a.offset,
            round_sizes=a.round_sizes,
            strides_from_input=a.strides_from_input,
        )
        head = RetinaNetHead(
            m.fpn_channels, anchors.num_anchors, m.num_classes, num_convs=m.head_convs, prior=m.prior, norm=m.head_norm
        )
        box_coder = BoxCoder(weights=m.box_coder_weights)
        post = PostProcessor(
            box_coder,
            score_thresh=m.score_thresh,
            topk_candidates=m.topk_candidates,
            nms_thresh=m.nms_thresh,
            detections_per_image=m.detections_per_image,
        )
        model = cls(
            backbone,
            head,
            anchors,
            Matcher(m.fg_iou_threshold, m.bg_iou_threshold, m.allow_low_quality_matches),
            box_coder,
            post,
            pixel_mean=m.pixel_mean,
            pixel_std=m.pixel_std,
            size_divisibility=cfg.data.size_divisibility,
            cls_loss=m.cls_loss,
            focal_alpha=m.focal_alpha,
            focal_gamma=m.focal_gamma,
            box_loss=m.box_loss,
            smooth_l1_beta=m.smooth_l1_beta,
            box_loss_weight=m.box_loss_weight,
            channels_last=m.channels_last,
            ohem_batch=m.ohem_batch,
            ohem_nms=m.ohem_nms,
            ohem_pos_fraction=m.ohem_pos_fraction,
        )
        set_winograd(model, m.winograd)
        return model

    def fuse_for_inference(self, inplace: bool = False, winograd: Optional[bool] = None) -> "RetinaNet":
        """An inference-only copy (or, with ``inplace``, this model) with every FrozenBatchNorm2d folded
        into its conv (:mod:`retinanet.modeling.fuse`); same detections up to float rounding. It is in
        eval mode and refuses ``train()``; keep the unfused model for checkpoints, training and export.
        ``winograd``: None follows the model's convs (``model.winograd``); True / False forces Winograd
        F(4x4, 3x3) on / off for the large 3x3 convs (:mod:`retinanet.modeling.conv`)."""
        from retinanet.modeling.fuse import fuse_for_inference

        model = fuse_for_inference(self, inplace=inplace, winograd=winograd)
        model.fused = True
        return model

    def train(self, mode: bool = True) -> "RetinaNet":
        if mode and getattr(self, "fused", False):
            raise RuntimeError(
                "this RetinaNet was fused for inference (fuse_for_inference) and cannot be "
                "trained; train the unfused model"
            )
        return super().train(mode)

    # ------------------------------------------------------------------------------------------
    def preprocess(self, images: Images) -> tuple[Tensor, list[tuple[int, int]]]:
        """Normalize and zero-pad ``images`` -> ``([B, 3, Hp, Wp] float32, [(h, w) per image])``."""
        if isinstance(images, Tensor) and images.dim() == 4:
            batch, sizes = images, None
            hw = [(int(images.shape[-2]), int(images.shape[-1]))] * int(images.shape[0])
        else:
            if isinstance(images, Tensor):
                raise ValueError(
                    "images must be a [B, 3, H, W] tensor or a list of [3, H, W] tensors, "
                    f"got shape {tuple(images.shape)}"
                )
            batch, sizes = batch_images(images)
            hw = [(int(h), int(w)) for h, w in sizes.tolist()]
            if all(s == hw[0] for s in hw):
                sizes = None
        x = normalize_and_pad(batch, sizes, self.pixel_mean, self.pixel_std, self.size_divisibility)
        return x, hw

    def forward(
        self,
        images: Images,
        targets: Optional[list[dict[str, Tensor]]] = None,
        output_sizes: Optional[Sequence[tuple[int, int]]] = None,
    ):
        x, sizes = self.preprocess(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.backbone(x)
        cls_logits, box_deltas = self.head(features)
        anchors = self.anchors_for(features, (int(x.shape[-2]), int(x.shape[-1])))
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet in training mode needs targets (or call model.eval())")
            if len(targets) != len(sizes):
                raise ValueError(f"got {len(targets)} targets for {len(sizes)} images")
            return self.losses(cls_logits, box_deltas, anchors, targets)
        level_sizes = [f.shape[-2] * f.shape[-1] * self.anchor_generator.num_anchors for f in features]
        image_sizes = torch.tensor(sizes, dtype=torch.int64, device=cls_logits.device)
        with torch.no_grad():
            detections = self.postprocessor(cls_logits, box_deltas, anchors, level_sizes, image_sizes)
        if output_sizes is not None:
            detections = rescale_detections(detections, sizes, output_sizes)
        return detections

    def anchors_for(self, features: list[Tensor], input_size: Optional[tuple[int, int]] = None) -> Tensor:
        """All anchors ``[N, 4]`` (float32) for the P3..P7 feature maps, levels concatenated;
        ``input_size``, the padded input ``(Hp, Wp)``, is needed with ``anchors.strides_from_input``."""
        sizes = [(int(f.shape[-2]), int(f.shape[-1])) for f in features]
        return self.anchor_generator.flat(sizes, device=features[0].device, input_size=input_size)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def match(self, anchors: Tensor, targets: list[dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        """Assign anchors to ground truth: ``cls_targets [B, N]`` (class index, -1 background, -2
        ignored) and ``matched_boxes [F, 4]``, the ground-truth box of every foreground anchor in the
        row-major order of ``cls_targets >= 0``."""
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

    def losses(
        self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Summed classification and box losses and the foreground count (see the module docstring)."""
        cls_targets, matched_boxes = self.match(anchors, targets)
        fg = cls_targets >= 0
        if self.cls_loss == "ohem":
            loss_cls = self._ohem_loss(cls_logits, box_deltas, anchors, cls_targets, fg)
        else:
            gamma = self.focal_gamma if self.cls_loss == "focal" else 0.0
            loss_cls = sigmoid_focal_loss(cls_logits, cls_targets, alpha=self.focal_alpha, gamma=gamma, reduction="sum")
        b_idx, a_idx = fg.nonzero(as_tuple=True)
        pred = box_deltas[b_idx, a_idx].float()
        fg_anchors = anchors[a_idx]
        if self.box_loss == "giou":
            loss_box = giou_loss(self.box_coder.decode(pred, fg_anchors), matched_boxes, reduction="sum")
        else:
            target_deltas = self.box_coder.encode(matched_boxes, fg_anchors)
            if self.box_loss == "smooth_l1":
                loss_box = smooth_l1_loss(pred, target_deltas, beta=self.smooth_l1_beta, reduction="sum")
            else:
                loss_box = l1_loss(pred, target_deltas, reduction="sum")
        return {"loss_cls": loss_cls, "loss_box": self.box_loss_weight * loss_box, "num_fg": fg.sum().to(torch.float32)}

    def _ohem_loss(
        self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, cls_targets: Tensor, fg: Tensor
    ) -> Tensor:
        """OHEM cross-entropy (:mod:`retinanet.losses.ohem`), returned as ``mean * num_fg`` so that the
        trainer's division by the foreground count gives the mean over the selected anchors (exact with
        ``model.loss_normalizer=batch`` on one process)."""
        with torch.no_grad():
            boxes = self.box_coder.decode(box_deltas.detach().float(), anchors)
        loss, num_selected = ohem_cross_entropy(
            cls_logits, cls_targets, boxes, self.ohem_batch, self.ohem_nms, self.ohem_pos_fraction
        )
        return loss * (fg.sum().clamp(min=1).to(torch.float32) / num_selected.clamp(min=1.0))
