"""A tiny trained-for-two-steps RetinaNet checkpoint for the predict / export / bad-input tests.

``make_checkpoint(path)`` builds a ResNet-18 RetinaNet with a 32-channel FPN and one conv per subnet
(3 classes, 96 px test size), takes two SGD steps on a synthetic image with two boxes and saves it
with :func:`retinanet.training.checkpoint.save_checkpoint` in the layout ``Trainer.state_dict()`` writes
(model, optimizer, iteration, fg_ema, rng, config, class names, category ids, ...). Deterministic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from retinanet.config import config_to_dict, load_config
from retinanet.modeling.norm import FrozenBatchNorm2d
from retinanet.modeling.retinanet import RetinaNet
from retinanet.training.checkpoint import save_checkpoint
from retinanet.training.normalizer import LossNormalizer
from retinanet.training.rng import get_rng_state

CLASS_NAMES = ["circle", "square", "triangle"]
CATEGORY_IDS = [3, 7, 11]  # non-contiguous on purpose: results json must use these

TINY_OVERRIDES = [
    "model.num_classes=3",
    "model.backbone.name=resnet18",
    "model.backbone.freeze_at=0",
    "model.backbone.weights=null",
    "model.fpn_channels=32",
    "model.head_convs=1",
    "model.anchors.sizes=[16, 32, 64, 128, 256]",
    "model.score_thresh=0.0",  # an untrained model scores ~0.01 (the prior): keep every candidate
    "model.detections_per_image=20",
    "data.min_size=[96]",
    "data.test_min_size=96",
    "data.max_size=160",
    "solver.batch_size=1",
    "solver.max_iter=2",
    "train.device=cpu",
]


def tiny_config(extra: Sequence[str] = ()):
    return load_config(None, TINY_OVERRIDES + list(extra))


def make_checkpoint(path: Path, extra: Sequence[str] = (), with_config: bool = True, seed: int = 0) -> Path:
    cfg = tiny_config(extra)
    torch.manual_seed(seed)
    model = RetinaNet.from_config(cfg).train()
    normalizer = LossNormalizer(cfg.model.loss_normalizer, cfg.model.normalizer_momentum)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = torch.rand(1, 3, 128, 128)  # raw RGB 0-1: the model normalizes
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([0, 2])}
    ]
    for _ in range(2):
        losses = model(images, targets)
        loss = (losses["loss_cls"] + losses["loss_box"]) / normalizer(losses["num_fg"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": None,
        "iteration": 2,
        "fg_ema": normalizer.fg_ema,
        "rng": get_rng_state(),
        "class_names": list(CLASS_NAMES),
        "label_to_category_id": list(CATEGORY_IDS),
        "skipped_steps": 0,
        "max_iter": 2,
    }
    if with_config:
        state["config"] = config_to_dict(cfg)
    return save_checkpoint(path, state, update_last=False)


def write_image(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """A smooth RGB picture with a few bright shapes (PNG or JPEG by suffix)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 / max(w - 1, 1)), (yy * 255 / max(h - 1, 1)), np.full((h, w), 90.0)], -1)
    for _ in range(3):
        y0, x0 = rng.integers(0, max(h - 8, 1)), rng.integers(0, max(w - 8, 1))
        img[y0 : y0 + h // 4, x0 : x0 + w // 4] = rng.integers(0, 256, size=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)
    return path


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every (Frozen)BatchNorm random affine parameters and statistics, so that folding or
    loading them is actually checked (identity statistics would hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            c = m.running_mean.numel()
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
