"""Parameters of the synthetic scenes: `SynthConfig`, the class names of each object source, errors.

A config describes one scene (sizes in pixels of the output image); `config_from_arguments` builds
and validates one from the keyword arguments of `make_synthetic_coco`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GENERATOR_VERSION",
    "DEFAULT_FASHION_MNIST_DIR",
    "SHAPE_CLASS_NAMES",
    "FASHION_MNIST_CLASS_NAMES",
    "MNIST_CLASS_NAMES",
    "SynthDataError",
    "ObjectSourceMissingError",
    "SynthConfig",
    "synth_class_names",
    "config_from_arguments",
]

#: version of the drawing code, recorded in the datasets; raised whenever the same parameters would
#: draw different scenes, so that `ensure_synthetic_coco` regenerates
GENERATOR_VERSION = 2
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

SHAPE_CLASS_NAMES: tuple[str, ...] = (
    "disc",
    "ring",
    "triangle",
    "square",
    "star",
    "cross",
    "crescent",
    "heart",
)
FASHION_MNIST_CLASS_NAMES: tuple[str, ...] = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
MNIST_CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
_OBJECT_SOURCES = ("shapes", "fashion-mnist", "mnist")


class SynthDataError(ValueError):
    """Bad argument to the synthetic-data generator (names the argument and value)."""


class ObjectSourceMissingError(FileNotFoundError, SynthDataError):
    """`objects="fashion-mnist"|"mnist"` was asked for but its files are not on this machine."""


def synth_class_names(objects: str = "shapes") -> list[str]:
    """Class names in contiguous-label order (COCO category id = index + 1)."""
    if objects == "shapes":
        return list(SHAPE_CLASS_NAMES)
    if objects == "fashion-mnist":
        return list(FASHION_MNIST_CLASS_NAMES)
    if objects == "mnist":
        return list(MNIST_CLASS_NAMES)
    raise SynthDataError(f"objects={objects!r}: expected one of {_OBJECT_SOURCES}")


@dataclass(frozen=True)
class SynthConfig:
    """How one scene is drawn. Sizes are in pixels of the output image.

    image_size: (H, W). objects_per_image / distractors_per_image: inclusive (lo, hi) counts
    (objects that cannot be placed without hiding others are skipped). min_size: smallest object
    side; max_size_frac: largest object side as a fraction of min(H, W); object sides are
    log-uniform in between. min_visible: fraction of its own pixels every annotated object keeps.
    clutter: background clutter strength (0 = plain gradient, 1 = default). augment: per-image
    blur / noise / brightness / contrast. objects: "shapes" | "fashion-mnist" | "mnist".
    classes: a subset of that source's class names (in the order given), None = all of them.
    """

    image_size: tuple[int, int] = (320, 320)
    objects_per_image: tuple[int, int] = (3, 12)
    min_size: float = 12.0
    max_size_frac: float = 0.6
    min_visible: float = 0.6
    distractors_per_image: tuple[int, int] = (2, 6)
    clutter: float = 1.0
    augment: bool = True
    objects: str = "shapes"
    classes: tuple[str, ...] | None = None

    def class_names(self) -> list[str]:
        """Names of the classes drawn, in contiguous-label order."""
        names = synth_class_names(self.objects)
        if self.classes is None:
            return names
        if isinstance(self.classes, str) or len(self.classes) == 0:
            raise SynthDataError(f"classes={self.classes!r}: expected a non-empty list of names")
        bad = [c for c in self.classes if c not in names]
        if bad or len(set(self.classes)) != len(self.classes):
            raise SynthDataError(
                f"classes={list(self.classes)!r}: unknown or repeated names {bad}; objects={self.objects!r} has {names}"
            )
        return list(self.classes)

    def validate(self) -> None:
        """Raise `SynthDataError` naming the first field out of range."""
        h, w = _pair(self.image_size, "image_size")
        if h < 32 or w < 32:
            raise SynthDataError(f"image_size={self.image_size!r}: both sides must be >= 32")
        for name in ("objects_per_image", "distractors_per_image"):
            lo, hi = _pair(getattr(self, name), name)
            if lo < 0 or hi < lo:
                raise SynthDataError(f"{name}={getattr(self, name)!r}: need 0 <= lo <= hi")
        if not 4 <= self.min_size <= self.max_size_frac * min(h, w):
            raise SynthDataError(
                f"min_size={self.min_size!r}: need 4 <= min_size <= max_size_frac * min(H, W) "
                f"= {self.max_size_frac * min(h, w):.1f}"
            )
        if not 0.0 < self.max_size_frac <= 0.95:
            raise SynthDataError(f"max_size_frac={self.max_size_frac!r}: need 0 < f <= 0.95")
        if not 0.0 <= self.min_visible <= 1.0:
            raise SynthDataError(f"min_visible={self.min_visible!r}: need 0 <= v <= 1")
        if self.clutter < 0:
            raise SynthDataError(f"clutter={self.clutter!r}: must be >= 0")
        self.class_names()


def config_from_arguments(a: Mapping[str, Any]) -> SynthConfig:
    """A validated `SynthConfig` from `make_synthetic_coco`'s keyword arguments (extra keys ignored)."""
    if a["objects"] not in _OBJECT_SOURCES:
        raise SynthDataError(f"objects={a['objects']!r}: expected one of {_OBJECT_SOURCES}")
    try:
        cfg = SynthConfig(
            image_size=_pair(a["image_size"], "image_size"),
            objects_per_image=_pair(a["objects_per_image"], "objects_per_image"),
            min_size=float(a["min_size"]),
            max_size_frac=float(a["max_size_frac"]),
            min_visible=float(a["min_visible"]),
            distractors_per_image=_pair(a["distractors_per_image"], "distractors_per_image"),
            clutter=float(a["clutter"]),
            augment=bool(a["augment"]),
            objects=a["objects"],
            classes=None if a["classes"] is None else tuple(a["classes"]),
        )
    except (TypeError, ValueError) as e:
        if isinstance(e, SynthDataError):
            raise
        raise SynthDataError(f"bad synthetic-data parameter: {e}") from None
    cfg.validate()
    return cfg


def _pair(v: Any, name: str) -> tuple[int, int]:
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise SynthDataError(f"{name}={v!r}: expected a pair of integers") from None
