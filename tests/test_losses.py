"""Tests for retinanet.losses: focal loss (dense and class-code targets), CE, smooth L1, L1, GIoU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import retinanet.losses.focal as focal
import retinanet.ops.focal_kernel as focal_kernel
from retinanet.losses import (
    giou_loss,
    l1_loss,
    sigmoid_cross_entropy_loss,
    sigmoid_focal_loss,
    smooth_l1_loss,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# helpers (independent reference implementations)
# ------------------------------------------------------------------------------------------------


def hand_focal(x: float, y: int, alpha: float, gamma: float) -> float:
    """The paper's formula with the math module."""
    p = 1.0 / (1.0 + math.exp(-x))
    p_t = p if y == 1 else 1.0 - p
    alpha_t = 1.0 if alpha < 0 else (alpha if y == 1 else 1.0 - alpha)
    return -alpha_t * (1.0 - p_t) ** gamma * math.log(p_t)


def naive_focal(x: torch.Tensor, y: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """torchvision-style formula in plain torch ops (per element)."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


def make_codes(shape: tuple[int, ...], k: int, seed: int = 0) -> torch.Tensor:
    """Class codes with positives, background (-1) and ignored (-2) rows."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, k, shape, generator=g)
    r = torch.rand(shape, generator=g)
    codes[r < 0.5] = -1
    codes[r < 0.2] = -2
    return codes


def one_hot(codes: torch.Tensor, k: int, dtype=torch.float64) -> torch.Tensor:
    return F.one_hot(codes.clamp(min=0), k).to(dtype) * (codes >= 0).unsqueeze(-1).to(dtype)


@pytest.fixture
def small_chunks(monkeypatch):
    """Force many chunks (2 rows of K=5) so chunk-boundary bookkeeping is exercised."""
    monkeypatch.setattr(focal_kernel, "_CPU_CHUNK_ELEMS", 10)
    monkeypatch.setattr(focal, "_TARGET_SCAN_CHUNK", 10)


# ------------------------------------------------------------------------------------------------
# focal loss: known values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x,y,alpha,gamma",
    [
        (0.5, 1, 0.25, 2.0),
        (-1.2, 0, 0.25, 2.0),
        (2.0, 0, -1.0, 0.5),
        (3.0, 1, 0.75, 0.0),
        (-4.0, 1, 0.25, 5.0),
        (1.7, 0, 0.9, 1.0),
    ],
)
def test_focal_hand_values(x, y, alpha, gamma):
    want = hand_focal(x, y, alpha, gamma)
    logits = torch.tensor([[x, -x]], dtype=torch.float64)
    dense = torch.tensor([[float(y), 0.0]], dtype=torch.float64)
    got = sigmoid_focal_loss(logits, dense, alpha=alpha, gamma=gamma)
    assert got[0, 0].item() == pytest.approx(want, rel=1e-12)
    assert got[0, 1].item() == pytest.approx(hand_focal(-x, 0, alpha, gamma), rel=1e-12)
    # class codes: y == 1 -> class 0, y == 0 -> background
    codes = torch.tensor([0 if y == 1 else -1])
    got_c = sigmoid_focal_loss(logits, codes, alpha=alpha, gamma=gamma)
    assert got_c[0, 0].item() == pytest.approx(want, rel=1e-12)
    # float32 path agrees to float32 precision
    got32 = sigmoid_focal_loss(logits.float(), codes, alpha=alpha, gamma=gamma)
    assert got32.dtype == torch.float32
    assert got32[0, 0].item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("p_t", [0.9, 0.968])
def test_focal_vs_ce_ratio(p_t):
    # positive example with probability p_t: logit = log(p_t / (1 - p_t))
    x = math.log(p_t / (1 - p_t))
    logits = torch.tensor([[x]], dtype=torch.float64)
    codes = torch.tensor([0])
    fl = sigmoid_focal_loss(logits, codes, alpha=0.25, gamma=2.0, reduction="sum").item()
    ce = sigmoid_focal_loss(logits, codes, alpha=0.25, gamma=0.0, reduction="sum").item()
    assert ce / fl == pytest.approx(1.0 / (1.0 - p_t) ** 2, rel=1e-9)
    if p_t == 0.9:
        assert ce / fl == pytest.approx(100.0, rel=1e-9)
    else:
        assert 950 < ce / fl < 1000  # "~1000x" in the paper


@pytest.mark.parametrize("alpha", [0.25, 0.75, 0.5])
def test_gamma0_is_alpha_balanced_bce(alpha):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 6, generator=g, dtype=torch.float64) * 3
    y = (torch.rand(7, 6, generator=g) < 0.3).double()
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    got = sigmoid_focal_loss(x, y, alpha=alpha, gamma=0.0)
    torch.testing.assert_close(got, alpha_t * bce, rtol=1e-12, atol=1e-14)
    got_ce = sigmoid_cross_entropy_loss(x, y, alpha=alpha)
    torch.testing.assert_close(got_ce, alpha_t * bce, rtol=1e-12, atol=1e-14)


def test_alpha_negative_is_plain_bce():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64) * 4
    codes = torch.tensor([0, -1, 3, 2, -1])
    y = one_hot(codes, 4)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha=-1, gamma=0), bce)
    torch.testing.assert_close(sigmoid_focal_loss(x, codes, alpha=-1, gamma=0), bce)
    torch.testing.assert_close(sigmoid_cross_entropy_loss(x, codes), bce)
    # and alpha-balancing really changes things
    assert not torch.allclose(sigmoid_focal_loss(x, y, alpha=0.25, gamma=0), bce)


# ------------------------------------------------------------------------------------------------
# focal loss: agreement with the naive formula, codes vs dense, gradients
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.25, 1.0])
def test_codes_dense_naive_agree(gamma, alpha, small_chunks):
    k = 5
    g = torch.Generator().manual_seed(3)
    codes = make_codes((3, 9), k)
    x = (torch.randn(3, 9, k, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = one_hot(codes, k)
    keep = (codes != -2).unsqueeze(-1).double()
    ref = naive_focal(x, y, alpha, gamma) * keep
    (g_ref,) = torch.autograd.grad(ref.sum(), x)

    got_c = sigmoid_focal_loss(x, codes, alpha=alpha, gamma=gamma, reduction="none")
    torch.testing.assert_close(got_c, ref, rtol=1e-10, atol=1e-12)
    assert (got_c.detach()[codes == -2] == 0).all()
    s = sigmoid_focal_loss(x, codes, alpha=alpha, gamma=gamma, reduction="sum")
    (g_c,) = torch.autograd.grad(s, x)
    torch.testing.assert_close(s, ref.sum(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_c, g_ref, rtol=1e-10, atol=1e-12)
    assert (g_c[codes == -2] == 0).all()

    # dense one-hot path: same as codes on the non-ignored rows
    d = sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction="none")
    torch.testing.assert_close(d * keep, ref, rtol=1e-10, atol=1e-12)
    (g_d,) = torch.autograd.grad((d * keep).sum(), x)
    torch.testing.assert_close(g_d, g_c, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [-1.0, 0.25, 0.75])
@pytest.mark.parametrize("reduction", ["sum", "none", "mean"])
def test_gradcheck(gamma, alpha, reduction, small_chunks):
    k = 5
    g = torch.Generator().manual_seed(4)
    codes = make_codes((2, 3), k, seed=5)
    codes[0, 0] = 4
    codes[1, 2] = -2
    y = one_hot(codes, k)
    x = (torch.rand(2, 3, k, generator=g, dtype=torch.float64) * 6 - 3).requires_grad_()

    def f_codes(t):
        return sigmoid_focal_loss(t, codes, alpha=alpha, gamma=gamma, reduction=reduction)

    def f_dense(t):
        return sigmoid_focal_loss(t, y, alpha=alpha, gamma=gamma, reduction=reduction)

    assert torch.autograd.gradcheck(f_codes, (x,))
    assert torch.autograd.gradcheck(f_dense, (x,))


def test_many_chunks_float32_matches_float64():
    k = 80
    codes = make_codes((2, 5000), k, seed=6)
    g = torch.Generator().manual_seed(7)
    x64 = torch.randn(2, 5000, k, generator=g, dtype=torch.float64) * 2 - 4.6
    ref = (naive_focal(x64, one_hot(codes, k), 0.25, 2.0) * (codes != -2).unsqueeze(-1)).sum()
    x32 = x64.float().requires_grad_()
    got = sigmoid_focal_loss(x32, codes, reduction="sum")
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    got.backward()
    x64r = x64.clone().requires_grad_()
    (naive_focal(x64r, one_hot(codes, k), 0.25, 2.0) * (codes != -2).unsqueeze(-1)).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64r.grad, rtol=1e-4, atol=1e-7)


def test_soft_targets_follow_fvcore_formula():
    g = torch.Generator().manual_seed(8)
    x = (torch.randn(4, 3, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.rand(4, 3, generator=g, dtype=torch.float64)
    got = sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0)
    torch.testing.assert_close(got, naive_focal(x, y, 0.25, 2.0))
    assert torch.autograd.gradcheck(lambda t: sigmoid_focal_loss(t, y, reduction="sum"), (x,))


def test_dense_targets_bool_and_int():
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.zeros(6, 4)
    y[1, 2] = 1
    y[4, 0] = 1
    ref = sigmoid_focal_loss(x, y.double())
    torch.testing.assert_close(sigmoid_focal_loss(x, y.bool()), ref)
    torch.testing.assert_close(sigmoid_focal_loss(x, y.long()), ref)


# ------------------------------------------------------------------------------------------------
# focal loss: numerics, dtypes, reductions, shapes, empties
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_finite(gamma, dtype):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0]], dtype=dtype, requires_grad=True)
    codes = torch.tensor([1, 1])  # row 0: the positive is at -1e4 (wrong); row 1: at +1e4 (right)
    for targets in (codes, one_hot(codes, 3, dtype)):
        x.grad = None
        loss = sigmoid_focal_loss(x, targets, alpha=0.25, gamma=gamma, reduction="none")
        assert torch.isfinite(loss).all()
        loss.sum().backward()
        assert torch.isfinite(x.grad).all()
        # confidently wrong: negative at +1e4 costs (1 - alpha) * 1e4, positive at -1e4 alpha * 1e4
        assert loss[0, 0].item() == pytest.approx(0.75 * 1e4, rel=1e-6)
        assert loss[0, 1].item() == pytest.approx(0.25 * 1e4, rel=1e-6)
        assert x.grad[0, 0].item() == pytest.approx(0.75, rel=1e-6)
        assert x.grad[0, 1].item() == pytest.approx(-0.25, rel=1e-6)
        # confidently right: zero loss
        assert loss[1, 0].item() == 0.0 and loss[1, 1].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("codes_path", [True, False])
def test_half_inputs_give_float32_answer(dtype, codes_path, small_chunks):
    k = 5
    codes = make_codes((4, 6), k, seed=9)
    g = torch.Generator().manual_seed(10)
    xh = (torch.randn(4, 6, k, generator=g) * 3).to(dtype).requires_grad_()
    x32 = xh.detach().float().requires_grad_()
    targets = codes if codes_path else one_hot(codes, k, torch.float32)
    lh = sigmoid_focal_loss(xh, targets, reduction="sum")
    l32 = sigmoid_focal_loss(x32, targets, reduction="sum")
    assert lh.dtype == torch.float32
    assert lh.item() == pytest.approx(l32.item(), rel=1e-6)
    lh.backward()
    l32.backward()
    assert xh.grad.dtype == dtype
    torch.testing.assert_close(xh.grad.float(), x32.grad, rtol=1e-2, atol=1e-3)
    none = sigmoid_focal_loss(xh, targets, reduction="none")
    assert none.dtype == torch.float32 and none.shape == xh.shape


def test_reductions_and_shapes():
    k = 4
    codes = make_codes((2, 7), k, seed=11)
    x = torch.randn(2, 7, k, dtype=torch.float64)
    none = sigmoid_focal_loss(x, codes, reduction="none")
    assert none.shape == (2, 7, k)
    s = sigmoid_focal_loss(x, codes, reduction="sum")
    assert s.shape == ()
    torch.testing.assert_close(s, none.sum())
    n_valid = int((codes != -2).sum())
    torch.testing.assert_close(sigmoid_focal_loss(x, codes, reduction="mean"), none.sum() / (n_valid * k))
    # [N, K] flattening gives the same numbers as [B, N, K]
    flat = sigmoid_focal_loss(x.reshape(-1, k), codes.reshape(-1), reduction="none")
    torch.testing.assert_close(flat, none.reshape(-1, k))
    # dense mean is over all elements
    y = one_hot(codes, k)
    dn = sigmoid_focal_loss(x, y, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, y, reduction="mean"), dn.mean())
    torch.testing.assert_close(sigmoid_focal_loss(x, y, reduction="sum"), dn.sum())


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_empty_inputs(reduction):
    for shape in [(0, 80), (2, 0, 80)]:
        x = torch.randn(shape, requires_grad=True)
        for targets in (torch.zeros(shape[:-1], dtype=torch.long), torch.zeros(shape)):
            loss = sigmoid_focal_loss(x, targets, reduction=reduction)
            if reduction == "none":
                assert loss.shape == shape
            else:
                assert loss.item() == 0.0
            loss.sum().backward()
            assert x.grad.shape == shape and not torch.isnan(x.grad).any()
            x.grad = None
    # every row ignored: mean is 0, not NaN
    x = torch.randn(3, 5, requires_grad=True)
    loss = sigmoid_focal_loss(x, torch.full((3,), -2), reduction=reduction)
    assert not torch.isnan(loss).any() and loss.detach().sum().item() == 0.0


def test_gradient_scaled_by_upstream_and_retain_graph():
    k = 5
    codes = make_codes((10,), k, seed=12)
    x = torch.randn(10, k, dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad(sigmoid_focal_loss(x, codes, reduction="sum"), x)
    loss = sigmoid_focal_loss(x, codes, reduction="sum")
    (3.0 * loss).backward(retain_graph=True)
    torch.testing.assert_close(x.grad, 3.0 * g1)
    loss.backward()  # second backward through the same graph recomputes the gradient
    torch.testing.assert_close(x.grad, 4.0 * g1)


def test_gradient_buffer_never_overwritten_while_in_use():
    """The gradient buffer kept between calls must not clobber a gradient someone still holds."""
    k = 6
    codes = make_codes((50,), k, seed=13)
    xa = torch.randn(50, k, requires_grad=True)
    xb = torch.randn(50, k, requires_grad=True)
    (ga,) = torch.autograd.grad(sigmoid_focal_loss(xa, codes, reduction="sum"), xa)
    (gb,) = torch.autograd.grad(sigmoid_focal_loss(xb, codes, reduction="sum"), xb)
    ga_copy = ga.clone()
    assert not torch.equal(ga, gb)
    # held gradient survives further calls
    for _ in range(2):
        torch.autograd.grad(sigmoid_focal_loss(xb, codes, reduction="sum"), xb)
    torch.testing.assert_close(ga, ga_copy, rtol=0, atol=0)
    # two forwards before one backward (e.g. two losses on shared logits)
    y = xa * 1.0
    total = sigmoid_focal_loss(y, codes, reduction="sum") + sigmoid_focal_loss(y, codes, reduction="sum")
    (g2,) = torch.autograd.grad(total, xa)
    torch.testing.assert_close(g2, 2.0 * ga_copy)
    # gradient accumulation into .grad over two iterations
    xa.grad = None
    sigmoid_focal_loss(xa, codes, reduction="sum").backward()
    sigmoid_focal_loss(xa, codes, reduction="sum").backward()
    torch.testing.assert_close(xa.grad, 2.0 * ga_copy)


def test_no_grad_forward_matches():
    codes = make_codes((30,), 4, seed=14)
    x = torch.randn(30, 4, requires_grad=True)
    with_grad = sigmoid_focal_loss(x, codes, reduction="sum")
    with torch.no_grad():
        no_grad = sigmoid_focal_loss(x, codes, reduction="sum")
    assert not no_grad.requires_grad
    assert with_grad.item() == pytest.approx(no_grad.item(), rel=1e-6)


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="found 3"):
        sigmoid_focal_loss(x, torch.tensor([0, 1, 3, -1]))
    with pytest.raises(ValueError, match="found -3"):
        sigmoid_focal_loss(x, torch.tensor([0, 1, -3, -1]))
    with pytest.raises(TypeError, match="integer"):
        sigmoid_focal_loss(x, torch.tensor([0.0, 1.0, 2.0, -1.0]))
    with pytest.raises(ValueError, match="matches neither"):
        sigmoid_focal_loss(x, torch.zeros(4, 2))
    with pytest.raises(TypeError, match="floating-point"):
        sigmoid_focal_loss(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, torch.zeros(4, 3), reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        sigmoid_focal_loss(x, torch.zeros(4, 3), alpha=1.5)
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x, torch.zeros(4, 3), gamma=-1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sigmoid_focal_loss(x, torch.full((4, 3), 2.0))
    with pytest.raises(ValueError, match="shape"):
        giou_loss(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        giou_loss(torch.zeros(3, 5), torch.zeros(3, 5))


# ------------------------------------------------------------------------------------------------
# box losses
# ------------------------------------------------------------------------------------------------


def test_smooth_l1_hand_values():
    inp = torch.tensor([0.05, 0.3, -0.3, 0.0, 1.0], dtype=torch.float64)
    tgt = torch.zeros(5, dtype=torch.float64)
    beta = 0.1
    want = [0.5 * 0.05**2 / beta, 0.3 - 0.5 * beta, 0.3 - 0.5 * beta, 0.0, 1.0 - 0.5 * beta]
    got = smooth_l1_loss(inp, tgt, beta=beta)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert smooth_l1_loss(inp, tgt, beta=beta, reduction="sum").item() == pytest.approx(sum(want))
    assert smooth_l1_loss(inp, tgt, beta=beta, reduction="mean").item() == pytest.approx(sum(want) / 5)
    # continuity at |d| == beta
    at = smooth_l1_loss(
        torch.tensor([beta - 1e-9, beta + 1e-9], dtype=torch.float64), torch.zeros(2, dtype=torch.float64), beta=beta
    )
    assert at[0].item() == pytest.approx(at[1].item(), abs=1e-8)


@pytest.mark.parametrize("beta", [0.0, 1e-6])
def test_smooth_l1_tiny_beta_is_l1(beta):
    g = torch.Generator().manual_seed(15)
    inp = torch.randn(6, 4, generator=g, requires_grad=True)
    tgt = torch.randn(6, 4, generator=g)
    inp.data[0, 0] = tgt[0, 0]  # d == 0 exactly: no 0/0
    got = smooth_l1_loss(inp, tgt, beta=beta)
    torch.testing.assert_close(got, (inp - tgt).abs())
    torch.testing.assert_close(got, l1_loss(inp, tgt))
    got.sum().backward()
    assert torch.isfinite(inp.grad).all()
    assert l1_loss(inp, tgt, reduction="sum").item() == pytest.approx((inp - tgt).abs().sum().item(), rel=1e-6)


def test_giou_known_values():
    pred = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0], [10.0, 20.0, 30.0, 60.0]],
        dtype=torch.float64,
    )
    tgt = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0], [10.0, 20.0, 30.0, 60.0]],
        dtype=torch.float64,
    )
    got = giou_loss(pred, tgt, eps=0.0)
    assert got[0].item() == pytest.approx(0.0, abs=1e-12)
    # disjoint: IoU 0, union 2, enclosing 3 x 3 = 9 -> GIoU = -7/9 -> loss 1 + 7/9 > 1
    assert got[1].item() == pytest.approx(1.0 + 7.0 / 9.0, rel=1e-12)
    assert got[1].item() > 1.0
    # partial: intersection 1, union 4 + 4 - 1 = 7, enclosing 9 -> GIoU = 1/7 - 2/9
    assert got[2].item() == pytest.approx(1.0 - (1.0 / 7.0 - 2.0 / 9.0), rel=1e-12)
    assert got[3].item() == pytest.approx(0.0, abs=1e-12)
    # batched [B, N, 4] and reductions
    b = giou_loss(pred.view(2, 2, 4), tgt.view(2, 2, 4), eps=0.0)
    assert b.shape == (2, 2)
    assert giou_loss(pred, tgt, reduction="sum", eps=0.0).item() == pytest.approx(got.sum().item())
    assert giou_loss(pred[:0], tgt[:0], reduction="mean").item() == 0.0
    # gradient is finite, default eps
    p = pred.clone().requires_grad_()
    giou_loss(p, tgt, reduction="sum").backward()
    assert torch.isfinite(p.grad).all()
