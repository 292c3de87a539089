"""The ablation runner behind ``retinanet ablate``: every cell x seed of a plan, resumable, then the tables.

``run_plan(plan, out)`` (plan: :class:`~retinanet.apps.ablate_plan.Plan`) trains one run per cell and
seed, one after the other in this process, each in its own folder::

    out/plan.json                        the plan as run: title, base, budget, seeds, axes, cells
    out/runs/<cell slug>/seed<k>/        the trainer's folder (checkpoints, metrics.jsonl, config.yaml) and
        run.json                         written first: cell, seed, the config and its fingerprint
        result.json                      written last: status finished | diverged, metrics, ms per image
    out/results.md|csv|json, out/plot_*.png   the tables and plots (:mod:`~retinanet.apps.ablate_report`)

Resume: a run with ``result.json`` is skipped (its periodic checkpoints are deleted once it finished;
``model_final.pth`` stays); one with a checkpoint but no result (killed) continues from its newest
checkpoint (``Trainer(cfg, resume=True)``); the others start fresh. The fingerprint is a hash of the
run's config without the keys that cannot change its result (:data:`RUNTIME_KEYS`); a folder made
with another config (the plan changed, same ``--out``) is an error naming the keys.

A run whose loss or gradient becomes non-finite (:class:`~retinanet.training.divergence.TrainingDiverged`)
is recorded as ``{"status": "diverged", "step": N}`` (N: the step that failed) and not retried. Ctrl-C
(or SIGTERM): the trainer writes a checkpoint, the runner writes the tables of what is done and returns
the signal number (``AblationRun.signal``); running the plan again continues.

With ``plan.speed`` the final weights (BN folded, as ``retinanet eval`` runs them) are timed on the
validation images: :func:`measure_ms_per_image`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from retinanet.apps.ablate_plan import Cell, Plan
from retinanet.apps.ablate_report import write_report
from retinanet.config import Config, ConfigError, config_to_dict
from retinanet.training.checkpoint import latest_checkpoint, list_checkpoints
from retinanet.training.divergence import TrainingDiverged
from retinanet.training.trainer import Trainer
from retinanet.utils.io import atomic_write_json

__all__ = ["AblationRun", "RUNTIME_KEYS", "run_plan", "run_dir", "fingerprint", "measure_ms_per_image", "read_results"]

log = logging.getLogger("retinanet.ablate")

FINAL_CHECKPOINT = "model_final.pth"

#: config keys that change how a run is executed or logged, not what it computes (left out of the fingerprint)
RUNTIME_KEYS = (
    "train.output_dir",
    "train.device",
    "train.num_threads",
    "train.tensorboard",
    "train.log_period",
    "train.checkpoint_period",
    "train.keep_checkpoints",
    "data.num_workers",
)


@dataclass
class AblationRun:
    """What :func:`run_plan` did: the records of every run with a result (see ``result.json``), how many
    runs it trained or skipped as already done, whether a run stopped before its end (Ctrl-C, SIGTERM or
    a hook; the plan stops there) and the signal (0: none)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    trained: int = 0
    skipped: int = 0
    stopped: bool = False
    signal: int = 0
    reports: list[Path] = field(default_factory=list)


def run_dir(out: Path, cell: Cell, seed: int) -> Path:
    return out / "runs" / cell.slug / f"seed{seed}"


def _fingerprinted(cfg: Config) -> dict[str, Any]:
    d = config_to_dict(cfg)
    for key in RUNTIME_KEYS:
        section, name = key.split(".")
        d[section].pop(name, None)
    return d


def fingerprint(cfg: Config) -> str:
    """Hash of the run's config without :data:`RUNTIME_KEYS`."""
    return hashlib.sha1(json.dumps(_fingerprinted(cfg), sort_keys=True).encode()).hexdigest()[:16]


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} -> {y!r}")
    return out


def _check_folder(folder: Path, cfg: Config, fp: str) -> None:
    """The folder holds nothing, or a run of this very config (else :class:`ConfigError`)."""
    meta = folder / "run.json"
    if not meta.is_file():
        return
    saved = json.loads(meta.read_text())
    if saved.get("fingerprint") != fp:
        diff = _differences(saved.get("config", {}), _fingerprinted(cfg))
        raise ConfigError(
            f"{folder} holds a run of another config ({'; '.join(diff[:5]) or 'unknown differences'}): the plan "
            "changed since that run. Use another --out, or delete that folder to rerun it"
        )


def measure_ms_per_image(checkpoint: Path, cfg: Config, images: int, warmup: int = 3) -> dict[str, Any]:
    """Inference time per image of a checkpoint on the validation set: batches of one image, the
    BN-folded model in inference mode, from the loaded image tensor to the detections in the file's
    pixels (normalize, pad, backbone, FPN, head, post-processing); decoding and resizing the file are
    not timed. ``warmup`` images first, then ``images`` timed ones (the set is cycled if smaller).
    Returns the median and mean ms, the count, the batch size, the torch threads and the device."""
    from retinanet.data.build import build_dataset, build_eval_loader
    from retinanet.inference.predictor import load_detector

    c = copy.deepcopy(cfg)
    c.data.test_batch_size, c.data.num_workers = 1, 0
    det = load_detector(checkpoint, config=c, device=c.train.device)
    model = det.model.fuse_for_inference(inplace=True).eval()
    dataset = build_dataset(c, train=False)
    loader = build_eval_loader(dataset, c)
    cuda = det.device.type == "cuda"
    times: list[float] = []
    with torch.inference_mode():
        while len(times) < images + warmup:
            for batch in loader:
                ims = [im.to(det.device) for im in batch.images]
                sizes = [t["orig_size"] for t in batch.targets]
                if cuda:
                    torch.cuda.synchronize(det.device)
                t0 = time.perf_counter()
                model(ims, output_sizes=sizes)
                if cuda:
                    torch.cuda.synchronize(det.device)
                times.append(time.perf_counter() - t0)
                if len(times) >= images + warmup:
                    break
    ms = [t * 1e3 for t in times[warmup:]]
    return {
        "median_ms": round(statistics.median(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "images": len(ms),
        "batch": 1,
        "threads": torch.get_num_threads(),
        "device": str(det.device),
    }


def _train_one(
    plan: Plan, cell: Cell, seed: int, folder: Path, cfg: Config, fp: str, trainer_cls: Callable[..., Trainer],
    progress: bool,
) -> tuple[Optional[dict[str, Any]], int]:  # fmt: skip
    """Train (or resume) one run; its record, or (None, signal) when a signal stopped it."""
    resume = latest_checkpoint(folder) is not None
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "run.json", {"cell": cell.index, "seed": seed, "fingerprint": fp,
                                            "config": _fingerprinted(cfg)}, indent=1)  # fmt: skip
    record: dict[str, Any] = {"cell": cell.index, "label": cell.label, "values": cell.values, "seed": seed,
                              "fingerprint": fp, "run_dir": str(folder)}  # fmt: skip
    trainer = trainer_cls(cfg, resume=resume, progress=progress)
    t0 = time.perf_counter()
    try:
        result = trainer.train()
    except TrainingDiverged as e:
        step = trainer.iteration + 1
        log.warning("cell %d (%s) seed %d diverged at step %d", cell.index, cell.label, seed, step)
        return {**record, "status": "diverged", "step": step, "message": str(e)}, 0
    if result.signal or result.stopped_early:
        return None, result.signal
    record.update(
        status="finished",
        iterations=result.iteration,
        metrics={k: float(v) for k, v in result.metrics.items() if "/" not in k},
        skipped_steps=result.skipped_steps,
        train_seconds=round(time.perf_counter() - t0, 1),  # this session's (a resumed run's is partial)
        resumed=resume,
    )
    if plan.speed:
        assert result.final_checkpoint is not None
        record["speed"] = measure_ms_per_image(result.final_checkpoint, cfg, plan.speed_images)
    return record, 0


def read_results(plan: Plan, out: Path) -> list[dict[str, Any]]:
    """The records of the runs of ``plan`` under ``out`` that have a result (with this plan's configs)."""
    records = []
    for cell in plan.cells():
        for seed in plan.seeds:
            folder = run_dir(out, cell, seed)
            path = folder / "result.json"
            if path.is_file():
                rec = json.loads(path.read_text())
                if rec.get("fingerprint") == fingerprint(plan.cell_config(cell, seed, folder)):
                    records.append(rec)
    return records


def run_plan(
    plan: Plan, out: str | Path, progress: bool = False, trainer_cls: Callable[..., Trainer] = Trainer
) -> AblationRun:
    """Run every cell x seed not done yet, then write the tables and plots (see the module docstring).
    ``trainer_cls`` builds the trainers (tests count calls with it)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = plan.cells()
    atomic_write_json(out / "plan.json", plan.summary(), indent=1)
    run = AblationRun()
    total, k = len(cells) * len(plan.seeds), 0
    for cell in cells:
        for seed in plan.seeds:
            k += 1
            folder = run_dir(out, cell, seed)
            cfg = plan.cell_config(cell, seed, folder)
            fp = fingerprint(cfg)
            _check_folder(folder, cfg, fp)
            if (folder / "result.json").is_file():
                run.skipped += 1
                log.info("[%d/%d] %s, seed %d: done before, skipped", k, total, cell.label, seed)
                continue
            log.info("[%d/%d] %s, seed %d: training in %s", k, total, cell.label, seed, folder)
            record, signal = _train_one(plan, cell, seed, folder, cfg, fp, trainer_cls, progress)
            run.trained += 1
            if record is None:
                run.stopped, run.signal = True, signal
                log.warning("stopped before the end of a run: run the same command again to continue")
                break
            atomic_write_json(folder / "result.json", record, indent=1)
            for ckpt in list_checkpoints(folder):  # done: model_final.pth (the pointer's) is the weights
                if ckpt.name != FINAL_CHECKPOINT and ckpt != latest_checkpoint(folder):
                    ckpt.unlink()
        if run.stopped:
            break
    run.records = read_results(plan, out)
    run.reports = write_report(plan, run.records, out)
    return run
