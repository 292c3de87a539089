"""Tests for retinanet.ops.matcher: thresholds, ignore band, low-quality matches, chunking."""

from __future__ import annotations

import pytest
import torch

from retinanet.ops import Matcher, box_iou


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


GT = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
# IoU with GT: 1.0, 0.5 (exactly), 0.45, 0.4 (exactly), 0.39, 0
ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 5.0],
        [0.0, 0.0, 10.0, 4.5],
        [0.0, 0.0, 10.0, 4.0],
        [0.0, 0.0, 10.0, 3.9],
        [50.0, 50.0, 60.0, 60.0],
    ]
)


@pytest.mark.parametrize("low_quality", [True, False])
def test_thresholds_and_ignore_band(low_quality):
    m = Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)
    assert m.match(GT, ANCHORS).tolist() == [0, 0, -2, -2, -1, -1]
    assert m(box_iou(GT, ANCHORS)).tolist() == [0, 0, -2, -2, -1, -1]
    matches, best = m.match_with_iou(GT, ANCHORS)
    torch.testing.assert_close(best, torch.tensor([1.0, 0.5, 0.45, 0.4, 0.39, 0.0]))
    # fg == bg: no ignore band
    assert Matcher(0.44, 0.44, low_quality).match(GT, ANCHORS).tolist() == [0, 0, 0, -1, -1, -1]


def test_low_quality_rescue_keeps_the_anchors_own_best_gt():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    gt = torch.tensor(
        [
            [0.0, 0.0, 3.0, 10.0],  # best IoU 0.3, reached by anchors 0 and 1 (a tie)
            [200.0, 200.0, 210.0, 210.0],
        ]
    )  # overlaps nothing: rescues nothing
    assert Matcher().match(gt, anchors).tolist() == [0, 0, -1]
    assert Matcher(allow_low_quality_matches=False).match(gt, anchors).tolist() == [-1, -1, -1]
    # anchor 0's best gt is gt 1 (IoU 0.45, ignore band); gt 0's best IoU 0.3 is at anchor 0 too:
    # anchor 0 becomes foreground but stays matched to gt 1 (detectron2 / torchvision convention)
    gt2 = torch.tensor([[0.0, 0.0, 3.0, 10.0], [0.0, 0.0, 10.0, 4.5]])
    a2 = torch.tensor([[0.0, 0.0, 10.0, 10.0], [300.0, 0.0, 310.0, 10.0]])
    assert Matcher().match(gt2, a2).tolist() == [1, -1]
    assert Matcher()(box_iou(gt2, a2)).tolist() == [1, -1]
    assert Matcher(allow_low_quality_matches=False).match(gt2, a2).tolist() == [-2, -1]


def test_zero_gt_zero_anchors_and_ties():
    m = Matcher()
    out = m.match(torch.zeros(0, 4), ANCHORS)
    assert out.dtype == torch.int64 and out.tolist() == [-1] * 6
    assert m(torch.zeros(0, 6)).tolist() == [-1] * 6
    matches, best = m.match_with_iou(torch.zeros(0, 4), ANCHORS)
    assert best.tolist() == [0.0] * 6
    assert m.match(GT, torch.zeros(0, 4)).shape == (0,)
    dup = torch.cat([GT, GT, GT])  # identical gt boxes: the first index wins
    assert m.match(dup, ANCHORS[:2]).tolist() == [0, 0]
    assert m(box_iou(dup, ANCHORS[:2])).tolist() == [0, 0]
    assert Matcher(chunk_size=1).match(dup.flip(0), ANCHORS[:2]).tolist() == [0, 0]


def _random_boxes(n, gen, span=40, max_wh=20):
    xy = torch.randint(0, span, (n, 2), generator=gen).float()
    wh = torch.randint(0, max_wh, (n, 2), generator=gen).float()
    return torch.cat([xy, xy + wh], 1)


def test_chunked_equals_unchunked_and_full_matrix():
    gen = torch.Generator().manual_seed(3)
    for trial in range(60):
        m_gt = int(torch.randint(0, 9, (1,), generator=gen))
        n_an = int(torch.randint(1, 120, (1,), generator=gen))
        gt = _random_boxes(m_gt, gen)
        if m_gt > 2 and trial % 3 == 0:
            gt[-1] = gt[0]  # duplicate gt
        anchors = _random_boxes(n_an, gen)
        iou = box_iou(gt, anchors)
        for low_quality in (True, False):
            ref = Matcher(allow_low_quality_matches=low_quality)(iou)
            for chunk in (None, 1, 3, 17):
                matcher = Matcher(allow_low_quality_matches=low_quality, chunk_size=chunk)
                got, best = matcher.match_with_iou(gt, anchors)
                assert torch.equal(got, ref), (trial, chunk, low_quality)
                if m_gt:
                    assert torch.equal(best, iou.max(0).values)  # bit-identical to box_iou


def test_full_matrix_rule_by_hand_definition():
    """The matrix rule written out naively, on random matrices with many exact ties."""
    gen = torch.Generator().manual_seed(5)
    for _ in range(40):
        m, n = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 30, (1,), generator=gen))
        iou = torch.randint(0, 11, (m, n), generator=gen).float() / 10
        got = Matcher(0.5, 0.4)(iou).tolist()
        for a in range(n):
            col = iou[:, a].tolist()
            best = max(col)
            arg = col.index(best)
            want = arg if best >= 0.5 else (-2 if best >= 0.4 else -1)
            for g in range(m):
                row_best = max(iou[g].tolist())
                if row_best > 0 and col[g] == row_best:
                    want = arg
            assert got[a] == want


def test_bad_input():
    with pytest.raises(ValueError, match="bg_iou_threshold"):
        Matcher(0.4, 0.5)
    with pytest.raises(ValueError, match="chunk_size"):
        Matcher(chunk_size=0)
    with pytest.raises(ValueError, match="gt_boxes"):
        Matcher().match(torch.zeros(3, 5), ANCHORS)
    with pytest.raises(ValueError, match="iou_matrix"):
        Matcher()(torch.zeros(3))
