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
TensorBoard is not installed). The output folder is checked for writability before anything else, so
an unwritable one fails at once (:class:`OutputDirError`) without touching files already there.

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
import yaml
from torch import nn

from retinanet.config import Config, ConfigError, config_to_dict
from retinanet.data.build import build_dataset, build_eval_loader
from retinanet.data.collate import collate
from retinanet.data.sampler import SeededDataset, TrainBatchSampler
from retinanet.modeling.retinanet import RetinaNet
from retinanet.utils import distributed as du
from retinanet.training.checkpoint import (LAST_CHECKPOINT_FILE, atomic_write, get_rng_state, latest_checkpoint,
                         load_checkpoint, load_model_state, save_checkpoint, set_rng_state)
from retinanet.inference.loop import evaluate

__all__ = ["Trainer", "TrainResult", "TrainingDiverged", "OutputDirError", "lr_at", "resolve_device"]

log = logging.getLogger("retinanet.train")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


class OutputDirError(ConfigError):
    """``train.output_dir`` cannot be created or written."""


def lr_at(iteration: int, base_lr: float, max_iter: int, warmup_iters: int, warmup_factor: float,
          steps: tuple[float, ...], gamma: float, schedule: str = "step") -> float:
    """Learning rate at ``iteration``: linear warmup, then ``"step"`` decay (times ``gamma`` at each
    fraction of ``max_iter`` in ``steps``, the paper's) or ``"cosine"`` decay from ``base_lr`` to 0 at
    ``max_iter`` (half a cosine period over the whole run, warmup included)."""
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1 - alpha) + alpha
    if schedule == "cosine":
        return base_lr * factor * 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max(max_iter, 1)))
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
    if dev.type == "cuda" and dev.index is None and "LOCAL_RANK" in os.environ:
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process under torchrun
    return dev


def _ignore_sigint(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C is the main process's business (it finishes the step and
    writes a checkpoint); a worker killed by it would make the main process fail on its next batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _finite_or_none(v: float) -> Optional[float]:
    return round(v, 6) if math.isfinite(v) else None  # JSON has no NaN / Infinity


@dataclass
class _Stop:
    requested: bool = False
    signum: int = 0


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
        self._tb = None

    def request_stop(self) -> None:
        """End training after the current iteration, with a checkpoint (what Ctrl-C does)."""
        self._stop.requested = True

    # ------------------------------------------------------------------------------------------
    def _param_groups(self) -> list:
        """The trainable parameters: one list, or with ``solver.backbone_lr_factor != 1`` two groups
        (backbone body at ``lr * factor``, FPN and head at ``lr``; the factor is kept in the group)."""
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        factor = self.cfg.solver.backbone_lr_factor
        if factor == 1.0:
            return [p for _, p in trainable]
        body = [p for n, p in trainable if n.startswith("backbone.body.")]
        rest = [p for n, p in trainable if not n.startswith("backbone.body.")]
        return [g for g in ({"params": body, "lr_factor": factor}, {"params": rest, "lr_factor": 1.0})
                if g["params"]]

    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        self.train_set = build_dataset(cfg, train=True)
        if len(self.train_set) == 0:
            raise ValueError("the training dataset has no images")
        self.val_set = build_dataset(cfg, train=False) if self._has_val() else None
        self.model = RetinaNet(cfg.model).to(self.device)
        params = self._param_groups()
        if cfg.solver.optimizer == "adamw":
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                params, lr=cfg.solver.lr(), betas=(cfg.solver.momentum, 0.999),
                weight_decay=cfg.solver.weight_decay)
        else:
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
        workers = cfg.data.num_workers
        return torch.utils.data.DataLoader(
            SeededDataset(self.train_set, cfg.train.seed), batch_sampler=sampler,
            num_workers=workers, collate_fn=functools.partial(collate, size_divisibility=div),
            persistent_workers=False, pin_memory=self.device.type == "cuda",
            worker_init_fn=_ignore_sigint if workers > 0 else None,
            prefetch_factor=2 if workers > 0 else None)

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
        """Write a checkpoint (rank 0; a collective: every rank calls it) and return its path."""
        path, error = None, None
        if du.is_main():
            path = self.out / (name or f"model_{self.iteration:07d}.pth")
            try:
                save_checkpoint(path, self.state_dict(), keep_last=self.cfg.train.keep_checkpoints
                                if name is None else None)
                log.info("saved checkpoint %s", path)
            except Exception as e:  # disk full, permissions: every rank must learn of it
                error = e
        du.raise_if_any_failed(error)
        return path

    # ------------------------------------------------------------------------------------------
    def _prepare_output_dir(self) -> None:
        """Create ``output_dir`` and write ``config.yaml`` atomically (rank 0): the writability check
        that makes an unusable folder fail at once, before any training."""
        error = None
        if du.is_main():
            try:
                self.out.mkdir(parents=True, exist_ok=True)
                text = yaml.safe_dump(config_to_dict(self.cfg), sort_keys=False).encode()
                atomic_write(self.out / "config.yaml", lambda f: f.write(text))
            except OSError as e:
                error = OutputDirError(f"train.output_dir: cannot write to {self.out}: {e.strerror or e}; "
                                       "choose a writable folder (train.output_dir=... or --output-dir)")
        du.raise_if_any_failed(error)

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files of checkpoint writes that a killed process left behind."""
        for p in list(self.out.glob(".model_*.tmp")) + list(self.out.glob(f".{LAST_CHECKPOINT_FILE}.*.tmp")):
            parts = p.name.split(".")
            try:
                pid = int(parts[-3])
            except (ValueError, IndexError):
                continue
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # that process is alive (another writer): leave its file alone
            except ProcessLookupError:
                pass
            except OSError:
                continue
            try:
                p.unlink()
                log.info("removed %s, left by an interrupted checkpoint write", p.name)
            except OSError:
                pass

    def _truncate_metrics(self, metrics_path: Path, start: int) -> None:
        """On resume: drop rows of iterations after ``start`` (they are about to be redone) and a
        partial last line left by a kill, so the log has each iteration once."""
        if not metrics_path.is_file():
            return
        lines = metrics_path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("iter"), int) and row["iter"] > start:
                continue
            kept.append(line)
        if len(kept) != len(lines):
            data = "".join(x + "\n" for x in kept).encode()
            atomic_write(metrics_path, lambda f: f.write(data))
            log.info("metrics.jsonl: dropped %d rows after iteration %d", len(lines) - len(kept), start)

    def _open_tensorboard(self):
        if not (getattr(self.cfg.train, "tensorboard", False) and du.is_main()):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed (ImportError) or broken: never fatal
            log.debug("TensorBoard is not available; metrics go to metrics.jsonl only")
            return None
        try:
            return SummaryWriter(log_dir=str(self.out / "tensorboard"), purge_step=self.iteration + 1)
        except Exception as e:
            log.warning("could not open a TensorBoard writer: %s", e)
            return None

    def _log_row(self, metrics_path: Path, row: dict[str, Any], prefix: str = "train/") -> None:
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            try:
                for k, v in row.items():
                    if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        self._tb.add_scalar(k if "/" in k else prefix + k, v, row["iter"])
                self._tb.flush()
            except Exception as e:  # a logger must never cost a run
                log.warning("TensorBoard logging failed, disabled: %s", e)
                self._tb = None

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
        self._prepare_output_dir()
        self._build()
        metrics_path = self.out / "metrics.jsonl"
        if self.resume:
            ckpt = latest_checkpoint(self.out)
            if ckpt is None:
                log.warning("--resume: no checkpoint in %s, starting from scratch", self.out)
            else:
                self._load(ckpt)
            if du.is_main():
                self._remove_stale_temporaries()
                self._truncate_metrics(metrics_path, self.iteration)
        elif du.is_main() and latest_checkpoint(self.out) is not None:
            log.warning("%s already holds checkpoints (newest: %s); this run starts from scratch and appends "
                        "to its metrics.jsonl. Use --resume to continue that run, or another train.output_dir",
                        self.out, latest_checkpoint(self.out).name)
        start = self.iteration
        previous_handlers = self._install_signal_handlers()
        self._tb = self._open_tensorboard()
        bar = None
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.solver.amp)
        self.model.train()
        final_metrics: dict[str, float] = {}
        t_last, data_t0 = time.perf_counter(), time.perf_counter()
        try:
            loader = self._loader(start)
            if self.progress and du.is_main():
                from tqdm import tqdm
                bar = tqdm(total=self.max_iter, initial=start, desc="train", unit="it", dynamic_ncols=True)
            for batch in loader:
                data_time = time.perf_counter() - data_t0
                lr = lr_at(self.iteration, cfg.solver.lr(), self.max_iter, cfg.solver.warmup_iters,
                           cfg.solver.warmup_factor, cfg.solver.steps, cfg.solver.gamma, cfg.solver.schedule)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr * g.get("lr_factor", 1.0)
                losses = self._step(batch, amp_dtype)
                self.iteration += 1
                it = self.iteration
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                if du.is_main() and (it % cfg.train.log_period == 0 or it == self.max_iter or it == start + 1
                                     or "skipped" in losses):
                    now = time.perf_counter()
                    row = {"iter": it, **{k: _finite_or_none(v) for k, v in losses.items()}, "lr": lr,
                           "data_time": round(data_time, 4), "time": round(now - t_last, 4),
                           "epoch": (it - 1) // self.batches_per_epoch}
                    if self.skipped_steps:
                        row["skipped_steps"] = self.skipped_steps
                    t_last = now
                    self._log_row(metrics_path, row)
                for hook in self.hooks:
                    hook(self)
                if it >= self.max_iter:  # a hook lowered max_iter (e.g. a time budget): this was the last step
                    break
                if bar is not None and bar.total != self.max_iter:
                    bar.total = self.max_iter
                    bar.refresh()
                if it % cfg.train.checkpoint_period == 0 and it < self.max_iter:
                    self.save()
                if self.val_set is not None and cfg.train.eval_period and it % cfg.train.eval_period == 0 \
                        and it < self.max_iter:
                    self._evaluate(metrics_path)
                # a signal may reach only some processes: all stop at the same step, reporting the signal
                stop = du.max_over_ranks(self._stop.signum + 1 if self._stop.requested else 0)
                if stop:
                    self._stop.requested, self._stop.signum = True, stop - 1
                    break
                data_t0 = time.perf_counter()
        except BaseException:
            self._close_tensorboard()
            raise
        finally:
            if bar is not None:
                bar.close()
            for sig, h in previous_handlers.items():
                signal.signal(sig, h)
            # training is over: the DDP wrapper (which holds the process group) is no longer needed;
            # dropping it here frees it before the caller leaves the group (distributed.cleanup)
            self.ddp_model = self.model
        try:
            stopped = self.iteration < self.max_iter
            final = self.save()  # the latest state, always (also after Ctrl-C)
            if stopped:
                log.warning("training stopped at iteration %d of %d; continue with --resume", self.iteration,
                            self.max_iter)
            else:
                final = self.save("model_final.pth")
                if self.val_set is not None:
                    final_metrics = self._evaluate(metrics_path)
                if du.is_main():
                    self._plot(metrics_path)
        finally:
            self._close_tensorboard()
        if self.skipped_steps:
            log.warning("%d non-finite steps were skipped (solver.skip_nonfinite)", self.skipped_steps)
        return TrainResult(self.iteration, self.out, final, final_metrics, stopped_early=stopped,
                           signal=self._stop.signum, skipped_steps=self.skipped_steps)

    def _close_tensorboard(self) -> None:
        if self._tb is not None:
            try:
                self._tb.close()
            except Exception:
                pass
            self._tb = None

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
        where = (f"The last checkpoint, {last}, is intact (resume from it with --resume)" if last is not None
                 else f"No checkpoint was written to {self.out} yet")
        msg = (f"non-finite {what} at iteration {self.iteration + 1}: "
               + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
               + f". {where}. Hints: lower solver.base_lr (now "
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
            self._log_row(metrics_path, row)
            log.info("iteration %d: AP %.4f AP50 %.4f AP75 %.4f", self.iteration, metrics.get("AP", -1),
                     metrics.get("AP50", -1), metrics.get("AP75", -1))
        return metrics

    def _plot(self, metrics_path: Path) -> None:
        try:
            from retinanet.viz.draw import plot_training_curves
            plot_training_curves(metrics_path, self.out / "training_curves.png")
        except Exception as e:  # a plot must never cost a finished run
            log.warning("could not draw the training curves: %s", e)
