"""Validation of a :class:`~retinanet.config.schema.Config`: every impossible value is a
:class:`ConfigError` naming its dotted key (``model.anchors.offset: must be in [0, 1) (got 1.5)``)."""

from __future__ import annotations

import math
from typing import Any, Optional

from retinanet.config.augment import parse_augment_list
from retinanet.config.schema import EVAL_METRICS, LABEL_SPACES, Config

__all__ = ["ConfigError", "validate", "parse_duration"]


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the file and the key.

    ``.key`` is the dotted key at fault (``None`` when the problem is not one key, e.g. bad YAML).
    """

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.key = key


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> float:
    """Seconds of a duration: a number of seconds, or a string ``"90s"``, ``"15m"``, ``"1.5h"``, ``"600"``;
    ``ValueError`` for anything else, zero or negative."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        scale = _DURATION_UNITS.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if scale else text) * (scale or 1.0)
        except ValueError:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 1h or seconds)") from None
    elif isinstance(value, (int, float)):
        seconds = float(value)
    else:
        raise ValueError(f"not a duration: {value!r}")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a duration must be > 0: {value!r}")
    return seconds


def _check(cond: bool, key: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg} (got {value!r})", key)


def validate(cfg: Config) -> None:
    """Reject impossible values with a message naming the key."""
    m, d, s, t = cfg.model, cfg.data, cfg.solver, cfg.train
    _check(
        all(v == "hflip" or (isinstance(v, int) and v > 0) for v in cfg.test.tta),
        "test.tta",
        "items must be hflip or shorter-side sizes > 0",
        cfg.test.tta,
    )
    _check(cfg.test.tta_merge in ("nms", "wbf"), "test.tta_merge", "must be nms or wbf", cfg.test.tta_merge)
    _check(0 < cfg.test.tta_iou <= 1, "test.tta_iou", "must be in (0, 1]", cfg.test.tta_iou)
    _check(cfg.test.amp in ("off", "bf16"), "test.amp", "must be off or bf16", cfg.test.amp)
    _check(m.num_classes >= 1, "model.num_classes", "must be >= 1", m.num_classes)
    _check(
        len(m.pixel_mean) == 3 and all(math.isfinite(v) for v in m.pixel_mean),
        "model.pixel_mean",
        "must be 3 finite numbers (R, G, B)",
        m.pixel_mean,
    )
    _check(
        len(m.pixel_std) == 3 and all(math.isfinite(v) and v > 0 for v in m.pixel_std),
        "model.pixel_std",
        "must be 3 finite numbers > 0 (R, G, B)",
        m.pixel_std,
    )
    _check(m.p6_from in ("C5", "P5"), "model.p6_from", "must be C5 or P5", m.p6_from)
    _check(m.head_norm in (None, "GN"), "model.head_norm", "must be null or GN", m.head_norm)
    _check(m.backbone.norm in ("frozen_bn", "bn"), "model.backbone.norm", "must be frozen_bn or bn", m.backbone.norm)
    _check(0 <= m.backbone.freeze_at <= 5, "model.backbone.freeze_at", "must be in 0..5", m.backbone.freeze_at)
    _check(0 < m.prior < 1, "model.prior", "must be in (0, 1)", m.prior)
    _check(m.fpn_channels > 0, "model.fpn_channels", "must be > 0", m.fpn_channels)
    if m.head_norm == "GN":
        _check(m.fpn_channels % 32 == 0, "model.fpn_channels", "must be a multiple of 32 with GN", m.fpn_channels)
    _check(m.head_convs >= 0, "model.head_convs", "must be >= 0", m.head_convs)
    a = m.anchors
    _check(
        len(a.sizes) == 5 and len(a.strides) == 5,
        "model.anchors.sizes",
        "need one size and one stride per level P3..P7 (5 each)",
        (a.sizes, a.strides),
    )
    _check(
        all(x > 0 for x in a.sizes + a.scales + a.ratios),
        "model.anchors",
        "sizes, scales, ratios must be > 0",
        (a.sizes, a.scales, a.ratios),
    )
    _check(
        tuple(a.strides) == (8, 16, 32, 64, 128),
        "model.anchors.strides",
        "must be (8, 16, 32, 64, 128), the strides of P3..P7",
        a.strides,
    )
    _check(0 <= a.offset < 1, "model.anchors.offset", "must be in [0, 1)", a.offset)
    _check(m.label_space in LABEL_SPACES, "model.label_space", f"must be one of {LABEL_SPACES}", m.label_space)
    if m.label_space == "coco_category_ids":
        _check(m.num_classes == 91, "model.num_classes", "must be 91 with label_space coco_category_ids", m.num_classes)
    _check(
        0 <= m.bg_iou_threshold <= m.fg_iou_threshold <= 1,
        "model.bg_iou_threshold",
        "need 0 <= bg_iou_threshold <= fg_iou_threshold <= 1",
        (m.bg_iou_threshold, m.fg_iou_threshold),
    )
    _check(m.cls_loss in ("focal", "ce", "ohem"), "model.cls_loss", "must be focal, ce or ohem", m.cls_loss)
    _check(m.ohem_batch >= 1, "model.ohem_batch", "must be >= 1", m.ohem_batch)
    _check(m.ohem_nms is None or 0 < m.ohem_nms <= 1, "model.ohem_nms", "must be in (0, 1] or null", m.ohem_nms)
    _check(
        m.ohem_pos_fraction is None or 1 <= m.ohem_pos_fraction * m.ohem_batch and m.ohem_pos_fraction < 1,
        "model.ohem_pos_fraction",
        "must be null or in [1 / model.ohem_batch, 1)",
        m.ohem_pos_fraction,
    )
    if m.cls_loss == "ohem":
        _check(
            m.loss_normalizer == "batch",
            "model.loss_normalizer",
            "must be batch with cls_loss=ohem (its loss is the mean over the selected anchors)",
            m.loss_normalizer,
        )
    _check(m.focal_gamma >= 0, "model.focal_gamma", "must be >= 0", m.focal_gamma)
    _check(m.focal_alpha < 1, "model.focal_alpha", "must be < 1 (negative disables alpha)", m.focal_alpha)
    _check(m.box_loss in ("smooth_l1", "l1", "giou"), "model.box_loss", "must be smooth_l1, l1 or giou", m.box_loss)
    _check(m.smooth_l1_beta >= 0, "model.smooth_l1_beta", "must be >= 0", m.smooth_l1_beta)
    _check(m.loss_normalizer in ("batch", "ema"), "model.loss_normalizer", "must be batch or ema", m.loss_normalizer)
    _check(0 <= m.normalizer_momentum < 1, "model.normalizer_momentum", "must be in [0, 1)", m.normalizer_momentum)
    _check(0 <= m.score_thresh <= 1, "model.score_thresh", "must be in [0, 1]", m.score_thresh)
    _check(0 < m.nms_thresh <= 1, "model.nms_thresh", "must be in (0, 1]", m.nms_thresh)
    _check(m.topk_candidates >= 1, "model.topk_candidates", "must be >= 1", m.topk_candidates)
    _check(m.detections_per_image >= 1, "model.detections_per_image", "must be >= 1", m.detections_per_image)

    _check(d.format in ("coco", "voc"), "data.format", "must be coco or voc", d.format)
    _check(
        len(d.min_size) >= 1 and all(x > 0 for x in d.min_size), "data.min_size", "must be positive sizes", d.min_size
    )
    _check(d.max_size >= max(d.min_size), "data.max_size", "must be >= every data.min_size", d.max_size)
    _check(d.test_min_size > 0, "data.test_min_size", "must be > 0", d.test_min_size)
    _check(d.resize in ("pillow", "tensor"), "data.resize", "must be pillow or tensor", d.resize)
    _check(d.resize_rounding in ("round", "floor"), "data.resize_rounding", "must be round or floor", d.resize_rounding)
    _check(d.test_batch_size >= 1, "data.test_batch_size", "must be >= 1", d.test_batch_size)
    _check(0 <= d.flip_prob <= 1, "data.flip_prob", "must be in [0, 1]", d.flip_prob)
    _check(
        d.size_divisibility > 0 and d.size_divisibility % 32 == 0,
        "data.size_divisibility",
        "must be a positive multiple of 32 (the stride of C5)",
        d.size_divisibility,
    )
    _check(d.num_workers >= 0, "data.num_workers", "must be >= 0", d.num_workers)
    parse_augment_list(d.augment, "data.augment")

    _check(s.batch_size >= 1, "solver.batch_size", "must be >= 1", s.batch_size)
    _check(s.base_lr > 0 and math.isfinite(s.base_lr), "solver.base_lr", "must be a positive number", s.base_lr)
    _check(s.reference_batch_size >= 1, "solver.reference_batch_size", "must be >= 1", s.reference_batch_size)
    _check(s.optimizer in ("sgd", "adamw"), "solver.optimizer", "must be sgd or adamw", s.optimizer)
    _check(
        0 < s.backbone_lr_factor <= 10 and math.isfinite(s.backbone_lr_factor),
        "solver.backbone_lr_factor",
        "must be in (0, 10]",
        s.backbone_lr_factor,
    )
    _check(0 <= s.momentum < 1, "solver.momentum", "must be in [0, 1)", s.momentum)
    _check(s.weight_decay >= 0, "solver.weight_decay", "must be >= 0", s.weight_decay)
    _check(s.max_iter >= 1, "solver.max_iter", "must be >= 1", s.max_iter)
    _check(s.epochs is None or s.epochs > 0, "solver.epochs", "must be > 0", s.epochs)
    _check(s.warmup_iters >= 0, "solver.warmup_iters", "must be >= 0", s.warmup_iters)
    _check(0 < s.warmup_factor <= 1, "solver.warmup_factor", "must be in (0, 1]", s.warmup_factor)
    _check(0 <= s.warmup_fraction <= 1, "solver.warmup_fraction", "must be in [0, 1]", s.warmup_fraction)
    _check(0 < s.ema_decay < 1, "solver.ema_decay", "must be in (0, 1)", s.ema_decay)
    _check(s.ema_tau >= 0 and math.isfinite(s.ema_tau), "solver.ema_tau", "must be >= 0", s.ema_tau)
    _check(
        all(0 < x <= 1 for x in s.steps) and list(s.steps) == sorted(s.steps),
        "solver.steps",
        "must be increasing fractions of max_iter in (0, 1]",
        s.steps,
    )
    _check(s.schedule in ("step", "cosine"), "solver.schedule", "must be step or cosine", s.schedule)
    _check(0 < s.gamma <= 1, "solver.gamma", "must be in (0, 1]", s.gamma)
    _check(
        s.clip_grad_norm is None or s.clip_grad_norm > 0,
        "solver.clip_grad_norm",
        "must be > 0 or null",
        s.clip_grad_norm,
    )
    _check(s.amp in ("off", "bf16", "fp16"), "solver.amp", "must be off, bf16 or fp16", s.amp)

    _check(t.checkpoint_period >= 1, "train.checkpoint_period", "must be >= 1", t.checkpoint_period)
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1", t.keep_checkpoints)
    _check(t.eval_period >= 0, "train.eval_period", "must be >= 0", t.eval_period)
    _check(t.log_period >= 1, "train.log_period", "must be >= 1", t.log_period)
    if t.time_budget is not None:
        try:
            parse_duration(t.time_budget)
        except ValueError:
            msg = "must be a duration > 0 like 90s, 15m, 1h or seconds, or null"
            _check(False, "train.time_budget", msg, t.time_budget)
    _check(
        t.best_metric in EVAL_METRICS or (t.best_metric.startswith("AP/") and len(t.best_metric) > 3),
        "train.best_metric",
        f"must be one of {', '.join(EVAL_METRICS)} or AP/<class name>",
        t.best_metric,
    )
    _check(t.num_threads >= 0, "train.num_threads", "must be >= 0", t.num_threads)
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        "train.device",
        "must be auto, cpu, cuda or cuda:N",
        t.device,
    )
