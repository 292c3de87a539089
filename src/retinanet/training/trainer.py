"""The training loop: the paper's SGD recipe, checkpoints and exact resume, AMP, DDP, logging.

``Trainer(cfg).train()`` runs ``solver.max_iter`` iterations (or ``solver.epochs`` epochs) of

    images, targets -> model (losses) -> backward -> [clip] -> SGD step -> [weight EMA update]

(:mod:`~retinanet.training.step`) with the learning rate a pure function of the iteration and the run's
length (:func:`~retinanet.training.schedule.solver_lr`: warmup over ``min(solver.warmup_iters,
solver.warmup_fraction * max_iter)``, then the lr steps or cosine), so a resumed run needs only the
iteration to continue its schedule. Data order and augmentation are functions of (seed, epoch, index)
(``retinanet.data.sampler``); with the saved model, EMA, optimizer, normalizer and RNG states, a run
stopped at iteration N and resumed reproduces the uninterrupted run bit for bit on CPU.

- ``train.time_budget`` (``"15m"``): :class:`~retinanet.training.budget.TimeBudget` fits the number of
  steps (at most ``solver.max_iter`` or ``solver.epochs``' iterations: the budget only lowers it), so
  the schedule, to the measured step time. Checkpoints hold the fitted ``max_iter`` and the seconds
  spent: a resumed run keeps the fitted schedule and re-fits, to the time left, only while its first lr
  step is ahead. The final evaluation is outside the budget unless evaluations during training timed it.
- ``solver.ema`` (:class:`~retinanet.training.ema.ModelEMA`): evaluations use the EMA weights;
  checkpoints hold the raw weights in ``"model"`` (to resume) and the EMA's in ``"ema"``, which
  :func:`~retinanet.inference.predictor.load_detector` (prediction, ``retinanet eval``, export) loads.
- every ``train.eval_period`` iterations (before that iteration's checkpoint) and at the end the
  validation set is evaluated; when ``train.best_metric`` improves, ``model_best.pth`` is written
  (:mod:`~retinanet.training.best`; never pruned). Checkpoints hold the best so far, for resume.

Rank 0 alone writes ``metrics.jsonl``, ``config.yaml``, checkpoints (atomically), the loss/lr plot and,
when ``train.tensorboard`` is on and TensorBoard imports, the same scalars under
``<output_dir>/tensorboard``. The output folder is checked for writability first
(:class:`~retinanet.training.output.OutputDirError`).

Faults: a non-finite loss or gradient stops training with :class:`TrainingDiverged` naming the
iteration, losses, the last (intact) checkpoint and hints, or with ``solver.skip_nonfinite`` skips the
step (counted in ``skipped_steps``); Ctrl-C (or SIGTERM) finishes the current step, writes a checkpoint
and stops (``TrainResult.signal``; a second Ctrl-C aborts; DataLoader workers ignore SIGINT; under DDP
the ranks agree each iteration); a failed checkpoint write raises :class:`CheckpointError` on rank 0
and :class:`RankFailed` on the others; ``--resume`` after a kill loads the newest complete checkpoint,
removes stale temporaries and drops the ``metrics.jsonl`` rows of iterations about to be redone.

``hooks`` are called with the trainer after every iteration (before the periodic evaluation and
checkpoint); a hook may call :meth:`Trainer.request_stop` (what Ctrl-C does) or lower
``trainer.max_iter`` (never above the configured number; identically on every rank): the run then
ends normally at the new number, and the schedule follows it (``retinanet demo``'s time budget).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from retinanet.config import Config, ConfigError, config_to_dict
from retinanet.data.build import build_dataset
from retinanet.data.sampler import TrainBatchSampler
from retinanet.inference.anchor_analysis import warn_if_poor_anchor_coverage
from retinanet.modeling.build import build_model
from retinanet.modeling.state_dict import load_model_state
from retinanet.training.best import BEST_CHECKPOINT, BestMetric, best_checkpoint_state, report_best
from retinanet.training.budget import TimeBudget
from retinanet.training.checkpoint import latest_checkpoint, remove_stale_temporaries, save_checkpoint
from retinanet.training.divergence import TrainingDiverged, divergence_message
from retinanet.training.ema import ModelEMA
from retinanet.training.evaluation import evaluate_during_training
from retinanet.training.loader import build_train_loader
from retinanet.training.metrics import MetricsLog, plot_curves, train_row
from retinanet.training.normalizer import LossNormalizer
from retinanet.training.optimizer import build_optimizer
from retinanet.training.output import prepare_output_dir
from retinanet.training.rng import get_rng_state, set_rng_state
from retinanet.training.schedule import solver_lr
from retinanet.training.signals import StopRequest, install_stop_handlers, restore_handlers
from retinanet.training.step import StepParts, optimizer_step
from retinanet.utils import distributed
from retinanet.utils.device import resolve_device
from retinanet.utils.serialization import load_file

__all__ = ["Trainer", "TrainResult"]

log = logging.getLogger("retinanet.train")


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did: the last iteration, the checkpoint written last, the final
    evaluation (empty if none or not rank 0), whether it stopped before ``max_iter`` and on which
    signal (0: a hook's :meth:`Trainer.request_stop`, or not stopped), the steps skipped as non-finite,
    the best evaluation (``best_metric`` value and iteration, ``model_best.pth``; None without one) and,
    with a time budget, the configured number of steps (``planned_iter``; the budget's is ``iteration``)."""

    iteration: int
    output_dir: Path
    final_checkpoint: Optional[Path]
    metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    signal: int = 0
    skipped_steps: int = 0
    best_metric: str = "AP"
    best_value: Optional[float] = None
    best_iteration: Optional[int] = None
    best_checkpoint: Optional[Path] = None
    planned_iter: Optional[int] = None


class Trainer:
    """Trains a RetinaNet on the dataset of ``cfg.data``; see the module docstring. ``clock`` is the
    time of ``train.time_budget`` (default ``time.perf_counter``; tests pass a fake one)."""

    def __init__(
        self,
        cfg: Config,
        resume: bool = False,
        progress: bool = True,
        hooks: Optional[list[Callable[["Trainer"], None]]] = None,
        clock: Optional[Callable[[], float]] = None,
    ) -> None:
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.hooks = hooks or []
        self.clock = clock or time.perf_counter
        self.device = resolve_device(cfg.train.device)
        self.distributed = distributed.init_distributed(self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.out = Path(cfg.train.output_dir)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        self.iteration = 0
        self.skipped_steps = 0
        self.eval_seconds: float = 0.0  # in evaluations during training (read by TimeBudget)
        self.last_eval_seconds: Optional[float] = None
        self.best = BestMetric(cfg.train.best_metric)
        self.ema: Optional[ModelEMA] = None
        self.budget: Optional[TimeBudget] = None
        self._stop = StopRequest()
        self._metrics: Optional[MetricsLog] = None

    def request_stop(self) -> None:
        """End training after the current iteration, with a checkpoint (what Ctrl-C does)."""
        self._stop.requested = True

    # ------------------------------------------------------------------------------------------
    def _build(self, t_start: float) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        self.train_set = build_dataset(cfg, train=True)
        if len(self.train_set) == 0:
            raise ValueError("the training dataset has no images")
        warn_if_poor_anchor_coverage(self.train_set, cfg)  # logs on rank 0 when few boxes reach model.fg_iou_threshold
        self.val_set = build_dataset(cfg, train=False) if self._has_val() else None
        metric = cfg.train.best_metric
        if self.val_set is not None and metric.startswith("AP/") and metric[3:] not in self.val_set.class_names:
            raise ConfigError(f"train.best_metric: no class {metric[3:]!r} in {list(self.val_set.class_names)}")
        self.model = build_model(cfg, class_names=list(self.train_set.class_names)).to(self.device)
        self.normalizer = LossNormalizer(cfg.model.loss_normalizer, cfg.model.normalizer_momentum)
        self.optimizer = build_optimizer(cfg, self.model)
        s = cfg.solver
        if s.epochs is not None:
            self.max_iter = max(1, math.ceil(s.epochs * len(self.train_set) / s.batch_size))
        else:
            self.max_iter = s.max_iter
        self.cap = self.max_iter
        if s.ema:
            self.ema = ModelEMA(self.model, s.ema_decay, s.ema_tau)
        if cfg.train.time_budget is not None:
            self.budget = TimeBudget.for_training(cfg, t_start, self.cap, self.clock)
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
            **({"ema": self.ema.state_dict(), "ema_updates": self.ema.updates} if self.ema is not None else {}),
            "best": self.best.state_dict(),
            "time_budget": {"spent_s": self.budget.spent_s()} if self.budget is not None else None,
        }

    def save(self, name: Optional[str] = None) -> Optional[Path]:
        """Write a checkpoint (rank 0; a collective: every rank calls it) and return its path."""
        keep = self.cfg.train.keep_checkpoints if name is None else None
        return self._write(name or f"model_{self.iteration:07d}.pth", self.state_dict, keep_last=keep)

    def _write(self, name: str, state: Callable[[], dict[str, Any]], **kw: Any) -> Optional[Path]:
        path, error = None, None
        if distributed.is_main():
            path = self.out / name
            try:
                save_checkpoint(path, state(), **kw)
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
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"], int(state.get("ema_updates", 0)))
            else:
                log.warning("%s has no EMA weights: solver.ema starts from the resumed weights", path.name)
                self.ema = ModelEMA(self.model, self.cfg.solver.ema_decay, self.cfg.solver.ema_tau)
        self.best.load_state_dict(state.get("best"))
        if self.budget is not None and state.get("time_budget"):
            self.budget.t0 -= float(state["time_budget"]["spent_s"])
            self.max_iter = min(int(state.get("max_iter", self.cap)), self.cap)  # the fitted schedule
        log.info("resumed from %s at iteration %d", path, self.iteration)

    # ------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        cfg = self.cfg
        t_start = self.clock()
        prepare_output_dir(self.out, cfg)
        self._build(t_start)
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
        hooks = ([self.budget] if self.budget is not None else []) + self.hooks
        previous_handlers = install_stop_handlers(self._stop)
        if cfg.train.tensorboard and distributed.is_main():
            self._metrics.open_tensorboard(self.out / "tensorboard", purge_step=self.iteration + 1)
        bar = None
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.solver.amp)
        self.model.train()
        final_metrics: dict[str, float] = {}
        t_last, data_t0 = time.perf_counter(), time.perf_counter()
        parts: Optional[StepParts] = StepParts(
            self.model, self.ddp_model, self.optimizer, self.scaler, self.normalizer, self.device, self.world,
            cfg.solver.clip_grad_norm,
        )  # fmt: skip
        try:
            # a time budget may raise max_iter up to the cap again, unless the run is over
            end = self.cap if self.budget is not None and start < self.max_iter else self.max_iter
            loader = build_train_loader(
                self.train_set, cfg, start, end, self.rank, self.world, self.device.type == "cuda"
            )
            assert isinstance(loader.batch_sampler, TrainBatchSampler)
            self.batches_per_epoch = loader.batch_sampler.batches_per_epoch
            if self.progress and distributed.is_main():
                from tqdm import tqdm

                bar = tqdm(total=self.max_iter, initial=start, desc="train", unit="it", dynamic_ncols=True)
            for batch in loader:
                data_time = time.perf_counter() - data_t0
                lr = solver_lr(cfg.solver, self.iteration, self.max_iter)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_factor", 1.0)
                assert parts is not None
                losses, bad = optimizer_step(parts, batch, amp_dtype)
                if bad is not None:
                    losses = self._nonfinite(losses, bad)
                elif self.ema is not None:
                    self.ema.update(self.model)
                self.iteration += 1
                it = self.iteration
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if distributed.is_main() and (
                    it % cfg.train.log_period == 0 or it == self.max_iter or it == start + 1 or "skipped" in losses
                ):
                    now = time.perf_counter()
                    epoch = (it - 1) // self.batches_per_epoch
                    row = train_row(it, losses, lr, data_time, now - t_last, epoch, self.skipped_steps)
                    t_last = now
                    self._metrics.write(row)
                for hook in hooks:
                    hook(self)
                if it >= self.max_iter:  # a hook lowered max_iter (e.g. a time budget): this was the last step
                    break
                if bar is not None and bar.total != self.max_iter:
                    bar.total = self.max_iter
                    bar.refresh()
                if self.val_set is not None and cfg.train.eval_period and it % cfg.train.eval_period == 0:
                    self._evaluate()  # before the checkpoint, which then holds the best so far
                if it % cfg.train.checkpoint_period == 0:
                    self.save()
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
            self.ddp_model, parts = self.model, None
        try:
            stopped = self.iteration < self.max_iter
            final = self.save()  # the latest state, always (also after Ctrl-C)
            if stopped:
                log.warning(
                    "training stopped at iteration %d of %d; continue with --resume", self.iteration, self.max_iter
                )
            else:
                if self.val_set is not None:
                    final_metrics = self._evaluate()
                final = self.save("model_final.pth")
                if distributed.is_main():
                    if self.budget is not None:
                        self.budget.report(self.max_iter)
                    report_best(self.best, final_metrics, self.iteration)
                    plot_curves(metrics_path, self.out / "training_curves.png")
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
            best_metric=self.best.metric,
            best_value=self.best.value,
            best_iteration=self.best.iteration,
            best_checkpoint=self.out / BEST_CHECKPOINT if self.best.value is not None else None,
            planned_iter=self.cap if self.budget is not None else None,
        )

    # ------------------------------------------------------------------------------------------
    def _nonfinite(self, values: dict[str, float], what: str) -> dict[str, float]:
        last = latest_checkpoint(self.out)
        msg = divergence_message(what, self.iteration + 1, values, last, self.out, self.cfg)
        if self.cfg.solver.skip_nonfinite:
            self.skipped_steps += 1
            log.warning("skipping step: %s", msg)
            values["skipped"] = 1.0
            return values
        raise TrainingDiverged(msg)

    def _evaluate(self) -> dict[str, float]:
        """Evaluate (the EMA weights when on) on the validation set; write ``model_best.pth`` when
        ``train.best_metric`` improved (a collective: every rank calls it)."""
        assert self.val_set is not None
        t0 = self.clock()
        model = self.ema.module if self.ema is not None else self.model
        metrics, improved = evaluate_during_training(
            model, self.val_set, self.cfg, self.device, self.out, self.iteration, self.rank, self.world,
            self.progress, self._metrics, self.best,
        )  # fmt: skip
        if distributed.any_rank(improved):  # rank 0 writes model_best.pth
            self._write(BEST_CHECKPOINT, lambda: best_checkpoint_state(self.state_dict(), self.best), update_last=False)
        self.last_eval_seconds = self.clock() - t0
        self.eval_seconds += self.last_eval_seconds
        return metrics
