"""The detector's input step: batch, normalize and pad RGB images (scriptable and exportable).

- :func:`batch_images` ``(list of [3, h_i, w_i]) -> (images [B, 3, H, W], image_sizes [B, 2] int64)``:
  stacks images of different sizes at the top-left of a zero tensor of the largest size.
- :func:`normalize_and_pad` ``(images [B, 3, H, W] uint8 0-255 or float 0-1, image_sizes [B, 2] or None,
  mean [3, 1, 1], std [3, 1, 1], size_divisibility) -> [B, 3, Hp, Wp] float32``: ``(x - mean) / std``,
  then every pixel outside an image's ``(h, w)`` set to 0 and the batch zero-padded at the bottom/right
  to multiples of ``size_divisibility``, so the padding is 0 in normalized space whatever the input had.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["batch_images", "normalize_and_pad", "padded_size"]


def padded_size(x: int, size_divisibility: int) -> int:
    """``x`` rounded up to a multiple of ``size_divisibility`` (no rounding for 0 or 1)."""
    d = max(int(size_divisibility), 1)
    return (x + d - 1) // d * d


def batch_images(images: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """Stack ``[3, h, w]`` images (one dtype) into ``[B, 3, H, W]`` zeros and return their sizes."""
    if len(images) == 0:
        raise ValueError("images must be a [B, 3, H, W] tensor or a non-empty list of [3, H, W] tensors")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != 3:
            got = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"image {i} must be a [3, H, W] tensor (RGB, float 0-1 or uint8), got {got}")
    sizes: List[Tuple[int, int]] = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    first = images[0]
    if all(s == (h, w) for s in sizes) and all(im.dtype == first.dtype for im in images):
        out = torch.stack(list(images))
    else:
        same = all(im.dtype == first.dtype for im in images)
        out = first.new_zeros((len(sizes), 3, h, w), dtype=first.dtype if same else torch.float32)
        for i, img in enumerate(images):
            if not same and img.dtype == torch.uint8:  # mixed with float images: to 0-1 first
                img = img.to(torch.float32).div_(255.0)
            out[i, :, : sizes[i][0], : sizes[i][1]].copy_(img.to(out.device))
    return out, torch.tensor(sizes, dtype=torch.int64, device=out.device)


def normalize_and_pad(
    images: Tensor, image_sizes: Optional[Tensor], mean: Tensor, std: Tensor, size_divisibility: int
) -> Tensor:
    """Normalized, zero-padded float32 batch (see the module docstring)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError("images must be a [B, 3, H, W] RGB tensor (uint8 0-255 or float 0-1)")
    x = images.to(mean.device)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div_(255.0)
    else:
        x = x.to(torch.float32)
    x = (x - mean).div_(std)
    h, w = x.shape[-2], x.shape[-1]
    if image_sizes is not None:
        sizes = image_sizes.to(x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1) < sizes[:, 0].view(-1, 1, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w) < sizes[:, 1].view(-1, 1, 1)
        x = torch.where((rows & cols).unsqueeze(1), x, torch.zeros_like(x))
    ph, pw = padded_size(h, size_divisibility), padded_size(w, size_divisibility)
    if ph != h or pw != w:
        x = F.pad(x, (0, pw - w, 0, ph - h))
    return x
