"""Reading image files into RGB arrays: ``load_image(path) -> np.ndarray uint8 [H, W, 3]``, and
``read_image_size(path, source) -> (h, w)`` of the displayed image from the file header alone.

What it does to every file, so that boxes annotated on the *displayed* image stay right:

- EXIF orientation (tags 2..8) is applied: the array is the image as a viewer shows it.
- Every mode becomes 8-bit RGB: grayscale (``1``, ``L``) and palette (``P``) are expanded, CMYK and
  YCbCr are converted by Pillow, 16-bit grayscale (``I;16*``, ``I``) is *scaled* to 8 bit
  (``round(v * 255 / 65535)``, not clipped at 255), float (``F``) is read as 0-1 if its maximum is
  at most 1, else as 0-255.
- Transparency (``RGBA``, ``LA``, ``PA``, palette or grayscale with a transparent colour) is
  **composited on white**, as most viewers and annotation tools show it; fully opaque images keep
  their pixels unchanged.
- The file is fully decoded now, so a truncated or corrupt file fails here and not later.

Every failure is a :class:`~retinanet.data.errors.DataError` (a ``ValueError``) whose message starts
with the path: missing file, a folder, zero bytes, not an image, truncated or corrupt data, or more
pixels than the decompression-bomb limit. The limit is Pillow's ``PIL.Image.MAX_IMAGE_PIXELS``
(89,478,485 by default); here anything above it is an error (Pillow itself only warns up to twice
the limit). Change it with :func:`set_max_image_pixels` or the environment variable
``RETINANET_MAX_IMAGE_PIXELS`` (read at import, so DataLoader workers started with ``spawn`` see it;
``0`` or ``none`` disables the check).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from typing import Optional, Union, cast

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from retinanet.data.errors import DataError

__all__ = ["load_image", "read_image_size", "set_max_image_pixels", "get_max_image_pixels", "MAX_PIXELS_ENV"]

logger = logging.getLogger("retinanet.data")

MAX_PIXELS_ENV = "RETINANET_MAX_IMAGE_PIXELS"
_ORIENTATION = int(ExifTags.Base.Orientation)  # 0x0112
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

PathLike = Union[str, "os.PathLike[str]"]


def _parse_limit(value: str) -> Optional[int]:
    v = value.strip().lower()
    if v in ("", "0", "none", "off", "inf"):
        return None
    try:
        n = int(float(v))
    except ValueError:
        raise DataError(
            f"environment variable {MAX_PIXELS_ENV}={value!r}: expected a pixel count "
            "(e.g. 200000000) or 0/none to disable the decompression-bomb check"
        ) from None
    return n if n > 0 else None


def set_max_image_pixels(limit: Optional[int]) -> Optional[int]:
    """Set the decompression-bomb limit (pixels per image; ``None`` or 0 disables it).

    Sets ``PIL.Image.MAX_IMAGE_PIXELS`` and the ``RETINANET_MAX_IMAGE_PIXELS`` environment variable
    (so DataLoader workers started later inherit it). Returns the previous limit.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"set_max_image_pixels: limit must be an int or None, got {limit!r}")
    previous = get_max_image_pixels()
    new = limit if limit else None
    Image.MAX_IMAGE_PIXELS = new
    os.environ[MAX_PIXELS_ENV] = str(new or 0)
    return previous


def get_max_image_pixels() -> Optional[int]:
    """The current decompression-bomb limit in pixels (``None``: no limit)."""
    lim = Image.MAX_IMAGE_PIXELS
    return int(lim) if lim else None


if os.environ.get(MAX_PIXELS_ENV) is not None:
    Image.MAX_IMAGE_PIXELS = _parse_limit(os.environ[MAX_PIXELS_ENV])


def _bomb_error(path: str, exc: Exception) -> DataError:
    m = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
    limit = get_max_image_pixels()
    limit_text = f"{limit:,} pixels" if limit else "Pillow's"
    return DataError(
        f"{path}: image has {pixels}, over the decompression-bomb limit of {limit_text}. "
        "If you trust this file, raise the limit with retinanet.data.set_max_image_pixels(n) "
        f"or the environment variable {MAX_PIXELS_ENV}=n (0 disables the check)",
        path,
    )


def _sixteen_bit_to_uint8(a: np.ndarray) -> np.ndarray:
    """Gray 0..65535 (any int dtype) -> uint8 0..255 by round(v * 255 / 65535), values clipped to range."""
    v = np.clip(a, 0, 65535).astype(np.uint32)
    v *= 255
    v += 32767
    v //= 65535
    return v.astype(np.uint8)


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if a.size and float(a.max()) <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    """Any Pillow image -> writable uint8 [H, W, 3] RGB (see the module docstring for the rules)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return np.array(im)
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_sixteen_bit_to_uint8(np.asarray(im)))
    if mode == "F":
        return _gray_to_rgb(_float_to_uint8(np.asarray(im)))
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        if cast(tuple[int, int], rgba.getchannel("A").getextrema())[0] < 255:  # some transparency: composite on white
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgba = Image.alpha_composite(white, rgba)
        return np.array(rgba.convert("RGB"))
    return np.array(im.convert("RGB"))


def _exif_orientation(im: Image.Image, path: str) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception as e:  # corrupt EXIF block: show the pixels as stored, like most viewers
        logger.debug("%s: unreadable EXIF (%s); orientation ignored", path, e)
        return 1


def read_image_size(path: PathLike, source: str) -> tuple[int, int]:
    """``(h, w)`` of the displayed image from the file header, without decoding the pixels (EXIF
    rotations 5..8 swap the sides). For annotations that omit the size: ``source`` names the entry,
    and a file that cannot be opened raises :class:`DataError` starting with it."""
    p = os.fspath(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
            orientation = _exif_orientation(im, p)
    except Exception as e:
        raise DataError(f"{source}: the image size is not given and {p} cannot be opened ({e})", p) from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as the displayed image: ``np.ndarray`` uint8 ``[H, W, 3]`` RGB, writable.

    Raises :class:`DataError` naming ``path`` for a missing file, a folder, an empty file, a file
    that is not an image, a truncated or corrupt file, and an image over the pixel limit.
    """
    p = os.fspath(path)
    try:
        if os.path.isdir(p):
            raise DataError(f"{p}: is a folder, not an image file", p)
        size = os.path.getsize(p)
    except FileNotFoundError:
        raise DataError(f"{p}: image file not found", p) from None
    except OSError as e:
        raise DataError(f"{p}: cannot access image file ({e.strerror or e})", p) from None
    if size == 0:
        raise DataError(f"{p}: image file is empty (0 bytes)", p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                im.load()  # decode everything now: truncation and corruption surface here
                if _exif_orientation(im, p) != 1:
                    im = ImageOps.exif_transpose(im)
                arr = _to_rgb_array(im)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _bomb_error(p, e) from None
    except UnidentifiedImageError:
        raise DataError(f"{p}: not an image file Pillow can read ({size} bytes)", p) from None
    except MemoryError:
        raise
    except Exception as e:  # OSError (truncated), SyntaxError/ValueError (corrupt), EOFError, ...
        raise DataError(
            f"{p}: cannot decode image, the file is truncated or corrupt ({type(e).__name__}: {e})", p
        ) from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:  # pragma: no cover - defensive
        raise DataError(f"{p}: decoded to an unexpected array {arr.dtype} {arr.shape}", p)
    return arr
