"""The ops of a ``data.augment`` list (:mod:`retinanet.config.augment` names and checks the entries).

``build_augmentations(specs, size, fill)`` -> the transforms of :mod:`retinanet.data.augment` and
:mod:`retinanet.data.mosaic`, in the listed order; :func:`retinanet.data.transforms.build_transforms`
puts them before the resize.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from retinanet.config.augment import parse_augment_list
from retinanet.data.augment import (
    DEFAULT_FILL,
    Fill,
    LargeScaleJitter,
    PhotometricDistortion,
    RandomExpand,
    RandomIoUCrop,
    RandomRotate90,
    RandomVerticalFlip,
    Target,
)
from retinanet.data.mosaic import Mosaic
from retinanet.data.transforms import RandomHorizontalFlip

__all__ = ["build_augmentations"]

Op = Callable[[Any, Target], tuple[Any, Target]]


def build_augmentations(
    specs: Sequence[Mapping[str, Any]],
    size: int,
    fill: Fill = DEFAULT_FILL,
) -> list[Op]:
    """The ops of a ``data.augment`` list, in order. ``size``: the output side of ``lsj`` and ``mosaic``
    when their ``size`` is null (the largest ``data.min_size``); ``fill``: their canvas colour and
    ``expand``'s when their ``fill`` is null (the model's ``pixel_mean`` in 0..255).
    Raises ConfigError (a ValueError) naming ``data.augment[i].<param>`` for a bad entry."""
    ops: list[Op] = []
    for name, q in parse_augment_list(list(specs)):
        col = tuple(q["fill"]) if q.get("fill") is not None else fill
        if name == "photometric":
            ops.append(PhotometricDistortion(q["p"], q["brightness"], q["contrast"], q["saturation"], q["hue"]))
        elif name == "random_crop":
            ops.append(
                RandomIoUCrop(
                    q["p"],
                    q["min_scale"],
                    q["max_scale"],
                    q["max_aspect"],
                    q["min_ious"],
                    q["min_visible"],
                    q["trials"],
                )
            )
        elif name == "expand":
            ops.append(RandomExpand(q["p"], q["ratio"], col))
        elif name == "lsj":
            ops.append(LargeScaleJitter(q["size"] or size, q["p"], q["scale"], q["min_visible"], col))
        elif name == "vflip":
            ops.append(RandomVerticalFlip(q["p"]))
        elif name == "hflip":
            ops.append(RandomHorizontalFlip(q["p"]))
        elif name == "rot90":
            ops.append(RandomRotate90(q["p"], q["k"]))
        elif name == "mosaic":
            ops.append(Mosaic(q["size"] or size, q["p"], q["center"], q["min_visible"], col))
        else:  # pragma: no cover - parse_augment_list knows every name
            raise AssertionError(name)
    return ops
