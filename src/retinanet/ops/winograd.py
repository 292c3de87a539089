"""Winograd F(4x4, 3x3) convolution for inference on the CPU (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016).

A 3x3, stride-1, padding-1 convolution computes each 4x4 output tile from a 6x6 input tile. In the
Winograd domain this takes 36 multiplications per (tile, input channel, output channel) instead of
144, so the 256-channel head and FPN convolutions need 4x fewer multiply-adds; the rest is cheap
additions (the tile transforms). Three steps per block of tile rows:

1. input transform ``V = B^T d B`` for every 6x6 tile ``d`` (stride 4), written as ``[36, T, C_in]``;
2. 36 matrix products ``M[k] = V[k] @ U[k]`` with ``U = G w G^T`` from :func:`winograd_weights`;
3. output transform ``Y = A^T M A`` (+ bias) into the 4x4 output tiles.

Both transforms are separable (rows, then columns) and run as a few strided tensor additions; tile
rows are processed in blocks of about ``max_tiles`` tiles so the temporaries stay small.

Shapes: ``x [N, C_in, H, W]`` (any memory format) -> ``[N, C_out, H, W]`` in channels-last memory.
Numerics: float32 results differ from a direct convolution by a few 1e-6 of the output's magnitude
(direct float32 convolutions: a few 1e-7); bf16 is not supported (the transforms' constants up to 8 and
25-term sums need float32). Inference only: the transforms write into preallocated tensors, which
autograd does not track. Speed against oneDNN's direct convolution: ``benchmarks/bench_winograd.py``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["winograd_weights", "winograd_conv3x3", "winograd_applies"]

# F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2, inf: only G is needed as a matrix
# (weights are transformed once); B^T and A^T are written out in _bt / _at.
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)


def winograd_weights(weight: Tensor) -> Tensor:
    """3x3 kernels ``[C_out, C_in, 3, 3]`` -> Winograd-domain ``U [36, C_in, C_out]`` (``G w G^T``, computed
    in float64, returned in the weight's dtype)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weights: needs [C_out, C_in, 3, 3] kernels, got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ak,oikl,bl->abio", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def winograd_applies(x: Tensor, min_positions: int) -> bool:
    """True where :func:`winograd_conv3x3` is the faster, supported path for ``x``: a float32 CPU tensor
    outside autograd and autocast, with at least ``min_positions`` output positions (on small maps the
    transforms' per-op overhead costs more than the multiplications saved)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[-2] * x.shape[-1] >= min_positions
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch.is_autocast_enabled("cpu")
    )


def _bt(d: Sequence[Tensor], out: Union[Tensor, Sequence[Tensor]]) -> None:
    """``out = B^T d`` along one axis: 6 input slices -> 6 outputs (``out[i]``, written in place)."""
    d0, d1, d2, d3, d4, d5 = d
    p = torch.add(d4, d2, alpha=-4.0)  # d4 - 4 d2
    q = torch.add(d3, d1, alpha=-4.0)  # d3 - 4 d1
    s = torch.sub(d4, d2)
    u = torch.sub(d1, d3)
    torch.add(p, d0, alpha=4.0, out=out[0]).sub_(d2)  # 4 d0 - 5 d2 + d4
    torch.add(p, q, out=out[1])  # -4 d1 - 4 d2 + d3 + d4
    torch.sub(p, q, out=out[2])  # 4 d1 - 4 d2 - d3 + d4
    torch.add(s, u, alpha=-2.0, out=out[3])  # -2 d1 - d2 + 2 d3 + d4
    torch.add(s, u, alpha=2.0, out=out[4])  # 2 d1 - d2 - 2 d3 + d4
    torch.add(d5, d1, alpha=4.0, out=out[5]).sub_(d3, alpha=5.0)  # 4 d1 - 5 d3 + d5


def _at(m: Sequence[Tensor], out: Sequence[Tensor], bias: Optional[Tensor] = None) -> None:
    """``out = A^T m`` along one axis: 6 slices -> 4 outputs (written in place), plus ``bias``."""
    m0, m1, m2, m3, m4, m5 = m
    a, b = torch.add(m1, m2), torch.sub(m1, m2)
    c, d = torch.add(m3, m4), torch.sub(m3, m4)
    torch.add(a, c, out=out[0]).add_(m0)  # m0 + m1 + m2 + m3 + m4
    torch.add(b, d, alpha=2.0, out=out[1])  # m1 - m2 + 2 (m3 - m4)
    torch.add(a, c, alpha=4.0, out=out[2])  # m1 + m2 + 4 (m3 + m4)
    torch.add(b, d, alpha=8.0, out=out[3]).add_(m5)  # m1 - m2 + 8 (m3 - m4) + m5
    if bias is not None:
        for o in out:
            o.add_(bias)


@torch.no_grad()
def winograd_conv3x3(x: Tensor, u: Tensor, bias: Optional[Tensor] = None, max_tiles: int = 256) -> Tensor:
    """``conv2d(x, w, bias, stride=1, padding=1)`` through ``u = winograd_weights(w)``.

    ``x [N, C_in, H, W]``, ``u [36, C_in, C_out]``, ``bias [C_out]`` -> ``[N, C_out, H, W]`` (channels-last
    memory). ``max_tiles``: 4x4 tiles per block of tile rows (bounds the temporaries).
    """
    n, c, h, w = x.shape
    if u.dim() != 3 or u.shape[0] != 36 or u.shape[1] != c:
        raise ValueError(f"winograd_conv3x3: u must be [36, {c}, C_out], got {tuple(u.shape)}")
    th, tw = (h + 3) // 4, (w + 3) // 4
    c_out = u.shape[2]
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))  # [N, 4th+2, 4tw+2, C]
    y = x.new_empty(n, th, 4, tw, 4, c_out)
    step = max(1, max_tiles // (n * tw))
    for r0 in range(0, th, step):
        rows = min(step, th - r0)
        xs = xp[:, 4 * r0 : 4 * (r0 + rows) + 2]
        t1 = x.new_empty(6, n, rows, 4 * tw + 2, c)
        _bt([xs[:, k::4][:, :rows] for k in range(6)], t1)
        v = x.new_empty(6, 6, n, rows, tw, c)
        for a in range(6):
            _bt([t1[a][:, :, k::4][:, :, :tw] for k in range(6)], v[a])
        m = torch.bmm(v.view(36, n * rows * tw, c), u).view(6, 6, n, rows, tw, c_out)
        t2 = x.new_empty(4, 6, n, rows, tw, c_out)
        for b in range(6):
            _at([m[a, b] for a in range(6)], [t2[i, b] for i in range(4)])
        ys = y[:, r0 : r0 + rows]
        for i in range(4):
            _at([t2[i, b] for b in range(6)], [ys[:, :, i, :, j] for j in range(4)], bias)
    out = y.view(n, 4 * th, 4 * tw, c_out)
    if (4 * th, 4 * tw) != (h, w):
        out = out[:, :h, :w].contiguous()
    return out.permute(0, 3, 1, 2)
