"""The training loop: the paper's SGD recipe, checkpoints and exact resume, AMP, DDP, logging.

``Trainer(cfg).train()`` runs ``solver.max_iter`` iterations (or ``solver.epochs`` epochs) of

    images, targets -> model (losses) -> backward -> [clip] -> SGD step

with the learning rate a pure function of the iteration (linear warmup from ``warmup_factor``, then
times ``gamma`` at each fraction in ``solver.steps``), so a resumed run needs only the iteration to
continue its schedule. Data order and augmentation are functions of (seed, epoch, index)
(``retinanet.data.sampler``); together with the saved model, optimizer, normalizer and RNG states, a
run stopped at iteration N and resumed reproduces the uninterrupted run bit for bit on CPU.

Rank 0 alone writes ``metrics.jsonl``, ``config.yaml``, checkpoints (atomically: temporary file, then
rename), the loss/lr plot and, when ``train.tensorboard`` is on and ``torch.utils.tensorboard`` imports,
the same scalars as TensorBoard events under ``<output_dir>/tensorboard`` (silently skipped when
TensorBoard, the ``tensorboard`` extra, is not installed). The output folder is checked for writability first, so
an unwritable one fails at once (:class:`~retinanet.training.output.OutputDirError`) without touching
files already there.

Faults:

- a non-finite loss or gradient stops training at once with :class:`TrainingDiverged` naming the
  iteration, the loss values, the last checkpoint (intact: nothing is written after the bad step) and
  hints; with ``solver.skip_nonfinite`` the step is skipped instead and counted (``skipped_steps`` in
  the metrics rows, the checkpoints and :class:`TrainResult`);
- Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint of it and stops cleanly
  (``TrainResult.signal`` tells which signal; a second Ctrl-C aborts at once). DataLoader workers
  ignore SIGINT, so a Ctrl-C sent to the whole process group does not kill them mid-batch. Under DDP
  the stop request is agreed on by all ranks each iteration, so they stop at the same step;
- a failed checkpoint write (disk full, permissions) raises the :class:`CheckpointError` of
  :func:`save_checkpoint` (the previous checkpoint untouched) on rank 0, and a :class:`RankFailed` on
  the other ranks instead of leaving them blocked;
- ``--resume`` after a kill: the newest complete checkpoint is loaded (writes are atomic, so a kill
  mid-write leaves only a stale temporary file, which is removed), ``metrics.jsonl`` rows of the
  iterations after that checkpoint are dropped (they are redone), and training continues bit for bit.

``hooks`` are called with the trainer after every iteration (after logging, before the periodic
checkpoint); a hook may call :meth:`Trainer.request_stop` to end the run after this iteration with a
checkpoint, exactly as Ctrl-C does, or lower ``trainer.max_iter`` (never above the configured number;
identically on every rank): the run then ends normally, final checkpoint and evaluation included, at
the new number, and the learning-rate schedule follows it (``retinanet demo``'s time budget does this).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from retinanet.config import Config, config_to_dict
from retinanet.data.build import build_dataset, build_eval_loader
from retinanet.data.sampler import TrainBatchSampler
from retinanet.inference.loop import evaluate
from retinanet.modeling.build import build_model
from retinanet.modeling.state_dict import load_model_state
from retinanet.training.checkpoint import latest_checkpoint, remove_stale_temporaries, save_checkpoint
from retinanet.training.divergence import TrainingDiverged, divergence_message
from retinanet.training.loader import build_train_loader
from retinanet.training.metrics import MetricsLog
from retinanet.training.normalizer import LossNormalizer
from retinanet.training.optimizer import build_optimizer
from retinanet.training.output import prepare_output_dir
from retinanet.training.rng import get_rng_state, set_rng_state
from retinanet.training.schedule import lr_at
from retinanet.training.signals import StopRequest, install_stop_handlers, restore_handlers
from retinanet.utils import distributed
from retinanet.utils.device import resolve_device
from retinanet.utils.serialization import load_file

__all__ = ["Trainer", "TrainResult"]

log = logging.getLogger("retinanet.train")


def _finite_or_none(v: float) -> Optional[float]:
    return round(v, 6) if math.isfinite(v) else None  # JSON has no NaN / Infinity


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did: the last iteration, the checkpoint written last, the final
    evaluation (empty if none or not rank 0), whether it stopped before ``max_iter`` and on which
    signal (0: a hook's :meth:`Trainer.request_stop`, or not stopped), and the steps skipped as
    non-finite."""

    iteration: int
    output_dir: Path
    final_checkpoint: Optional[Path]
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    signal: int = 0
    skipped_steps: int = 0


class Trainer:
    """Trains a RetinaNet on the dataset of ``cfg.data``; see the module docstring."""

    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        progress: bool = True,
        hooks: Optional[list[Callable[["Trainer"], None]]] = None,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.hooks = hooks or []
        self.device = resolve_device(cfg.train.device)
        self.distributed = distributed.init_distributed(self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.out = Path(cfg.train.output_dir)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        self.iteration = 0
        self.skipped_steps = 0
        self._stop = StopRequest()
        self._metrics: Optional[MetricsLog] = None

    def request_stop(self) -> None:
        """End training after the current iteration, with a checkpoint (what Ctrl-C does)."""
        self._stop.requested = True

    # ------------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        self.train_set = build_dataset(cfg, train=True)
        if len(self.train_set) == 0:
            raise ValueError("the training dataset has no images")
        self.val_set = build_dataset(cfg, train=False) if self._has_val() else None
        self.model = build_model(cfg, class_names=list(self.train_set.class_names)).to(self.device)
        self.normalizer = LossNormalizer(cfg.model.loss_normalizer, cfg.model.normalizer_momentum)
        self.optimizer = build_optimizer(cfg, self.model)
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
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _has_val(self) -> bool:
        d = self.cfg.data
        return bool(d.val_annotations) if d.format == "coco" else bool(d.voc_root and d.val_split)

    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "iteration": self.iteration,
            "fg_ema": self.normalizer.fg_ema,
            "rng": get_rng_state(),
            "config": config_to_dict(self.cfg),
            "class_names": list(getattr(self.train_set, "class_names", [])),
            "label_to_category_id": list(getattr(self.train_set, "label_to_category_id", [])),
            "skipped_steps": self.skipped_steps,
            "max_iter": self.max_iter,
        }

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        """Write a checkpoint (rank 0; a collective: every rank calls it) and return its path."""
        path, error = None, None
        if distributed.is_main():
            path = self.out / (name or f"model_{self.iteration:07d}.pth")
            try:
                save_checkpoint(
                    path, self.state_dict(), keep_last=self.cfg.train.keep_checkpoints if name is None else None
                )
                log.info("saved checkpoint %s", path)
            except Exception as e:  # disk full, permissions: every rank must learn of it
                error = e
        distributed.raise_if_any_failed(error)
        return path

    # ------------------------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        state = load_file(path)
        load_model_state(self.model, state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.iteration = int(state["iteration"])
        self.normalizer.load(float(state.get("fg_ema", self.normalizer.initial)))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        if state.get("rng"):
            set_rng_state(state["rng"])
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # ------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        prepare_output_dir(self.out, cfg)
        self._build()
        metrics_path = self.out / "metrics.jsonl"
        self._metrics = MetricsLog(metrics_path)
        if self.resume:
            ckpt = latest_checkpoint(self.out)
            if ckpt is None:
                log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
            else:
                self._load(ckpt)
            if distributed.is_main():
                remove_stale_temporaries(self.out)
                self._metrics.drop_rows_after(self.iteration)
        elif distributed.is_main() and (newest := latest_checkpoint(self.out)) is not None:
            log.warning(
                "%s already holds checkpoints (newest: %s); this run starts from scratch and appends "
                "to its metrics.jsonl. Use --resume to continue that run, or another train.output_dir",
                self.out,
                newest.name,
            )
        start = self.iteration
        previous_handlers = install_stop_handlers(self._stop)
        if cfg.train.tensorboard and distributed.is_main():
            self._metrics.open_tensorboard(self.out / "tensorboard", purge_step=self.iteration + 1)
        bar = None
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.solver.amp)
        self.model.train()
        final_metrics: dict[str, float] = {}
        t_last, data_t0 = time.perf_counter(), time.perf_counter()
        try:
            loader = build_train_loader(
                self.train_set, cfg, start, self.max_iter, self.rank, self.world, self.device.type == "cuda"
            )
            assert isinstance(loader.batch_sampler, TrainBatchSampler)
            self.batches_per_epoch = loader.batch_sampler.batches_per_epoch
            if self.progress and distributed.is_main():
                from tqdm import tqdm

                bar = tqdm(total=self.max_iter, initial=start, desc="train", unit="it", dynamic_ncols=True)
            for batch in loader:
                data_time = time.perf_counter() - data_t0
                lr = lr_at(
                    self.iteration,
                    cfg.solver.lr(),
                    self.max_iter,
                    cfg.solver.warmup_iters,
                    cfg.solver.warmup_factor,
                    cfg.solver.steps,
                    cfg.solver.gamma,
                    cfg.solver.schedule,
                )
                for g in self.optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_factor", 1.0)
                losses = self._step(batch, amp_dtype)
                self.iteration += 1
                it = self.iteration
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if distributed.is_main() and (
                    it % cfg.train.log_period == 0 or it == self.max_iter or it == start + 1 or "skipped" in losses
                ):
                    now = time.perf_counter()
                    row = {
                        "iter": it,
                        **{k: _finite_or_none(v) for k, v in losses.items()},
                        "lr": lr,
                        "data_time": round(data_time, 4),
                        "time": round(now - t_last, 4),
                        "epoch": (it - 1) // self.batches_per_epoch,
                    }
                    if self.skipped_steps:
                        row["skipped_steps"] = self.skipped_steps
                    t_last = now
                    self._metrics.write(row)
                for hook in self.hooks:
                    hook(self)
                if it >= self.max_iter:  # a hook lowered max_iter (e.g. a time budget): this was the last step
                    break
                if bar is not None and bar.total != self.max_iter:
                    bar.total = self.max_iter
                    bar.refresh()
                if it % cfg.train.checkpoint_period == 0 and it < self.max_iter:
                    self.save()
                if (
                    self.val_set is not None
                    and cfg.train.eval_period
                    and it % cfg.train.eval_period == 0
                    and it < self.max_iter
                ):
                    self._evaluate()
                # a signal may reach only some processes: all stop at the same step, reporting the signal
                stop = distributed.max_over_ranks(self._stop.signum + 1 if self._stop.requested else 0)
                if stop:
                    self._stop.requested, self._stop.signum = True, stop - 1
                    break
                data_t0 = time.perf_counter()
        except BaseException:
            self._metrics.close()
            raise
        finally:
            if bar is not None:
                bar.close()
            restore_handlers(previous_handlers)
            # training is over: the DDP wrapper (which holds the process group) is no longer needed;
            # dropping it here frees it before the caller leaves the group (distributed.cleanup)
            self.ddp_model = self.model
        try:
            stopped = self.iteration < self.max_iter
            final = self.save()  # the latest state, always (also after Ctrl-C)
            if stopped:
                log.warning(
                    "training stopped at iteration %d of %d; continue with --resume", self.iteration, self.max_iter
                )
            else:
                final = self.save("model_final.pth")
                if self.val_set is not None:
                    final_metrics = self._evaluate()
                if distributed.is_main():
                    self._plot(metrics_path)
        finally:
            self._metrics.close()
        if self.skipped_steps:
            log.warning("%d non-finite steps were skipped (solver.skip_nonfinite)", self.skipped_steps)
        return TrainResult(
            self.iteration,
            self.out,
            final,
            final_metrics,
            stopped_early=stopped,
            signal=self._stop.signum,
            skipped_steps=self.skipped_steps,
        )

    # ------------------------------------------------------------------------------------------
    def _step(self, batch, amp_dtype) -> dict[str, float]:
        images = [im.to(self.device, non_blocking=True) for im in batch.images]
        targets = [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)} for t in batch.targets]
        ctx = torch.autocast(self.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
        with ctx:
            out = self.ddp_model(images, targets)
            normalizer = self.normalizer(out["num_fg"])
            loss_cls, loss_box = out["loss_cls"] / normalizer, out["loss_box"] / normalizer
        loss = loss_cls.float() + loss_box.float()
        stats = torch.stack(
            [loss.detach(), loss_cls.detach().float(), loss_box.detach().float(), out["num_fg"].float()]
        )
        stats = distributed.all_reduce_mean(stats)
        values = dict(zip(("loss", "loss_cls", "loss_box", "num_fg"), stats.tolist()))
        values["num_fg"] *= self.world  # foreground anchors of the whole global batch
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
        last = latest_checkpoint(self.out)
        msg = divergence_message(what, self.iteration + 1, values, last, self.out, self.cfg)
        if self.cfg.solver.skip_nonfinite:
            self.skipped_steps += 1
            log.warning("skipping step: %s", msg)
            values["skipped"] = 1.0
            return values
        raise TrainingDiverged(msg)

    def _evaluate(self) -> dict[str, float]:
        assert self.val_set is not None
        loader = build_eval_loader(self.val_set, self.cfg, rank=self.rank, world_size=self.world)
        results_path = self.out / f"detections_{self.iteration:07d}.json"
        m = self.cfg.model
        metrics = evaluate(
            self.model.fuse_for_inference(),
            loader,
            self.val_set,
            self.device,
            results_path=results_path,
            progress=self.progress,
            label_to_category_id=list(range(m.num_classes)) if m.label_space == "coco_category_ids" else None,
        )
        if distributed.is_main() and metrics:
            assert self._metrics is not None  # opened by train()
            row = {"iter": self.iteration, **{f"bbox/{k}": v for k, v in metrics.items()}}
            self._metrics.write(row)
            log.info(
                "iteration %d: AP %.4f AP50 %.4f AP75 %.4f",
                self.iteration,
                metrics.get("AP", -1),
                metrics.get("AP50", -1),
                metrics.get("AP75", -1),
            )
        return metrics

    def _plot(self, metrics_path: Path) -> None:
        try:
            from retinanet.viz.plots import plot_training_curves

            plot_training_curves(metrics_path, self.out / "training_curves.png")
        except Exception as e:  # a plot must never cost a finished run
            log.warning("could not draw the training curves: %s", e)
