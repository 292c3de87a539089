"""What a non-finite loss or gradient stops training with: :class:`TrainingDiverged` and its message.

:func:`divergence_message` names the iteration, the step's loss values, the last intact checkpoint (or
that none was written yet) and what to try; the trainer raises it, or with ``solver.skip_nonfinite``
logs it and skips the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from retinanet.config import Config

__all__ = ["TrainingDiverged", "divergence_message"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


def divergence_message(
    what: str, iteration: int, values: dict[str, float], last_checkpoint: Optional[Path], output_dir: Path, cfg: Config
) -> str:
    """The message for a non-finite ``what`` ("loss" or "gradient") at ``iteration``."""
    where = (
        f"The last checkpoint, {last_checkpoint}, is intact (resume from it with --resume)"
        if last_checkpoint is not None
        else f"No checkpoint was written to {output_dir} yet"
    )
    return (
        f"non-finite {what} at iteration {iteration}: "
        + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        + f". {where}. Hints: lower solver.base_lr (now {cfg.solver.base_lr}) or lengthen solver.warmup_iters "
        f"(now {cfg.solver.warmup_iters}); set solver.clip_grad_norm; check the dataset for degenerate or huge "
        "boxes; or set solver.skip_nonfinite=true to skip such steps."
    )
