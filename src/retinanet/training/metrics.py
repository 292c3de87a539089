"""The training log: one JSON object per line in ``metrics.jsonl``, and the same scalars as
TensorBoard events when TensorBoard is installed.

A row is ``{"iter": int, name: number | None, ...}`` (``None`` for a non-finite value: JSON has no
NaN). :class:`MetricsLog` appends rows (:meth:`~MetricsLog.write`), tags each number for TensorBoard
as ``<prefix><name>`` unless the name already has a ``/`` (``train/loss``, ``bbox/AP``), and on
resume drops the rows of the iterations that are about to be redone
(:meth:`~MetricsLog.drop_rows_after`). A TensorBoard failure never costs a run: it is logged and
TensorBoard logging is switched off. :func:`train_row` is a training iteration's row;
:func:`plot_curves` draws the loss / lr curves of the file.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from retinanet.utils.io import atomic_write_text

__all__ = ["MetricsLog", "train_row", "plot_curves"]

log = logging.getLogger("retinanet.train")


class MetricsLog:
    """Rows of ``path`` (``metrics.jsonl``), mirrored to TensorBoard after :meth:`open_tensorboard`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tb: Any = None

    def open_tensorboard(self, log_dir: Path, purge_step: int) -> None:
        """Also write TensorBoard events to ``log_dir`` (events from ``purge_step`` on, left by an
        earlier run of this folder, are dropped); a no-op when TensorBoard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed (ImportError) or broken: never fatal
            log.debug("TensorBoard is not available; metrics go to metrics.jsonl only")
            return
        try:
            self._tb = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        except Exception as e:
            log.warning("could not open a TensorBoard writer: %s", e)

    def write(self, row: dict[str, Any], prefix: str = "train/") -> None:
        """Append ``row`` (it must have an int ``"iter"``) to the file and to TensorBoard."""
        # appended, not rewritten: a kill mid-line leaves a partial last line, dropped on resume
        with open(self.path, "a") as f:
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

    def drop_rows_after(self, iteration: int) -> None:
        """On resume: drop rows of iterations after ``iteration`` (they are about to be redone) and a
        partial last line left by a kill, so the log has each iteration once."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("iter"), int) and row["iter"] > iteration:
                continue
            kept.append(line)
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(x + "\n" for x in kept))
            log.info("metrics.jsonl: dropped %d rows after iteration %d", len(lines) - len(kept), iteration)

    def close(self) -> None:
        """Close the TensorBoard writer, if any (the jsonl file is opened per row)."""
        if self._tb is not None:
            try:
                self._tb.close()
            except Exception:
                pass
            self._tb = None


def _finite_or_none(v: float) -> Optional[float]:
    return round(v, 6) if math.isfinite(v) else None  # JSON has no NaN / Infinity


def train_row(
    iteration: int, losses: dict[str, float], lr: float, data_time: float, step_time: float, epoch: int, skipped: int
) -> dict[str, Any]:
    """The row of a training iteration: losses (None where not finite), lr, seconds waiting for data and
    since the previous row, the epoch and, when any were skipped, the count of skipped steps."""
    row = {
        "iter": iteration,
        **{k: _finite_or_none(v) for k, v in losses.items()},
        "lr": lr,
        "data_time": round(data_time, 4),
        "time": round(step_time, 4),
        "epoch": epoch,
    }
    if skipped:
        row["skipped_steps"] = skipped
    return row


def plot_curves(metrics_path: Path, png: Path) -> None:
    """Draw the training curves of ``metrics_path`` into ``png``; a failure is only logged."""
    try:
        from retinanet.viz.plots import plot_training_curves

        plot_training_curves(metrics_path, png)
    except Exception as e:  # a plot must never cost a finished run
        log.warning("could not draw the training curves: %s", e)
