"""The training loop: the paper's SGD recipe, checkpoints and exact resume, AMP, DDP, logging.

``Trainer(cfg).train()`` runs ``solver.max_iter`` iterations (or ``solver.epochs`` epochs) of

    images, targets -> model (losses) -> backward -> [clip] -> SGD step

with the learning rate a pure function of the iteration (linear warmup from ``warmup_factor``, then
times ``gamma`` at each fraction in ``solver.steps``), so a resumed run needs only the iteration to
continue its schedule. Data order and augmentation are functions of (seed, epoch, index)
(``retinanet.data.sampler``); together with the saved model, optimizer, normalizer and RNG states, a
run stopped at iteration N and resumed reproduces the uninterrupted run bit for bit on CPU.

Rank 0 alone writes ``metrics.jsonl``, ``config.yaml``, checkpoints (atomically: temporary file, then
rename), and the loss/lr plot. A non-finite loss stops training at once with the iteration, the loss
values and a hint (the last checkpoint stays intact), or skips the step when ``solver.skip_nonfinite``.
Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint and stops cleanly.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..config import Config, config_to_dict, save_config
from ..data.build import build_dataset, build_eval_loader
from ..data.collate import collate
from ..data.sampler import SeededDataset, TrainBatchSampler
from ..modeling.retinanet import RetinaNet
from . import distributed as du
from .checkpoint import (get_rng_state, latest_checkpoint, load_checkpoint, load_model_state,
                         save_checkpoint, set_rng_state)
from .inference import evaluate

__all__ = ["Trainer", "TrainingDiverged", "lr_at", "resolve_device"]

log = logging.getLogger("retinanet.train")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


def lr_at(iteration: int, base_lr: float, max_iter: int, warmup_iters: int, warmup_factor: float,
          steps: tuple[float, ...], gamma: float) -> float:
    """Learning rate at ``iteration``: linear warmup, then step decay at fractions of ``max_iter``."""
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    milestones = [round(s * max_iter) for s in steps]
    n = sum(1 for m in milestones if iteration >= m)
    return base_lr * factor * gamma ** n


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            return torch.device("cuda", local)
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available on this machine")
    return dev


@dataclass
class _Stop:
    requested: bool = False
    signum: int = 0


@dataclass
class TrainResult:
    iteration: int
    output_dir: Path
    final_checkpoint: Optional[Path]
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


class Trainer:
    """Trains a RetinaNet on the dataset of ``cfg.data``; see the module docstring."""

    def __init__(self, cfg: Config, resume: bool = False, progress: bool = True,
                 hooks: Optional[list[Callable[["Trainer"], None]]] = None) -> None:
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.hooks = hooks or []
        self.device = resolve_device(cfg.train.device)
        self.distributed = du.init_distributed(self.device)
        self.rank, self.world = du.rank(), du.world_size()
        self.out = Path(cfg.train.output_dir)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        self.iteration = 0
        self.skipped_steps = 0
        self._stop = _Stop()

    # ------------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        self.train_set = build_dataset(cfg, train=True)
        if len(self.train_set) == 0:
            raise ValueError("the training dataset has no images")
        self.val_set = build_dataset(cfg, train=False) if self._has_val() else None
        self.model = RetinaNet(cfg.model).to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.solver.lr(), momentum=cfg.solver.momentum,
                                         weight_decay=cfg.solver.weight_decay)
        s = cfg.solver
        if s.epochs is not None:
            self.max_iter = max(1, math.ceil(s.epochs * len(self.train_set) / s.batch_size))
        else:
            self.max_iter = s.max_iter
        self.scaler = None
        if s.amp == "fp16":
            if self.device.type != "cuda":
                raise ValueError("solver.amp=fp16 needs CUDA; use solver.amp=bf16 on CPU")
            self.scaler = torch.amp.GradScaler("cuda")
        self.ddp_model: nn.Module = self.model
        if self.distributed:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _has_val(self) -> bool:
        d = self.cfg.data
        return bool(d.val_annotations) if d.format == "coco" else bool(d.voc_root and d.val_split)

    def _loader(self, start_iter: int):
        cfg = self.cfg
        sampler = TrainBatchSampler(len(self.train_set), cfg.solver.batch_size, seed=cfg.train.seed,
                                    start_iter=start_iter, max_iter=self.max_iter, rank=self.rank,
                                    world_size=self.world)
        self.batches_per_epoch = sampler.batches_per_epoch
        div = cfg.data.size_divisibility
        return torch.utils.data.DataLoader(
            SeededDataset(self.train_set, cfg.train.seed), batch_sampler=sampler,
            num_workers=cfg.data.num_workers, collate_fn=functools.partial(collate, size_divisibility=div),
            persistent_workers=False, pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if cfg.data.num_workers > 0 else None)

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "iteration": self.iteration,
            "fg_ema": float(self.model.fg_ema.item()),
            "rng": get_rng_state(),
            "config": config_to_dict(self.cfg),
            "class_names": list(getattr(self.train_set, "class_names", [])),
            "label_to_category_id": list(getattr(self.train_set, "label_to_category_id", [])),
            "skipped_steps": self.skipped_steps,
            "max_iter": self.max_iter,
        }

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        path = None
        if du.is_main():
            path = self.out / (name or f"model_{self.iteration:07d}.pth")
            save_checkpoint(path, self.state_dict(), keep_last=self.cfg.train.keep_checkpoints
                            if name is None else None)
            log.info("saved checkpoint %s", path)
        du.barrier()
        return path

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path)
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.model.fg_ema.fill_(float(state.get("fg_ema", 100.0)))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if state.get("rng"):
            set_rng_state(state["rng"])
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # ------------------------------------------------------------------------------------------
    def _install_signal_handlers(self):
        previous = {}

        def handler(signum, frame):
            if self._stop.requested:  # second Ctrl-C: give up at once
                raise KeyboardInterrupt
            self._stop.requested, self._stop.signum = True, signum
            log.warning("stop requested (signal %d): finishing this step and writing a checkpoint", signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    def train(self) -> TrainResult:
        cfg = self.cfg
        self._build()
        if du.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml")
        if self.resume:
            ckpt = latest_checkpoint(self.out)
            if ckpt is None:
                log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
            else:
                self._load(ckpt)
        start = self.iteration
        metrics_path = self.out / "metrics.jsonl"
        previous_handlers = self._install_signal_handlers()
        loader = self._loader(start)
        bar = None
        if self.progress and du.is_main():
            from tqdm import tqdm
            bar = tqdm(total=self.max_iter, initial=start, desc="train", unit="it", dynamic_ncols=True)
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.solver.amp)
        self.model.train()
        final_metrics: dict[str, float] = {}
        t_last, data_t0 = time.perf_counter(), time.perf_counter()
        try:
            for batch in loader:
                data_time = time.perf_counter() - data_t0
                lr = lr_at(self.iteration, cfg.solver.lr(), self.max_iter, cfg.solver.warmup_iters,
                           cfg.solver.warmup_factor, cfg.solver.steps, cfg.solver.gamma)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                losses = self._step(batch, amp_dtype)
                self.iteration += 1
                it = self.iteration
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if du.is_main() and (it % cfg.train.log_period == 0 or it == self.max_iter or it == start + 1):
                    now = time.perf_counter()
                    row = {"iter": it, **{k: round(v, 6) for k, v in losses.items()}, "lr": lr,
                           "data_time": round(data_time, 4), "time": round(now - t_last, 4),
                           "epoch": (it - 1) // self.batches_per_epoch}
                    t_last = now
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                for hook in self.hooks:
                    hook(self)
                if it % cfg.train.checkpoint_period == 0 and it < self.max_iter:
                    self.save()
                if self.val_set is not None and cfg.train.eval_period and it % cfg.train.eval_period == 0 \
                        and it < self.max_iter:
                    self._evaluate(metrics_path)
                if self._stop.requested:
                    break
                data_t0 = time.perf_counter()
        finally:
            if bar is not None:
                bar.close()
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)
        stopped = self.iteration < self.max_iter
        final = self.save()  # the latest state, always (also after Ctrl-C)
        if not stopped:
            final = self.save("model_final.pth")
            if self.val_set is not None:
                final_metrics = self._evaluate(metrics_path)
            if du.is_main():
                self._plot(metrics_path)
        return TrainResult(self.iteration, self.out, final, final_metrics, stopped_early=stopped)

    # ------------------------------------------------------------------------------------------
    def _step(self, batch, amp_dtype) -> dict[str, float]:
        images = batch.images.to(self.device, non_blocking=True)
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)}
                   for t in batch.targets]
        ctx = torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with ctx:
            out = self.ddp_model(images, targets)
        loss = out["loss_cls"].float() + out["loss_box"].float()
        stats = torch.stack([loss.detach(), out["loss_cls"].detach().float(), out["loss_box"].detach().float(),
                             out["num_fg"].float()])
        stats = du.all_reduce_mean(stats)
        values = dict(zip(("loss", "loss_cls", "loss_box", "num_fg"), stats.tolist()))
        if not math.isfinite(values["loss"]):
            return self._nonfinite(values, "loss")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.solver.clip_grad_norm or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        if not torch.isfinite(grad_norm) and self.scaler is None:
            return self._nonfinite(values, "gradient")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        values["grad_norm"] = float(grad_norm)
        return values

    def _nonfinite(self, values: dict[str, float], what: str) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        msg = (f"non-finite {what} at iteration {self.iteration + 1}: "
               + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
               + f". The last checkpoint in {self.out} is intact. Hints: lower solver.base_lr (now "
               f"{self.cfg.solver.base_lr}) or lengthen solver.warmup_iters (now {self.cfg.solver.warmup_iters}); "
               "set solver.clip_grad_norm; check the dataset for degenerate or huge boxes; or set "
               "solver.skip_nonfinite=true to skip such steps.")
        if self.cfg.solver.skip_nonfinite:
            self.skipped_steps += 1
            log.warning("skipping step: %s", msg)
            values["skipped"] = 1.0
            return values
        raise TrainingDiverged(msg)

    def _evaluate(self, metrics_path: Path) -> dict[str, float]:
        assert self.val_set is not None
        loader = build_eval_loader(self.val_set, self.cfg, rank=self.rank, world_size=self.world)
        results_path = self.out / f"detections_{self.iteration:07d}.json"
        metrics = evaluate(self.model, loader, self.val_set, self.device, results_path=results_path,
                           progress=self.progress)
        self.model.train()
        if du.is_main() and metrics:
            row = {"iter": self.iteration, **{f"bbox/{k}": v for k, v in metrics.items()}}
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            log.info("iteration %d: AP %.4f AP50 %.4f AP75 %.4f", self.iteration, metrics.get("AP", -1),
                     metrics.get("AP50", -1), metrics.get("AP75", -1))
        return metrics

    def _plot(self, metrics_path: Path) -> None:
        try:
            from ..viz import plot_training_curves
            plot_training_curves(metrics_path, self.out / "training_curves.png")
        except Exception as e:  # a plot must never cost a finished run
            log.warning("could not draw the training curves: %s", e)
