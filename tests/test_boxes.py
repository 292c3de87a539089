"""Tests for retinanet.ops boxes, box_coder and nms: area, IoU, clipping, BoxCoder and (batched) NMS against
brute force."""

from __future__ import annotations

import importlib
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retinanet.ops import BoxCoder, box_area, box_iou, clip_boxes, remove_small_boxes
from retinanet.ops.nms import batched_nms, nms

NMS = importlib.import_module("retinanet.ops.nms")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


coord = st.floats(min_value=-500, max_value=500, allow_nan=False, width=32)
size = st.floats(min_value=0, max_value=300, allow_nan=False, width=32)
pos_size = st.floats(min_value=0.5, max_value=300, allow_nan=False, width=32)


def _box(x, y, w, h):
    return [x, y, x + w, y + h]


boxes_st = st.lists(st.builds(_box, coord, coord, size, size), min_size=0, max_size=12).map(
    lambda v: torch.tensor(v, dtype=torch.float32).reshape(-1, 4)
)


# ----------------------------------------------------------------------------------------------
# area and IoU
def test_box_area_known_and_degenerate():
    b = torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 3.0, 2.0, 9.0], [5.0, 5.0, 1.0, 9.0]])
    assert box_area(b).tolist() == [50.0, 0.0, 0.0]  # zero width; negative width counts as 0
    assert box_area(torch.zeros(2, 3, 4)).shape == (2, 3)


def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor(
        [
            [5.0, 5.0, 15.0, 15.0],  # inter 25, union 175 -> 1/7
            [0.0, 0.0, 10.0, 20.0],  # inter 100, union 200 -> 0.5
            [0.0, 0.0, 10.0, 10.0],  # identical -> 1
            [10.0, 0.0, 20.0, 10.0],  # touching edge -> 0
            [30.0, 30.0, 40.0, 40.0],  # disjoint -> 0
            [2.0, 2.0, 4.0, 4.0],  # inside: 4 / 100
        ]
    )
    iou = box_iou(a, b)
    assert iou.shape == (1, 6) and iou.dtype == torch.float32
    expected = torch.tensor([[1 / 7, 0.5, 1.0, 0.0, 0.0, 0.04]])
    torch.testing.assert_close(iou, expected, rtol=1e-6, atol=0)
    assert iou[0, 2].item() == 1.0 and iou[0, 1].item() == 0.5


def test_box_iou_zero_area_no_nan():
    pts = torch.tensor([[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 10.0]])
    big = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    iou = box_iou(torch.cat([pts, big]), torch.cat([pts, big]))
    assert not torch.isnan(iou).any()
    assert iou[:3, :3].eq(0).all()  # zero-area pairs (empty union) -> 0
    assert iou[3, :3].eq(0).all() and iou[3, 3] == 1


def test_box_iou_shapes_dtypes_and_errors():
    assert box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    h = box_iou(torch.tensor([[0, 0, 4, 4]], dtype=torch.float16), torch.tensor([[0, 0, 4, 2]], dtype=torch.float16))
    assert h.dtype == torch.float32 and h.item() == 0.5
    assert box_iou(torch.tensor([[0, 0, 4, 4]]), torch.tensor([[0, 0, 2, 4]])).item() == 0.5  # int input
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="boxes1"):
        box_iou([[0, 0, 1, 1]], torch.zeros(1, 4))


def test_box_iou_differentiable():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]], requires_grad=True)
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0]])
    box_iou(a, b).sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


@settings(max_examples=60, deadline=None)
@given(boxes_st, boxes_st)
def test_box_iou_symmetric_and_bounded(a, b):
    ab, ba = box_iou(a, b), box_iou(b, a)
    assert torch.equal(ab, ba.t())
    assert not torch.isnan(ab).any()
    assert ((ab >= 0) & (ab <= 1)).all()
    if a.shape[0]:
        self_iou = box_iou(a, a).diagonal()
        area = box_area(a)
        normal = area >= torch.finfo(torch.float32).tiny  # documented: smaller unions are floored there
        assert (self_iou[normal] == 1).all() and (self_iou[area == 0] == 0).all()


# ----------------------------------------------------------------------------------------------
# clip and small boxes
def test_clip_boxes_scalar_and_per_image():
    b = torch.tensor([[-5.0, -2.0, 50.0, 30.0], [1.0, 2.0, 3.0, 4.0]])
    assert clip_boxes(b, (20, 40)).tolist() == [[0.0, 0.0, 40.0, 20.0], [1.0, 2.0, 3.0, 4.0]]
    batch = torch.tensor([[[-1.0, -1.0, 100.0, 100.0]], [[-1.0, -1.0, 100.0, 100.0]]])  # [2, 1, 4]
    sizes = torch.tensor([[10.0, 20.0], [30.0, 40.0]])  # (h, w) per image
    out = clip_boxes(batch, sizes)
    assert out.tolist() == [[[0.0, 0.0, 20.0, 10.0]], [[0.0, 0.0, 40.0, 30.0]]]
    assert torch.equal(clip_boxes(batch, [(10, 20), (30, 40)]), out)  # sequence of sizes
    per_box = clip_boxes(b, torch.tensor([[10.0, 10.0], [3.0, 2.0]]))
    assert per_box.tolist() == [[0.0, 0.0, 10.0, 10.0], [1.0, 2.0, 2.0, 3.0]]
    assert b[0, 0] == -5.0  # input untouched
    with pytest.raises(ValueError, match="size"):
        clip_boxes(b, (10, 20, 30))
    with pytest.raises(ValueError, match=">= 0"):
        clip_boxes(b, (-1, 5))


@settings(max_examples=40, deadline=None)
@given(boxes_st, st.integers(1, 800), st.integers(1, 800))
def test_clip_boxes_in_range(b, h, w):
    out = clip_boxes(b, (h, w))
    assert out.shape == b.shape
    assert (out[:, 0::2] >= 0).all() and (out[:, 0::2] <= w).all()
    assert (out[:, 1::2] >= 0).all() and (out[:, 1::2] <= h).all()
    inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)
    assert torch.equal(out[inside], b[inside])


def test_remove_small_boxes():
    b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 1.9, 10], [0, 0, 10, 2], [5, 5, 4, 9]])
    keep = remove_small_boxes(b, 2.0)
    assert keep.dtype == torch.int64 and keep.tolist() == [0, 2]


# ----------------------------------------------------------------------------------------------
# box coder
def test_encode_known_values_and_weights():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 25.0, 15.0]])  # centre (15, 10), size 20 x 10; anchor centre (5, 5)
    d = BoxCoder().encode(gt, anchor)
    torch.testing.assert_close(d, torch.tensor([[1.0, 0.5, math.log(2.0), 0.0]]))
    dw = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(gt, anchor)
    torch.testing.assert_close(dw, torch.tensor([[10.0, 5.0, 5 * math.log(2.0), 0.0]]))
    torch.testing.assert_close(BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).decode(dw, anchor), gt)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(coord, coord, pos_size, pos_size, coord, coord, pos_size, pos_size), min_size=1, max_size=8),
    st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_encode_decode_round_trip(rows, weights):
    gt = torch.tensor([_box(*r[:4]) for r in rows])
    an = torch.tensor([_box(*r[4:]) for r in rows])
    coder = BoxCoder(weights=weights, scale_clamp=math.inf)
    back = coder.decode(coder.encode(gt, an), an)
    torch.testing.assert_close(back, gt, rtol=1e-5, atol=2e-3)


def test_decode_clamps_scale():
    coder = BoxCoder()
    limit = math.exp(coder.scale_clamp)  # 62.5
    an = torch.tensor([[-8.0, -4.0, 8.0, 4.0], [100.0, 50.0, 132.0, 114.0]])  # first centred on 0
    d = torch.tensor([[0.0, 0.0, 1e4, 50.0], [0.3, -0.2, 1e4, 1e4]])
    out = coder.decode(d, an)
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    clamp32 = torch.exp(torch.tensor(coder.scale_clamp, dtype=torch.float32))
    assert w[0].item() == (clamp32 * 16).item() and h[0].item() == (clamp32 * 8).item()  # exact
    torch.testing.assert_close(w[1], torch.tensor(limit * 32), rtol=1e-6, atol=0)
    torch.testing.assert_close(h[1], torch.tensor(limit * 64), rtol=1e-6, atol=0)
    tiny = coder.decode(torch.tensor([[0.0, 0.0, -1e4, -1e4]]), an[:1])
    assert torch.isfinite(tiny).all() and (tiny[0, 2] - tiny[0, 0]).item() == 0.0


def test_decode_broadcast_half_and_grad():
    g = torch.Generator().manual_seed(0)
    an = torch.rand(7, 2, generator=g) * 100
    an = torch.cat([an, an + 5 + torch.rand(7, 2, generator=g) * 50], 1)
    d = torch.randn(3, 7, 4, generator=g)
    out = BoxCoder().decode(d, an)
    assert out.shape == (3, 7, 4) and out.dtype == torch.float32
    for i in range(3):
        torch.testing.assert_close(out[i], BoxCoder().decode(d[i], an), rtol=0, atol=0)
    half = BoxCoder().decode(d.half(), an.half())
    assert half.dtype == torch.float32
    dd = d.clone().requires_grad_(True)
    BoxCoder().decode(dd, an).sum().backward()
    assert torch.isfinite(dd.grad).all()


def test_encode_degenerate_gt_is_finite_and_bad_weights():
    an = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    assert torch.isfinite(BoxCoder().encode(torch.tensor([[3.0, 3.0, 3.0, 8.0]]), an)).all()
    with pytest.raises(ValueError, match="weights"):
        BoxCoder(weights=(1.0, 1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="deltas"):
        BoxCoder().decode(torch.zeros(3, 5), torch.zeros(3, 4))


# ----------------------------------------------------------------------------------------------
# NMS
def _reference_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, idxs=None) -> list[int]:
    """Textbook greedy NMS in pure Python (ties: lower index first; IoU > thr compared as reals)."""
    n = boxes.shape[0]
    iou = box_iou(boxes, boxes).tolist()
    s = scores.tolist()
    g = idxs.tolist() if idxs is not None else [0] * n
    keep: list[int] = []
    for i in sorted(range(n), key=lambda k: (-s[k], k)):
        if all(not (g[k] == g[i] and iou[k][i] > thr) for k in keep):
            keep.append(i)
    return keep


def _random_case(rng: random.Random, gen: torch.Generator):
    n = rng.choice([0, 1, 2, 3, 8, 25, 60, 120])
    if rng.random() < 0.5:  # integer grid: many exact ties, IoUs exactly at thresholds
        xy = torch.randint(0, 30, (n, 2), generator=gen).float()
        wh = torch.randint(0, 16, (n, 2), generator=gen).float()
    else:  # clusters of heavily overlapping boxes
        centres = torch.rand(4, 2, generator=gen) * 200
        which = torch.randint(0, 4, (n,), generator=gen)
        wh = 10 + torch.rand(n, 2, generator=gen) * 60
        xy = centres[which] + torch.randn(n, 2, generator=gen) * 8 - wh / 2
    b = torch.cat([xy, xy + wh], 1)
    if n > 3 and rng.random() < 0.3:  # exact duplicates
        b[n // 2 :] = b[: n - n // 2].clone()
    if rng.random() < 0.3:
        scores = torch.randint(0, 4, (n,), generator=gen).float()  # score ties
    else:
        scores = torch.rand(n, generator=gen)
    thr = rng.choice([0.3, 0.5, 0.7, 0.0, 1.0, -0.1])
    k = rng.choice([1, 2, 5, 80])
    idxs = torch.randint(0, k, (n,), generator=gen)
    return b, scores, idxs, thr


@pytest.mark.parametrize("mode", ["default", "small_chunks_no_peeling", "dense"])
def test_nms_equals_brute_force(monkeypatch, mode):
    if mode == "small_chunks_no_peeling":  # many pair chunks; sequential finish after 1 peeling round
        monkeypatch.setattr(NMS, "_PAIR_CHUNK", 7)
        monkeypatch.setattr(NMS, "_MAX_PEEL_ROUNDS", 1)
    if mode == "dense":  # switch to the N x N bool matrix at the first edge
        monkeypatch.setattr(NMS, "_DENSE_EDGE_DIVISOR", 10**12)
    rng, gen = random.Random(1234), torch.Generator().manual_seed(1234)
    checked = 0
    for _ in range(200):
        b, s, idxs, thr = _random_case(rng, gen)
        got = nms(b, s, thr)
        assert got.dtype == torch.int64
        assert got.tolist() == _reference_nms(b, s, thr)
        assert batched_nms(b, s, idxs, thr).tolist() == _reference_nms(b, s, thr, idxs)
        checked += 1
    assert checked == 200


def test_nms_paths_are_exercised(monkeypatch):
    calls = {"dense": 0, "seq": 0}
    real_dense = NMS._dense_to_peeled_edges

    def dense(m, *args):
        calls["dense"] += 1
        return real_dense(m, *args)

    monkeypatch.setattr(NMS, "_dense_to_peeled_edges", dense)
    monkeypatch.setattr(NMS, "_DENSE_EDGE_DIVISOR", 10**12)
    b = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10]])
    assert nms(b, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist() == [0]
    assert calls["dense"] == 1
    # a chain: each box suppresses only the next; needs many peeling rounds -> sequential finish
    n = 300
    x = torch.arange(n, dtype=torch.float32) * 8
    chain = torch.stack([x, torch.zeros(n), x + 32, torch.full((n,), 32.0)], 1)  # neighbour IoU 0.6
    monkeypatch.setattr(NMS, "_DENSE_EDGE_DIVISOR", 16)
    keep = nms(chain, -x, 0.5)
    assert keep.tolist() == list(range(0, n, 2)) == _reference_nms(chain, -x, 0.5)


def test_nms_threshold_is_strict_and_exact():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0]])  # IoU exactly 0.5
    s = torch.tensor([0.9, 0.8])
    assert nms(a, s, 0.5).tolist() == [0, 1]  # not > 0.5: kept
    assert nms(a, s, 0.49).tolist() == [0]
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 3.0, 10.0]])  # IoU = float32(0.3) > 0.3
    assert box_iou(b[:1], b[1:]).item() > 0.3
    assert nms(b, s, 0.3).tolist() == [0]


def test_nms_ties_order_groups_and_empty():
    b = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10], [50.0, 50, 60, 60], [0.0, 0, 10, 10]])
    s = torch.tensor([0.5, 0.5, 0.9, 0.1])
    assert nms(b, s, 0.5).tolist() == [2, 0]  # equal scores: lower index wins
    assert batched_nms(b, s, torch.tensor([0, 1, 0, 1]), 0.5).tolist() == [2, 0, 1]
    assert batched_nms(b, s, torch.tensor([0, 0, 0, 0]), -1.0).tolist() == [2]  # t < 0: best per group
    assert nms(b, s, 1.0).tolist() == [2, 0, 1, 3]  # IoU never > 1: all kept, by decreasing score
    for out in (
        nms(torch.zeros(0, 4), torch.zeros(0), 0.5),
        batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5),
    ):
        assert out.dtype == torch.int64 and out.shape == (0,)


def test_nms_bad_input():
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, dtype=torch.int64), 0.5)
    with pytest.raises(TypeError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="iou_threshold"):
        nms(torch.zeros(3, 4), torch.zeros(3), float("nan"))


def test_batched_nms_many_groups_larger_case():
    gen = torch.Generator().manual_seed(7)
    n = 600
    c = torch.rand(12, 2, generator=gen) * 300
    which = torch.randint(0, 12, (n,), generator=gen)
    wh = 20 + torch.rand(n, 2, generator=gen) * 40
    xy = c[which] + torch.randn(n, 2, generator=gen) * 6
    b = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    s = torch.rand(n, generator=gen)
    idxs = torch.randint(0, 6, (n,), generator=gen)
    keep = batched_nms(b, s, idxs, 0.5)
    assert keep.tolist() == _reference_nms(b, s, 0.5, idxs)
    assert (s[keep][1:] <= s[keep][:-1]).all()  # decreasing score
