"""Winograd F(4x4, 3x3) convolution on the CPU, for inference and training (Lavin & Gray, "Fast Algorithms for
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
25-term sums need float32). :func:`winograd_conv3x3` is for inference (the transforms write into
preallocated tensors, which autograd does not track); :func:`winograd_conv3x3_autograd` is the same
convolution for training, its input gradient a Winograd convolution too (kernels flipped and
transposed) and its weight gradient :func:`winograd_weight_grad`. Speed against oneDNN's direct
convolution: ``benchmarks/bench_winograd.py``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "winograd_weights",
    "winograd_conv3x3",
    "winograd_weight_grad",
    "winograd_conv3x3_autograd",
    "winograd_applies",
]

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


def _kron_g(dtype: torch.dtype, device: torch.device) -> Tensor:
    """``kron(G, G)`` ``[36, 9]``: row ``6a + b`` maps a flattened 3x3 kernel to ``(G w G^T)[a, b]``."""
    g = torch.tensor(_G, dtype=torch.float64)
    return torch.kron(g, g).to(dtype=dtype, device=device)


def winograd_weights(weight: Tensor) -> Tensor:
    """3x3 kernels ``[C_out, C_in, 3, 3]`` -> Winograd-domain ``U [36, C_in, C_out]`` (``G w G^T`` for every
    kernel, as one matrix product with ``kron(G, G)``, in the weight's dtype)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weights: needs [C_out, C_in, 3, 3] kernels, got {tuple(weight.shape)}")
    c_out, c_in = weight.shape[:2]
    w9 = weight.detach().permute(2, 3, 1, 0).reshape(9, c_in * c_out)  # [kh * 3 + kw, C_in * C_out]
    return torch.mm(_kron_g(weight.dtype, weight.device), w9).view(36, c_in, c_out)


def winograd_applies(x: Tensor, min_positions: int) -> bool:
    """True where Winograd is the faster, supported path for ``x``: a float32 CPU tensor outside autocast
    with at least ``min_positions`` output positions (on small maps the transforms' per-op overhead costs
    more than the multiplications saved)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.shape[-2] * x.shape[-1] >= min_positions
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


def _a_adjoint(g: Sequence[Tensor], out: Union[Tensor, Sequence[Tensor]]) -> None:
    """``out = A g`` along one axis (the adjoint of :func:`_at`): 4 slices -> 6 outputs (written in place)."""
    g0, g1, g2, g3 = g
    p, q = torch.add(g0, g2), torch.add(g1, g3)
    r, s = torch.add(g0, g2, alpha=4.0), torch.add(g1, g3, alpha=4.0)
    out[0].copy_(g0)
    torch.add(p, q, out=out[1])
    torch.sub(p, q, out=out[2])
    torch.add(r, s, alpha=2.0, out=out[3])  # g0 + 2 g1 + 4 g2 + 8 g3
    torch.add(r, s, alpha=-2.0, out=out[4])  # g0 - 2 g1 + 4 g2 - 8 g3
    out[5].copy_(g3)


def _padded_nhwc(x: Tensor) -> tuple[Tensor, int, int]:
    """``x [N, C, H, W]`` -> (zero-padded NHWC view ``[N, 4th+2, 4tw+2, C]``, th, tw): one pixel of
    padding before, enough after for whole 4x4 output tiles."""
    h, w = x.shape[-2:]
    th, tw = (h + 3) // 4, (w + 3) // 4
    return F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 4 * tw + 1 - w, 1, 4 * th + 1 - h)), th, tw


def _input_tiles(xp: Tensor, r0: int, rows: int, tw: int) -> Tensor:
    """``B^T d B`` of the 6x6 input tiles of tile rows ``r0 .. r0 + rows`` -> ``[36, N * rows * tw, C]``."""
    n, c = xp.shape[0], xp.shape[-1]
    xs = xp[:, 4 * r0 : 4 * (r0 + rows) + 2]
    t1 = xp.new_empty(6, n, rows, 4 * tw + 2, c)
    _bt([xs[:, k::4][:, :rows] for k in range(6)], t1)
    v = xp.new_empty(6, 6, n, rows, tw, c)
    for a in range(6):
        _bt([t1[a][:, :, k::4][:, :, :tw] for k in range(6)], v[a])
    return v.view(36, n * rows * tw, c)


def _row_blocks(n: int, th: int, tw: int, max_tiles: int) -> list[tuple[int, int]]:
    step = max(1, max_tiles // (n * tw))
    return [(r0, min(step, th - r0)) for r0 in range(0, th, step)]


@torch.no_grad()
def winograd_conv3x3(x: Tensor, u: Tensor, bias: Optional[Tensor] = None, max_tiles: int = 256) -> Tensor:
    """``conv2d(x, w, bias, stride=1, padding=1)`` through ``u = winograd_weights(w)``, outside autograd.

    ``x [N, C_in, H, W]``, ``u [36, C_in, C_out]``, ``bias [C_out]`` -> ``[N, C_out, H, W]`` (channels-last
    memory). ``max_tiles``: 4x4 tiles per block of tile rows (bounds the temporaries).
    """
    if u.dim() != 3 or u.shape[0] != 36 or u.shape[1] != x.shape[1]:
        raise ValueError(f"winograd_conv3x3: u must be [36, {x.shape[1]}, C_out], got {tuple(u.shape)}")
    xp, th, tw = _padded_nhwc(x)
    return _conv_padded(xp, x.shape[-2], x.shape[-1], u, bias, max_tiles)


def _conv_padded(xp: Tensor, h: int, w: int, u: Tensor, bias: Optional[Tensor], max_tiles: int) -> Tensor:
    n, th, tw = xp.shape[0], (h + 3) // 4, (w + 3) // 4
    c_out = u.shape[2]
    out = torch.empty(n, c_out, h, w, dtype=xp.dtype, device=xp.device, memory_format=torch.channels_last)
    whole = (4 * th, 4 * tw) == (h, w)
    y = out.permute(0, 2, 3, 1).view(n, th, 4, tw, 4, c_out) if whole else xp.new_empty(n, th, 4, tw, 4, c_out)
    for r0, rows in _row_blocks(n, th, tw, max_tiles):
        m = torch.bmm(_input_tiles(xp, r0, rows, tw), u).view(6, 6, n, rows, tw, c_out)
        t2 = xp.new_empty(4, 6, n, rows, tw, c_out)
        for b in range(6):
            _at([m[a, b] for a in range(6)], [t2[i, b] for i in range(4)])
        ys = y[:, r0 : r0 + rows]
        for i in range(4):
            _at([t2[i, b] for b in range(6)], [ys[:, :, i, :, j] for j in range(4)], bias)
    if not whole:
        out.permute(0, 2, 3, 1).copy_(y.view(n, 4 * th, 4 * tw, c_out)[:, :h, :w])
    return out


@torch.no_grad()
def winograd_weight_grad(x: Tensor, grad_out: Tensor, max_tiles: int = 256) -> Tensor:
    """The gradient of ``conv2d(x, w, stride=1, padding=1)`` with respect to ``w``, in the Winograd domain.

    ``x [N, C_in, H, W]``, ``grad_out [N, C_out, H, W]`` -> ``[C_out, C_in, 3, 3]``: per block of tile rows,
    ``dU[k] += V[k]^T @ dM[k]`` with ``V`` the input tiles (as in the forward) and ``dM = A dY A^T`` the
    output gradient's 4x4 tiles expanded to 6x6; then ``dw = G^T dU G``.
    """
    xp, _, _ = _padded_nhwc(x)
    gp, _, _ = _padded_nhwc(grad_out)
    return _weight_grad_padded(xp, gp, max_tiles)


def _weight_grad_padded(xp: Tensor, gp: Tensor, max_tiles: int) -> Tensor:
    """:func:`winograd_weight_grad` on the padded NHWC input and output gradient of :func:`_padded_nhwc`."""
    n, c, c_out = xp.shape[0], xp.shape[-1], gp.shape[-1]
    th, tw = (xp.shape[1] - 2) // 4, (xp.shape[2] - 2) // 4
    g6 = gp[:, 1 : 4 * th + 1, 1 : 4 * tw + 1].unflatten(2, (tw, 4)).unflatten(1, (th, 4))  # [N, th, 4, tw, 4, Co]
    du = xp.new_zeros(36, c, c_out)
    for r0, rows in _row_blocks(n, th, tw, max_tiles):
        g = g6[:, r0 : r0 + rows]
        t1 = xp.new_empty(6, n, rows, tw, 4, c_out)
        _a_adjoint([g[:, :, i] for i in range(4)], t1)
        dm = xp.new_empty(6, 6, n, rows, tw, c_out)
        for a in range(6):
            _a_adjoint([t1[a][..., j, :] for j in range(4)], dm[a])
        du.baddbmm_(_input_tiles(xp, r0, rows, tw).transpose(1, 2), dm.view(36, n * rows * tw, c_out))
    dw9 = torch.mm(_kron_g(xp.dtype, xp.device).t(), du.view(36, c * c_out))  # U = K w: dw = K^T dU
    return dw9.view(3, 3, c, c_out).permute(3, 2, 0, 1).contiguous()


_TRAIN_TILES = 512  # larger blocks than at inference: batches of several images


class _Winograd3x3(torch.autograd.Function):
    """``conv2d(x, w, b, padding=1)`` with all three products in the Winograd domain: forward, input gradient
    (the same convolution with the kernels flipped and transposed) and weight gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)  # x itself (the previous op's output, kept anyway), not a padded copy
        ctx.has_bias, ctx.hw = bias is not None, tuple(x.shape[-2:])
        xp, _, _ = _padded_nhwc(x)
        return _conv_padded(xp, x.shape[-2], x.shape[-1], winograd_weights(weight), bias, _TRAIN_TILES)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        x, weight = ctx.saved_tensors
        gp, _, _ = _padded_nhwc(grad_out)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            u_t = winograd_weights(weight.flip(-1, -2).transpose(0, 1))
            gx = _conv_padded(gp, ctx.hw[0], ctx.hw[1], u_t, None, _TRAIN_TILES)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad_padded(_padded_nhwc(x)[0], gp, _TRAIN_TILES)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum((0, 2, 3))
        return gx, gw, gb


def winograd_conv3x3_autograd(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """``conv2d(x, weight, bias, stride=1, padding=1)`` through Winograd, with gradients (for training):
    ``x [N, C_in, H, W]``, ``weight [C_out, C_in, 3, 3]`` -> ``[N, C_out, H, W]`` (channels-last memory)."""
    return _Winograd3x3.apply(x, weight, bias)
