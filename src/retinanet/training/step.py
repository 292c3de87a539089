"""One optimizer step of the training loop: forward, loss normalization, backward, clipping, update.

``optimizer_step(parts, batch, amp_dtype) -> (values, bad)``: the model (DDP-wrapped or not) computes
the summed losses of the batch (:class:`~retinanet.data.collate.Batch`: a list of ``[3, h, w]`` images
and targets with ``boxes [n, 4]``, ``labels [n]``); they are divided by the loss normalizer (the
foreground count of the global batch, or its EMA), backpropagated (scaled under fp16 AMP), clipped to
``solver.clip_grad_norm`` and applied. ``values`` are the logged numbers, averaged over processes:
``loss``, ``loss_cls``, ``loss_box``, ``num_fg`` (of the whole global batch) and ``grad_norm``.
``bad`` is ``None``, or ``"loss"`` / ``"gradient"`` when that was not finite: then no update was made
and the gradients are cleared.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from retinanet.training.normalizer import LossNormalizer
from retinanet.utils import distributed

__all__ = ["StepParts", "optimizer_step"]


@dataclass
class StepParts:
    """What a step needs: the model, its DDP wrapper (or the model), optimizer, optional fp16 scaler,
    loss normalizer, device, number of processes and the gradient-norm limit (None: no clipping)."""

    model: nn.Module
    ddp_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Optional[Any]
    normalizer: LossNormalizer
    device: torch.device
    world: int
    clip_grad_norm: Optional[float]


def optimizer_step(
    p: StepParts, batch: Any, amp_dtype: Optional[torch.dtype]
) -> tuple[dict[str, float], Optional[str]]:
    """One step on ``batch``; see the module docstring."""
    images = [im.to(p.device, non_blocking=True) for im in batch.images]
    targets = [{"boxes": t["boxes"].to(p.device), "labels": t["labels"].to(p.device)} for t in batch.targets]
    ctx = torch.autocast(p.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with ctx:
        out = p.ddp_model(images, targets)
        normalizer = p.normalizer(out["num_fg"])
        loss_cls, loss_box = out["loss_cls"] / normalizer, out["loss_box"] / normalizer
    loss = loss_cls.float() + loss_box.float()
    stats = torch.stack([loss.detach(), loss_cls.detach().float(), loss_box.detach().float(), out["num_fg"].float()])
    stats = distributed.all_reduce_mean(stats)
    values = dict(zip(("loss", "loss_cls", "loss_box", "num_fg"), stats.tolist()))
    values["num_fg"] *= p.world  # foreground anchors of the whole global batch
    if not math.isfinite(values["loss"]):
        p.optimizer.zero_grad(set_to_none=True)
        return values, "loss"
    p.optimizer.zero_grad(set_to_none=True)
    if p.scaler is not None:
        p.scaler.scale(loss).backward()
        p.scaler.unscale_(p.optimizer)
    else:
        loss.backward()
    params = [q for q in p.model.parameters() if q.grad is not None]
    max_norm = p.clip_grad_norm or float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
    if not torch.isfinite(grad_norm) and p.scaler is None:
        p.optimizer.zero_grad(set_to_none=True)
        return values, "gradient"
    if p.scaler is not None:
        p.scaler.step(p.optimizer)
        p.scaler.update()
    else:
        p.optimizer.step()
    values["grad_norm"] = float(grad_norm)
    return values, None
