"""A training run's output folder: created, and checked for writability, before any training.

:func:`prepare_output_dir` creates ``train.output_dir`` and writes the run's ``config.yaml`` into it
atomically on rank 0 (a collective: every rank calls it), so that an unusable folder fails at once
with :class:`OutputDirError` on every rank, without touching files already there.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from retinanet.config import Config, ConfigError, config_to_dict
from retinanet.utils import distributed
from retinanet.utils.io import atomic_write_text

__all__ = ["OutputDirError", "prepare_output_dir"]


class OutputDirError(ConfigError):
    """``train.output_dir`` cannot be created or written."""


def prepare_output_dir(out: Path, cfg: Config) -> None:
    """Create ``out`` and write ``out/config.yaml`` (rank 0); raise :class:`OutputDirError` on every
    rank if that fails."""
    error = None
    if distributed.is_main():
        try:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        except OSError as e:
            error = OutputDirError(
                f"train.output_dir: cannot write to {out}: {e.strerror or e}; "
                "choose a writable folder (train.output_dir=... or --output-dir)"
            )
    distributed.raise_if_any_failed(error)
