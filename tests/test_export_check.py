"""The export check's comparison (:func:`retinanet.export.check.compare_detections`) on hand-made
detections: identical lists pass; near-equal scores may trade places and a full list may end with
another near-equal detection (both counted); anything else fails with the reason."""

from __future__ import annotations

import pytest
import torch

from retinanet.export import BOX_ATOL, SCORE_ATOL, ExportError
from retinanet.export.check import check_examples, compare_detections


def _dets(scores, labels, boxes):
    return {
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "boxes": torch.tensor(boxes, dtype=torch.float32),
    }


EAGER = _dets(
    [0.9, 0.50001, 0.5, 0.2],
    [0, 1, 2, 1],
    [[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50], [60, 0, 70, 9]],
)


def _compare(got, want=EAGER, limit=0):
    examples = check_examples(40, 40, torch.uint8, dynamic=False)
    return compare_detections(lambda images, sizes: [got], lambda images: [want], "m.onnx", examples, limit)


def _reorder(d, order):
    return {k: v[order] for k, v in d.items()}


def test_identical_and_slightly_off_detections_pass_with_their_deviation():
    res = _compare(EAGER)
    assert (res.detections, res.reordered, res.box, res.score) == (4, 0, 0.0, 0.0)
    near = dict(EAGER, boxes=EAGER["boxes"] + 0.004, scores=EAGER["scores"] - 3e-5)
    res = _compare(near)
    assert res.box == pytest.approx(0.004, abs=1e-5) and res.score == pytest.approx(3e-5, abs=1e-7)
    assert res.reordered == 0 and "same 4 detections" in res.describe() and "(1 x 40x40)" in res.describe()


def test_near_equal_scores_may_trade_places_but_nothing_else():
    swapped = _reorder(EAGER, [0, 2, 1, 3])  # 0.5 and 0.50001: within SCORE_ATOL
    res = _compare(swapped)
    assert res.reordered == 2 and res.box == 0.0 and "2 in another order among scores within" in res.describe()
    far = _reorder(EAGER, [1, 0, 2, 3])  # 0.9 and 0.5 swapped: a real difference
    with pytest.raises(ExportError, match=r"m.onnx: image 0 of a 1 x 40x40 batch: detection 0 has label 1, the eager"):
        _compare(far)


def test_a_full_list_may_end_with_another_near_equal_detection():
    other = {k: v.clone() for k, v in EAGER.items()}
    other["boxes"][3] = torch.tensor([80.0, 80, 90, 90])  # the 4th place: another box of score ~0.2
    other["scores"][3] = 0.2 + SCORE_ATOL / 2
    res = _compare(other, limit=4)  # 4 = detections per image: the list is full, the cut is at ~0.2
    assert res.reordered == 1 and res.detections == 4
    with pytest.raises(ExportError, match="detection 3|boxes differ"):
        _compare(other, limit=100)  # not full: the eager model has no such detection
    other["labels"][3] = 0
    other["scores"][3] = 0.3  # not a near-equal neighbour of the cut any more
    with pytest.raises(ExportError, match=r"detection 3 has label 0, the eager model's 1 \(score 0.2\)"):
        _compare(other, limit=4)


def test_off_boxes_count_and_nothing_found_are_errors():
    shifted = dict(EAGER, boxes=EAGER["boxes"] + 2 * BOX_ATOL)
    with pytest.raises(ExportError, match=r"boxes differ by up to 0.02 px and scores by 0 .*allowed 0.01 px, 0.0001"):
        _compare(shifted)
    with pytest.raises(ExportError, match="3 detections vs 4 from the eager model"):
        _compare(_reorder(EAGER, [0, 1, 2]))
    empty = _dets([], [], torch.zeros(0, 4).tolist())
    assert _compare(empty, empty).detections == 0  # nothing to compare: exporter.check_exported warns
