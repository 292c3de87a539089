"""Anchor generator for the FPN levels P3..P7 (RetinaNet: 3 scales x 3 aspect ratios per position).

For level ``l`` with base ``size`` and ``stride``, ratio ``r = h / w`` and scale ``s``, the cell anchor is
centred on 0 with area ``(size * s) ** 2``: ``w = size * s / sqrt(r)``, ``h = size * s * sqrt(r)``, box
``(-w/2, -h/2, w/2, h/2)``. The ``A = len(ratios) * len(scales)`` cell anchors of a position are ordered
ratio outer, scale inner (torchvision's order). ``round_sizes=True`` reproduces torchvision's anchors
exactly: the scaled sizes are truncated to integers (32, 40, 50 for size 32) and the cell corners are
rounded to integers, in float32.

``AnchorGenerator(...)(feature_sizes=[(H3, W3), ..., (H7, W7)], device, dtype)`` returns one tensor
``[H * W * A, 4]`` (x1, y1, x2, y2 pixels) per level: the cell anchors shifted to
``(x * stride + offset * stride, y * stride + offset * stride)`` for positions in row-major ``(y, x)``
order, then the ``A`` anchors of each position. With ``strides_from_input=True`` (torchvision's rule) a
level's stride is not the configured one but ``input_size // feature_size`` per axis, from the padded input
``input_size=(Hp, Wp)`` passed with the call: ``800 // 13 = 61`` for P6 of an 800-pixel input.
:meth:`AnchorGenerator.flat` gives the levels concatenated ``[sum H * W * A, 4]`` (P3 first), the order of the
head's outputs.

Results are cached per ``(feature_sizes, strides, device, dtype)`` in a small LRU (``cache_size`` entries), so
repeated image sizes cost nothing and varying sizes don't grow memory. Cached tensors are shared
between calls: treat them as read-only (clone before modifying in place).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["AnchorGenerator", "grid_anchors"]

_FeatureSizes = Sequence[Sequence[int]]


def grid_anchors(cell: Tensor, stride_y: float, stride_x: float, offset: float, h: int, w: int) -> Tensor:
    """The ``A`` cell anchors ``[A, 4]`` shifted to every position of an ``h x w`` map with strides
    ``(stride_y, stride_x)``: ``[h * w * A, 4]`` in row-major ``(y, x)`` then anchor order, in ``cell``'s
    dtype (scriptable)."""
    shift_x = torch.arange(w, dtype=cell.dtype, device=cell.device) * stride_x + offset * stride_x
    shift_y = torch.arange(h, dtype=cell.dtype, device=cell.device) * stride_y + offset * stride_y
    sy, sx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = torch.stack((sx, sy, sx, sy), dim=-1).reshape(-1, 1, 4)
    return (shifts + cell.unsqueeze(0)).reshape(-1, 4)


class AnchorGenerator:
    """Anchors for each FPN level; see the module docstring for the formula and the order."""

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        strides: Sequence[float] = (8, 16, 32, 64, 128),
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
        round_sizes: bool = False,
        strides_from_input: bool = False,
        cache_size: int = 8,
    ) -> None:
        self.sizes = self._positive("sizes", sizes)
        self.strides = self._positive("strides", strides)
        self.scales = self._positive("scales", scales)
        self.ratios = self._positive("ratios", ratios)
        if len(self.sizes) != len(self.strides):
            raise ValueError(
                f"anchors.py: sizes and strides need one entry per level, got "
                f"{len(self.sizes)} sizes {self.sizes} and {len(self.strides)} strides {self.strides}"
            )
        offset = float(offset)
        if not math.isfinite(offset):
            raise ValueError(f"anchors.py: offset must be a finite number (fraction of the stride), got {offset}")
        if int(cache_size) < 0:
            raise ValueError(f"anchors.py: cache_size must be >= 0, got {cache_size}")
        self.offset = offset
        self.round_sizes = bool(round_sizes)
        self.strides_from_input = bool(strides_from_input)
        self.cache_size = int(cache_size)
        self.cell_anchors: list[Tensor] = [self._cell_anchors(s) for s in self.sizes]  # float64 [A, 4]
        self._cache: OrderedDict[tuple, tuple[list[Tensor], Optional[Tensor]]] = OrderedDict()

    @staticmethod
    def _positive(name: str, values: Sequence[float]) -> tuple[float, ...]:
        try:
            out = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise TypeError(f"anchors.py: {name} must be a sequence of numbers, got {values!r}") from None
        if not out or not all(math.isfinite(v) and v > 0 for v in out):
            raise ValueError(f"anchors.py: {name} must be a non-empty sequence of finite numbers > 0, got {values!r}")
        return out

    def __repr__(self) -> str:
        return (
            f"AnchorGenerator(sizes={self.sizes}, strides={self.strides}, scales={self.scales}, "
            f"ratios={self.ratios}, offset={self.offset}, round_sizes={self.round_sizes}, "
            f"strides_from_input={self.strides_from_input})"
        )

    @property
    def num_anchors(self) -> int:
        """``A``, the anchors per feature-map position (the same on every level)."""
        return len(self.scales) * len(self.ratios)

    @property
    def num_levels(self) -> int:
        """The number of pyramid levels (one size and one stride each)."""
        return len(self.sizes)

    def _cell_anchors(self, size: float) -> Tensor:
        if self.round_sizes:  # torchvision: int sizes, float32 arithmetic, rounded corners
            scaled = torch.tensor([float(int(size * s)) for s in self.scales], dtype=torch.float32)
            h_ratio = torch.sqrt(torch.tensor(self.ratios, dtype=torch.float32))
            w_ratio = 1 / h_ratio
            ws = (w_ratio[:, None] * scaled[None, :]).reshape(-1)
            hs = (h_ratio[:, None] * scaled[None, :]).reshape(-1)
            return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round().double()
        scaled = torch.tensor([size * s for s in self.scales], dtype=torch.float64)
        sqrt_r = torch.sqrt(torch.tensor(self.ratios, dtype=torch.float64))
        half_w = (scaled[None, :] / sqrt_r[:, None]).reshape(-1) / 2  # ratio outer, scale inner
        half_h = (scaled[None, :] * sqrt_r[:, None]).reshape(-1) / 2
        return torch.stack((-half_w, -half_h, half_w, half_h), dim=1)

    def num_anchors_per_level(self, feature_sizes: _FeatureSizes) -> list[int]:
        """``H * W * A`` for each level."""
        return [h * w * self.num_anchors for h, w in self._check_sizes(feature_sizes)]

    def _check_sizes(self, feature_sizes: _FeatureSizes) -> tuple[tuple[int, int], ...]:
        try:
            fs = tuple((int(h), int(w)) for h, w in feature_sizes)
            ok = all(h == hh and w == ww for (h, w), (hh, ww) in zip(fs, feature_sizes))
        except (TypeError, ValueError):
            fs, ok = (), False
        if not ok or any(h < 0 or w < 0 for h, w in fs):
            raise ValueError(
                f"anchors.py: feature_sizes must be a list of (H, W) pairs of ints >= 0, got {feature_sizes!r}"
            )
        if len(fs) != self.num_levels:
            raise ValueError(
                f"anchors.py: feature_sizes has {len(fs)} levels but the generator has "
                f"{self.num_levels} (strides {self.strides}); got {list(fs)}"
            )
        return fs

    def level_strides(
        self, feature_sizes: _FeatureSizes, input_size: Optional[Sequence[int]] = None
    ) -> list[tuple[float, float]]:
        """``(stride_y, stride_x)`` per level: the configured strides, or with ``strides_from_input``
        ``(Hp // H_l, Wp // W_l)`` of the padded ``input_size=(Hp, Wp)``."""
        fs = self._check_sizes(feature_sizes)
        if not self.strides_from_input:
            return [(s, s) for s in self.strides]
        if input_size is None:
            raise ValueError("anchors.py: strides_from_input=True needs the padded input_size=(H, W)")
        ih, iw = int(input_size[0]), int(input_size[1])
        return [(float(ih // max(h, 1)), float(iw // max(w, 1))) for h, w in fs]

    def _lookup(
        self,
        feature_sizes: _FeatureSizes,
        device: Union[str, torch.device, None],
        dtype: torch.dtype,
        input_size: Optional[Sequence[int]] = None,
    ) -> tuple[tuple, list[Tensor]]:
        fs = self._check_sizes(feature_sizes)
        strides = self.level_strides(fs, input_size)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"anchors.py: dtype must be a floating torch.dtype, got {dtype!r}")
        dev = torch.device("cpu") if device is None else torch.device(device)
        key = (fs, tuple(strides), str(dev), dtype)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return key, hit[0]
        levels = [
            grid_anchors(cell, sy, sx, self.offset, h, w).to(device=dev, dtype=dtype)
            for cell, (sy, sx), (h, w) in zip(self.cell_anchors, strides, fs)
        ]
        if self.cache_size > 0:
            self._cache[key] = (levels, None)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return key, levels

    def __call__(
        self,
        feature_sizes: _FeatureSizes,
        device: Union[str, torch.device, None] = None,
        dtype: torch.dtype = torch.float32,
        input_size: Optional[Sequence[int]] = None,
    ) -> list[Tensor]:
        """One ``[H * W * A, 4]`` tensor per level for ``feature_sizes = [(H, W), ...]`` (cached, read-only);
        ``input_size`` is the padded input ``(Hp, Wp)``, needed with ``strides_from_input``."""
        return list(self._lookup(feature_sizes, device, dtype, input_size)[1])

    def flat(
        self,
        feature_sizes: _FeatureSizes,
        device: Union[str, torch.device, None] = None,
        dtype: torch.dtype = torch.float32,
        input_size: Optional[Sequence[int]] = None,
    ) -> Tensor:
        """All levels concatenated, ``[sum H * W * A, 4]`` in P3..P7 order (cached, read-only)."""
        key, levels = self._lookup(feature_sizes, device, dtype, input_size)
        entry = self._cache.get(key)
        if entry is not None and entry[1] is not None:
            return entry[1]
        out = levels[0] if len(levels) == 1 else torch.cat(levels, dim=0)
        if entry is not None:
            self._cache[key] = (levels, out)
        return out

    def clear_cache(self) -> None:
        """Forget all cached anchors."""
        self._cache.clear()
