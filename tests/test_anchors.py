"""Tests for retinanet.ops.anchors: exact corners, order, offsets, counts, torchvision rounding, cache."""

from __future__ import annotations

import math

import pytest
import torch

from retinanet.ops import AnchorGenerator, Matcher, box_iou

# P3 (stride 8, size 32), cell (y=2, x=3), offset 0 -> centre (24, 16). Ratio r = h/w outer, scale inner.
# w = 32 s / sqrt(r), h = 32 s sqrt(r); e.g. r=0.5, s=1: w = 45.254834, h = 22.627417, so
# x1 = 24 - 22.627417 = 1.372583, y1 = 16 - 11.313708 = 4.686292.
P3_CELL_2_3 = [
    [1.372583, 4.686292, 46.627417, 27.313708],  # r 0.5, s 1
    [-4.508759, 1.745621, 52.508759, 30.254379],  # r 0.5, s 2^(1/3)
    [-11.918786, -1.959393, 59.918786, 33.959393],  # r 0.5, s 2^(2/3)
    [8.0, 0.0, 40.0, 32.0],  # r 1,   s 1
    [3.841263, -4.158737, 44.158737, 36.158737],  # r 1,   s 2^(1/3)
    [-1.398417, -9.398417, 49.398417, 41.398417],  # r 1,   s 2^(2/3)
    [12.686292, -6.627417, 35.313708, 38.627417],  # r 2,   s 1
    [9.745621, -12.508759, 38.254379, 44.508759],  # r 2,   s 2^(1/3)
    [6.040607, -19.918786, 41.959393, 51.918786],  # r 2,   s 2^(2/3)
]

# torchvision's cell anchors: sizes (32, 40, 50) / (64, 80, 101), ratios (0.5, 1, 2), rounded corners
TV_SIZE_32 = [
    [-23, -11, 23, 11],
    [-28, -14, 28, 14],
    [-35, -18, 35, 18],
    [-16, -16, 16, 16],
    [-20, -20, 20, 20],
    [-25, -25, 25, 25],
    [-11, -23, 11, 23],
    [-14, -28, 14, 28],
    [-18, -35, 18, 35],
]
TV_SIZE_64 = [
    [-45, -23, 45, 23],
    [-57, -28, 57, 28],
    [-71, -36, 71, 36],
    [-32, -32, 32, 32],
    [-40, -40, 40, 40],
    [-50, -50, 50, 50],
    [-23, -45, 23, 45],
    [-28, -57, 28, 57],
    [-36, -71, 36, 71],
]

SIZES5 = [(5, 6), (3, 3), (2, 2), (1, 1), (1, 1)]


def _cell(levels, level, y, x, w, a=9):
    return levels[level].view(-1, w, a, 4)[y, x]


def test_p3_cell_anchors_exact_corners():
    gen = AnchorGenerator()
    assert gen.num_anchors == 9
    levels = gen(SIZES5)
    got = _cell(levels, 0, 2, 3, 6)
    torch.testing.assert_close(got, torch.tensor(P3_CELL_2_3), rtol=0, atol=1e-5)
    # the same numbers from the formula, and the defining properties: area and aspect ratio
    w, h = got[:, 2] - got[:, 0], got[:, 3] - got[:, 1]
    scales = [1, 2 ** (1 / 3), 2 ** (2 / 3)]
    areas = torch.tensor([(32 * s) ** 2 for _ in range(3) for s in scales])
    ratios = torch.tensor([r for r in (0.5, 1.0, 2.0) for _ in range(3)])
    torch.testing.assert_close(w * h, areas, rtol=1e-5, atol=0)
    torch.testing.assert_close(h / w, ratios, rtol=1e-5, atol=0)
    torch.testing.assert_close((got[:, 0] + got[:, 2]) / 2, torch.full((9,), 24.0))
    torch.testing.assert_close((got[:, 1] + got[:, 3]) / 2, torch.full((9,), 16.0))


def test_offset_half_shifts_by_half_stride():
    a0 = AnchorGenerator()(SIZES5)
    a5 = AnchorGenerator(offset=0.5)(SIZES5)
    for lvl, stride in enumerate((8, 16, 32, 64, 128)):
        torch.testing.assert_close(a5[lvl] - a0[lvl], torch.full_like(a0[lvl], stride / 2), rtol=0, atol=1e-4)
    torch.testing.assert_close(_cell(a5, 0, 2, 3, 6), torch.tensor(P3_CELL_2_3) + 4.0, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "sizes", [SIZES5, [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)], [(1, 1), (0, 3), (7, 1), (2, 9), (4, 4)]]
)
def test_counts_order_and_concatenation(sizes):
    gen = AnchorGenerator()
    levels = gen(sizes)
    assert [t.shape for t in levels] == [(h * w * 9, 4) for h, w in sizes]
    assert gen.num_anchors_per_level(sizes) == [h * w * 9 for h, w in sizes]
    flat = gen.flat(sizes)
    assert torch.equal(flat, torch.cat(levels))
    for lvl, ((h, w), stride) in enumerate(zip(sizes, (8, 16, 32, 64, 128))):
        if h * w == 0:
            continue
        # flat index (y * W + x) * A + a: centres move along x first, then y
        ctr = (levels[lvl][:, :2] + levels[lvl][:, 2:]) / 2
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        expect = torch.stack([xs, ys], -1).reshape(-1, 1, 2).expand(-1, 9, 2).reshape(-1, 2).float() * stride
        torch.testing.assert_close(ctr, expect, rtol=0, atol=1e-4)


def test_round_sizes_reproduces_torchvision_cell_anchors():
    gen = AnchorGenerator(round_sizes=True)
    assert gen.cell_anchors[0].tolist() == TV_SIZE_32
    assert gen.cell_anchors[1].tolist() == TV_SIZE_64
    got = _cell(gen(SIZES5), 0, 2, 3, 6)
    assert got.tolist() == (torch.tensor(TV_SIZE_32, dtype=torch.float32) + torch.tensor([24.0, 16, 24, 16])).tolist()
    assert AnchorGenerator().cell_anchors[0][0, 0].item() != -23.0  # float anchors by default


def test_gt_with_anchor_shape_matches_with_iou_one():
    gen = AnchorGenerator()
    anchors = gen.flat(SIZES5)
    k = (2 * 6 + 3) * 9 + 4  # P3, y=2, x=3, ratio 1, scale 2^(1/3)
    gt = anchors[k : k + 1].clone()
    iou = box_iou(gt, anchors)
    assert iou[0, k].item() == 1.0 and int(iou[0].argmax()) == k
    m, best = Matcher().match_with_iou(gt, anchors)
    assert m[k].item() == 0 and best[k].item() == 1.0
    assert torch.equal(m, Matcher()(iou))


def test_cache_hits_lru_bound_and_dtype():
    gen = AnchorGenerator(cache_size=2)
    a = gen(SIZES5)
    b = gen(SIZES5, device="cpu")
    assert all(x is y for x, y in zip(a, b))  # cached
    assert gen.flat(SIZES5) is gen.flat(SIZES5)
    d = gen(SIZES5, dtype=torch.float64)
    assert d[0].dtype == torch.float64 and torch.allclose(d[0].float(), a[0])
    gen([(4, 4)] * 5)
    assert len(gen._cache) == 2  # bounded
    assert all(x is not y for x, y in zip(gen(SIZES5), a))  # evicted and rebuilt, same values
    assert all(torch.equal(x, y) for x, y in zip(gen(SIZES5), a))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="5"):
        AnchorGenerator()([(4, 4)] * 4)
    with pytest.raises(ValueError, match="feature_sizes"):
        AnchorGenerator()([(4, 4.5)] * 5)
    with pytest.raises(ValueError, match="sizes"):
        AnchorGenerator(sizes=(32, 64), strides=(8,))
    with pytest.raises(ValueError, match="ratios"):
        AnchorGenerator(ratios=(0.5, -1.0))
    with pytest.raises(TypeError, match="dtype"):
        AnchorGenerator()(SIZES5, dtype=torch.int64)
    assert AnchorGenerator(scales=(1.0,), ratios=(1.0,)).num_anchors == 1
    assert math.isclose(AnchorGenerator(sizes=(10,), strides=(4,)).cell_anchors[0][4, 2].item(), 5 * 2 ** (1 / 3))
