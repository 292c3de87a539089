"""The NMS step of the exported detectors: ``retinanet::nms_keep`` in PyTorch (our greedy NMS) and its
ONNX translation run in ONNX Runtime (``NonMaxSuppression``) keep exactly the boxes of a brute-force
greedy NMS computed with exact fractions; the stable sort's translation (``TopK``) orders ties like
``torch.sort(stable=True)``."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from retinanet.export.nms_op import nms_keep
from retinanet.export.onnx import translation_table
from retinanet.ops.boxes import exact_threshold

torch.set_num_threads(1)
K, THRESH = 3, 0.5


class _NmsOnly(nn.Module):
    def __init__(self, thresh: float) -> None:
        super().__init__()
        self.thresh = thresh

    def forward(self, boxes, priority, labels):
        return nms_keep(
            boxes, priority, labels, K, self.thresh, exact_threshold(self.thresh, torch.float32, strict=True)
        )


class _SortOnly(nn.Module):
    def forward(self, x):
        down = torch.sort(x, dim=1, descending=True, stable=True)
        up = torch.sort(x, dim=-1, stable=True)
        return down.values, down.indices, up.indices


def _session(module: nn.Module, args, path):
    import onnxruntime as ort

    table = translation_table()
    program = torch.onnx.export(module.eval(), args, dynamo=True, custom_translation_table=table, verbose=False)
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _reference_keep(boxes: np.ndarray, priority: np.ndarray, labels: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS per (image, class) with exact rational IoU: the definition, slowly."""

    def iou(a, b) -> Fraction:
        a, b = [Fraction(float(v)) for v in a], [Fraction(float(v)) for v in b]
        iw = max(Fraction(0), min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(Fraction(0), min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else Fraction(0)

    keep = np.zeros(priority.shape, dtype=bool)
    for b in range(priority.shape[0]):
        kept: list[int] = []
        for i in sorted((i for i in range(priority.shape[1]) if priority[b, i] > 0), key=lambda i: -priority[b, i]):
            if all(labels[b, j] != labels[b, i] or iou(boxes[b, i], boxes[b, j]) <= Fraction(thresh) for j in kept):
                kept.append(i)
        keep[b, kept] = True
    return keep


def _case(seed: int, b: int = 2, c: int = 64):
    """Boxes on a 1/4 px grid around a few centres (heavy overlaps), 3 classes, distinct priorities
    with some candidates switched off (priority -1); box 0 and 1 of image 0 overlap with IoU exactly 0.5
    (kept: suppression needs IoU > 0.5) and boxes 2, 3 just above it (suppressed)."""
    g = np.random.default_rng(seed)
    centres = g.uniform(20, 80, size=(b, 4, 2))
    pick = g.integers(0, 4, size=(b, c))
    ctr = np.take_along_axis(centres, pick[..., None].repeat(2, -1), 1) + g.normal(0, 4, size=(b, c, 2))
    half = g.uniform(4, 16, size=(b, c, 2))
    boxes = np.round(np.concatenate([ctr - half, ctr + half], -1) * 4) / 4
    labels = g.integers(0, K, size=(b, c))
    priority = np.stack([g.permutation(c) + 1 for _ in range(b)]).astype(np.float32)
    priority[g.random((b, c)) < 0.15] = -1
    boxes[0, :4] = [[0, 0, 20, 10], [0, 0, 10, 10], [50, 50, 70, 60], [50, 50, 60.25, 60]]
    labels[0, :4] = 1
    priority[0, :4] = [c + 4, c + 3, c + 2, c + 1]
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(priority), torch.tensor(labels)


def test_nms_keep_in_torch_and_in_onnxruntime_match_the_definition(tmp_path):
    boxes, priority, labels = _case(0)
    session = _session(_NmsOnly(THRESH), (boxes, priority, labels), tmp_path / "nms.onnx")
    assert "NonMaxSuppression" in {n.op_type for n in __import__("onnx").load(str(tmp_path / "nms.onnx")).graph.node}
    for seed in range(6):
        boxes, priority, labels = _case(seed)
        want = _reference_keep(boxes.numpy(), priority.numpy(), labels.numpy(), THRESH)
        assert want[0, :4].tolist() == [True, True, True, False]  # the designed pairs
        assert 10 < want.sum() < (priority > 0).sum()  # something is suppressed, something kept
        eager = nms_keep(boxes, priority, labels, K, THRESH, exact_threshold(THRESH, torch.float32, strict=True))
        feeds = {"boxes": boxes.numpy(), "priority": priority.numpy(), "labels": labels.numpy()}
        (ort_keep,) = session.run(None, feeds)
        assert np.array_equal(eager.numpy(), want), seed
        assert np.array_equal(ort_keep, want), seed


def test_a_different_threshold_changes_the_keeps(tmp_path):
    """The cases discriminate: NMS at 0.4 instead of 0.5 keeps other boxes (a broken threshold shows)."""
    boxes, priority, labels = _case(1)
    at_05 = _reference_keep(boxes.numpy(), priority.numpy(), labels.numpy(), 0.5)
    session = _session(_NmsOnly(0.4), (boxes, priority, labels), tmp_path / "nms04.onnx")
    (got,) = session.run(None, {"boxes": boxes.numpy(), "priority": priority.numpy(), "labels": labels.numpy()})
    assert np.array_equal(got, _reference_keep(boxes.numpy(), priority.numpy(), labels.numpy(), 0.4))
    assert not np.array_equal(got, at_05)


def test_nms_keep_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"boxes \[B, C, 4\], priority \[B, C\] and labels \[B, C\]"):
        nms_keep(torch.zeros(1, 5, 4), torch.ones(1, 6), torch.zeros(1, 6, dtype=torch.int64), K, 0.5, 0.5)


def test_stable_sort_translation_orders_ties_like_torch(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (3, 200), generator=g).float()  # many ties
    session = _session(_SortOnly(), (x,), tmp_path / "sort.onnx")
    for seed in range(3):
        x = torch.randint(0, 4, (3, 200), generator=torch.Generator().manual_seed(seed)).float()
        values, down, up = session.run(None, {"x": x.numpy()})
        want = torch.sort(x, dim=1, descending=True, stable=True)
        assert np.array_equal(values, want.values.numpy()) and np.array_equal(down, want.indices.numpy())
        assert np.array_equal(up, torch.sort(x, dim=-1, stable=True).indices.numpy())
        assert not np.array_equal(down, torch.sort(-x, dim=1).indices.flip(1).numpy())  # ties do decide here
