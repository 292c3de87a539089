"""The configuration schema: plain dataclasses for one run, with the paper's defaults.

A run is described by one :class:`Config` with four sections:

- ``model``  (:class:`ModelConfig`): backbone, FPN, head, anchors, matcher, losses, post-processing.
- ``data``   (:class:`DataConfig`): dataset format and paths, input sizes, augmentation, loader.
- ``solver`` (:class:`SolverConfig`): SGD recipe, schedule, AMP, gradient clipping.
- ``train``  (:class:`TrainConfig`): output folder, checkpoints, logging, evaluation period, seed.

Defaults are the paper's (RetinaNet R50-FPN, 1x schedule, 800 px). Reading, overriding and
validating them is :mod:`retinanet.config.loader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

#: what the detector's output index means (``ModelConfig.label_space``)
LABEL_SPACES = ("dataset", "coco_category_ids")
#: the metrics a COCO evaluation returns (``train.best_metric`` may also be ``AP/<class name>``)
EVAL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

__all__ = [
    "LABEL_SPACES",
    "EVAL_METRICS",
    "BackboneConfig",
    "AnchorConfig",
    "ModelConfig",
    "DataConfig",
    "SolverConfig",
    "TrainConfig",
    "TestConfig",
    "Config",
]


@dataclass
class BackboneConfig:
    """Feature extractor producing C3, C4, C5 (strides 8, 16, 32)."""

    name: str = "resnet50"  # resnet18/34/50/101/152, resnext101_32x8d, mobilenet_v2
    norm: str = "frozen_bn"  # frozen_bn | bn
    freeze_at: int = 2  # 0 none, 1 stem, 2 stem + first stage, ... 5 all
    weights: Optional[str] = None  # path to a torchvision-format file, or "imagenet" (local only)


@dataclass
class AnchorConfig:
    """Anchors on P3..P7: one size per level, times scales and aspect ratios (h / w)."""

    sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    offset: float = 0.0  # anchor centre at offset * stride inside the cell (0 = cell corner)
    round_sizes: bool = False  # torchvision: scaled sizes truncated to ints (32, 40, 50), corners rounded
    strides_from_input: bool = False  # torchvision: a level's stride = padded input size // feature size


@dataclass
class ModelConfig:
    """The detector: input statistics, architecture, training targets and losses, and inference
    post-processing."""

    num_classes: int = 80
    # what output i means: "dataset" (the i-th class of the training data; names and category ids are
    # stored in the checkpoint) | "coco_category_ids" (COCO category id i, torchvision's 91 outputs)
    label_space: str = "dataset"
    weights: Optional[str] = None  # a whole trained detector to start from (ours or torchvision's)
    # RGB 0-1 input statistics the backbone was trained with; the model normalizes with them
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn_channels: int = 256
    p6_from: str = "C5"  # C5 (paper) | P5 (torchvision v1)
    head_convs: int = 4
    head_norm: Optional[str] = None  # None | GN
    prior: float = 0.01
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    # assignment
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.4
    allow_low_quality_matches: bool = True
    # losses
    cls_loss: str = "focal"  # focal | ce (alpha-balanced when focal_alpha >= 0) | ohem (Table 1d baseline)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    # cls_loss=ohem: anchors kept per image, NMS IoU over their predicted boxes (None: no NMS), largest
    # foreground share of the kept anchors (0.25 = the paper's "1:3"; None: no ratio)
    ohem_batch: int = 128
    ohem_nms: Optional[float] = 0.5
    ohem_pos_fraction: Optional[float] = None
    box_loss: str = "smooth_l1"  # smooth_l1 | l1 | giou
    smooth_l1_beta: float = 0.1
    box_loss_weight: float = 1.0
    box_coder_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    loss_normalizer: str = "batch"  # batch | ema
    normalizer_momentum: float = 0.9
    # inference
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    # runtime
    channels_last: bool = True  # NHWC memory layout for the convolutions (same results, ~20% faster on CPU)
    winograd: bool = True  # 3x3 convs of >= 256 channels as Winograd F(4x4, 3x3) on the CPU (float32), train + test


@dataclass
class DataConfig:
    """Where the data is and how images are sized, augmented and batched."""

    format: str = "coco"  # coco | voc
    train_images: Optional[str] = None  # COCO: image folder
    train_annotations: Optional[str] = None  # COCO: json file
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    voc_root: Optional[str] = None  # VOC: folder with Annotations/, JPEGImages/, ImageSets/Main/
    train_split: str = "train"
    val_split: str = "val"
    class_names: Optional[list[str]] = None  # VOC class list (default: the 20 VOC classes)
    min_size: tuple[int, ...] = (800,)  # shorter side; several values = multi-scale training
    max_size: int = 1333
    test_min_size: int = 800
    resize: str = "pillow"  # pillow (uint8, antialiased) | tensor (float 0-1, interpolate bilinear, torchvision)
    resize_rounding: str = "round"  # round each side | floor (one scale factor, torchvision)
    test_batch_size: int = 2  # images per process during evaluation and prediction
    flip_prob: float = 0.5
    size_divisibility: int = 128
    num_workers: int = 2
    skip_bad_images: bool = False
    # training augmentations, in order, on the file's image before the resize: [{name: OP, p: 0.5, ...}, ...]
    # (ops and parameters: retinanet.config.augment.AUGMENT_OPS; empty: resize and flip only)
    augment: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SolverConfig:
    """The paper's recipe: SGD, lr 0.01 for 16 images (scaled linearly), steps at 2/3 and 8/9."""

    batch_size: int = 16  # global, over all processes
    optimizer: str = "sgd"  # sgd (the paper's) | adamw (momentum = beta1; faster on short CPU schedules)
    base_lr: float = 0.01
    reference_batch_size: int = 16  # lr = base_lr * batch_size / reference_batch_size
    backbone_lr_factor: float = 1.0  # the backbone's trainable stages train at lr * this (FPN, head at lr)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    max_iter: int = 90000
    epochs: Optional[float] = None  # if set, max_iter = ceil(epochs * len(dataset) / batch_size)
    warmup_iters: int = 1000
    # warmup = min(warmup_iters, round(warmup_fraction * max_iter)): a short run is not mostly warmup
    warmup_fraction: float = 0.1
    warmup_factor: float = 0.001
    schedule: str = "step"  # step (the paper's: times gamma at each of `steps`) | cosine (to 0 at max_iter)
    steps: tuple[float, ...] = (2 / 3, 8 / 9)  # fractions of max_iter (step schedule)
    gamma: float = 0.1
    clip_grad_norm: Optional[float] = None
    amp: str = "off"  # off | bf16 | fp16 (fp16 on CUDA only)
    skip_nonfinite: bool = False  # skip steps with NaN/inf loss instead of stopping
    # weight EMA (evaluation, prediction, export use it): decay * (1 - exp(-updates / ema_tau))
    ema: bool = False
    ema_decay: float = 0.9998
    ema_tau: float = 2000.0  # warmup of the decay in optimizer steps; 0 = the full decay from the start

    def lr(self) -> float:
        """The learning rate after linear scaling by the global batch size."""
        return self.base_lr * self.batch_size / self.reference_batch_size


@dataclass
class TrainConfig:
    """Run bookkeeping: outputs, checkpoints, logging, evaluation, seed, device."""

    output_dir: str = "runs/retinanet"
    checkpoint_period: int = 5000
    keep_checkpoints: int = 3
    eval_period: int = 0  # 0 = evaluate only at the end
    log_period: int = 20
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int = 0  # torch intra-op threads; 0 = torch default
    tensorboard: bool = True  # also log metrics as TensorBoard events (rank 0; only if tensorboard is installed)
    # wall-clock budget of training ("15m", "90s", "1h" or seconds; null = off): the number of steps (at
    # most solver.max_iter / solver.epochs) and the schedule are fitted to the measured step time
    time_budget: Optional[Union[str, float]] = None
    best_metric: str = "AP"  # model_best.pth keeps the evaluation with the highest value of this metric


@dataclass
class TestConfig:
    """Test-time augmentation and precision at evaluation and prediction (off by default)."""

    tta: tuple[Union[str, int], ...] = ()  # "hflip" and/or extra shorter-side sizes, e.g. [hflip, 640, 1024]
    tta_merge: str = "nms"  # nms | wbf (weighted box fusion)
    tta_iou: float = 0.55  # IoU above which views' boxes of one class are merged
    amp: str = "off"  # off | bf16: the network in bfloat16 at evaluation and prediction (AMX CPUs, CUDA)


@dataclass
class Config:
    """A whole run: model, data, solver, train and test sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
