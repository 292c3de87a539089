"""What a detector's output index means: class names and COCO category ids per label.

A detector has ``K`` outputs. ``model.label_space`` says what output ``i`` is:

- ``"dataset"``: the ``i``-th class of the data it was trained on. The trainer stores the names and the
  dataset's category ids in every checkpoint; a file without them gets names ``"0".."K-1"`` and ids
  ``1..K``.
- ``"coco_category_ids"``: COCO category id ``i`` (torchvision's COCO detectors: 91 outputs, index 0 and
  the 10 ids COCO never used are ``"N/A"``). Names come from the 80 COCO categories shipped in
  ``coco_categories.json`` (public facts of the COCO 2017 annotation files).

:func:`label_table` ``(label_space, num_classes, stored_names, stored_ids) -> (names [K], category_ids [K])``
is the one place this is decided, for prediction, evaluation, export and fine-tuning.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["COCO_CATEGORIES_FILE", "UNUSED_NAME", "coco_category_names", "label_table"]

COCO_CATEGORIES_FILE = Path(__file__).resolve().parent / "coco_categories.json"
UNUSED_NAME = "N/A"  # name of an output index that is no COCO category (as torchvision writes it)


@lru_cache(maxsize=1)
def _coco_categories() -> tuple[tuple[int, str], ...]:
    with open(COCO_CATEGORIES_FILE, encoding="utf-8") as f:
        return tuple((int(c["id"]), str(c["name"])) for c in json.load(f))


def coco_category_names() -> dict[int, str]:
    """The 80 COCO categories, ``{category id: name}`` (ids 1..90 with gaps)."""
    return dict(_coco_categories())


def label_table(
    label_space: str,
    num_classes: int,
    stored_names: Optional[Sequence[str]] = None,
    stored_ids: Optional[Sequence[int]] = None,
    source: str = "checkpoint",
) -> tuple[list[str], list[int]]:
    """``(names, category_ids)``, one entry per output index (see the module docstring).

    ``stored_names`` / ``stored_ids`` are what a checkpoint carries (``"dataset"`` only); a count that
    differs from ``num_classes`` is a ``ValueError`` naming ``source``.
    """
    k = int(num_classes)
    if label_space == "coco_category_ids":
        coco = coco_category_names()
        return [coco.get(i, UNUSED_NAME) for i in range(k)], list(range(k))
    if label_space != "dataset":
        raise ValueError(f"unknown label_space {label_space!r}: use 'dataset' or 'coco_category_ids'")
    names = [str(n) for n in stored_names] if stored_names else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{source}: {len(names)} class names stored for model.num_classes={k}")
    ids = [int(c) for c in stored_ids] if stored_ids else list(range(1, k + 1))
    if len(ids) != k:
        raise ValueError(f"{source}: {len(ids)} category ids stored for model.num_classes={k}")
    return names, ids
