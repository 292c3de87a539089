"""Tests for COCO evaluation (coco_results, coco_eval, evaluator): exact agreement with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from retinanet.inference.coco_eval import STAT_NAMES, evaluate_coco
from retinanet.inference.coco_results import detections_to_coco_results
from retinanet.inference.evaluator import CocoEvaluator

torch.set_num_threads(1)

CATEGORY_IDS = [1, 3, 7, 9]  # non-contiguous; 9 ("fish") has no ground truth
NAMES = ["cat", "dog", "bird", "fish"]
LABEL_TO_CAT = {i: c for i, c in enumerate(CATEGORY_IDS)}


def make_gt(seed: int = 0) -> dict:
    """8 images of 640x480; small, medium and large boxes of 3 classes, crowd boxes, one empty image."""
    rng = np.random.default_rng(seed)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(1, 9)]
    anns = []
    for img in images[:-1]:  # the last image has no boxes
        for _ in range(rng.integers(2, 7)):
            side = float(rng.choice([12.0, 20.0, 50.0, 80.0, 150.0, 250.0]) * rng.uniform(0.8, 1.2))
            w, h = side * rng.uniform(0.7, 1.3), side * rng.uniform(0.7, 1.3)
            x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
            anns.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(CATEGORY_IDS[:3])),
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "iscrowd": 0,
                }
            )
    for img_id in (2, 5):  # crowd regions
        anns.append({"image_id": img_id, "category_id": 1, "bbox": [300.0, 200.0, 200.0, 150.0], "iscrowd": 1})
    for j, a in enumerate(anns):
        a["id"] = j + 1
        a["area"] = a["bbox"][2] * a["bbox"][3]
    cats = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES)]
    return {"images": images, "annotations": anns, "categories": cats}


def gt_to_xyxy(ann: dict) -> list[float]:
    x, y, w, h = ann["bbox"]
    return [x, y, x + w, y + h]


def make_detections(gt: dict, seed: int = 1) -> tuple[list[dict], list[int]]:
    """Per image: perturbed copies of most gt boxes (some with a wrong class), some misses,
    false positives, and hits on the crowd regions."""
    rng = np.random.default_rng(seed)
    dets, ids = [], []
    for img in gt["images"]:
        boxes, scores, labels = [], [], []
        for a in (a for a in gt["annotations"] if a["image_id"] == img["id"]):
            if a["iscrowd"]:
                for _ in range(3):  # detections inside a crowd region: ignored, not false positives
                    boxes.append([310 + rng.uniform(0, 100), 210 + rng.uniform(0, 60), 0, 0])
                    boxes[-1][2:] = [boxes[-1][0] + 60, boxes[-1][1] + 50]
                    scores.append(rng.uniform(0.3, 0.9))
                    labels.append(0)
                continue
            if rng.random() < 0.15:
                continue  # missed
            x1, y1, x2, y2 = gt_to_xyxy(a)
            w, h = x2 - x1, y2 - y1
            jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
            boxes.append([x1 + jitter[0], y1 + jitter[1], x2 + jitter[2], y2 + jitter[3]])
            scores.append(rng.uniform(0.2, 1.0))
            label = CATEGORY_IDS.index(a["category_id"])
            labels.append(label if rng.random() > 0.1 else int(rng.integers(0, 4)))
        for _ in range(rng.integers(1, 5)):  # false positives
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            s = rng.uniform(10, 140)
            boxes.append([x, y, x + s, y + s * rng.uniform(0.6, 1.5)])
            scores.append(rng.uniform(0.05, 0.8))
            labels.append(int(rng.integers(0, 4)))
        dets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.tensor(scores, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
        ids.append(img["id"])
    return dets, ids


def pycocotools_direct(gt: dict, results: list[dict]):
    """The reference: pycocotools' own loadRes + COCOeval on private copies."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture(scope="module")
def gt() -> dict:
    return make_gt()


@pytest.fixture(scope="module")
def results(gt) -> list[dict]:
    dets, ids = make_detections(gt)
    return detections_to_coco_results(dets, ids, LABEL_TO_CAT)


def test_twelve_numbers_equal_pycocotools_exactly(gt, results):
    gt_before = copy.deepcopy(gt)
    ours = evaluate_coco(gt, results)
    ref = pycocotools_direct(gt, results)
    assert [ours[n] for n in STAT_NAMES] == ref.stats.tolist()
    # a meaningful case: imperfect, every area range defined
    assert 0.1 < ours["AP"] < 0.95
    assert all(ours[n] >= 0 for n in STAT_NAMES)
    assert "Average Precision" in ours.summary and "maxDets=100" in ours.summary
    assert gt == gt_before  # the caller's ground truth is not modified


def test_crowd_regions_absorb_detections(gt, results):
    # removing the crowd flags turns the crowd hits into false positives/true positives on a
    # 'real' box: the numbers must change, proving crowd boxes are handled like pycocotools
    no_crowd = copy.deepcopy(gt)
    for a in no_crowd["annotations"]:
        a["iscrowd"] = 0
    ref = pycocotools_direct(no_crowd, results)
    ours = evaluate_coco(no_crowd, results)
    assert [ours[n] for n in STAT_NAMES] == ref.stats.tolist()
    assert ours["AP"] != evaluate_coco(gt, results)["AP"]


def test_gt_as_path_or_coco_object_and_results_as_path(gt, results, tmp_path):
    from pycocotools.coco import COCO

    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
    expected = evaluate_coco(gt, results)
    assert evaluate_coco(str(gt_path), str(res_path)) == expected
    assert evaluate_coco(coco, results) == expected


def test_no_pycocotools_prints_reach_stdout(gt, results, capsys):
    evaluate_coco(gt, results)
    assert capsys.readouterr().out == ""


def test_perfect_detections_give_ap_one(gt):
    dets, ids = [], []
    for img in gt["images"]:
        anns = [a for a in gt["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        dets.append(
            {
                "boxes": torch.tensor([gt_to_xyxy(a) for a in anns]).reshape(-1, 4),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns], dtype=torch.int64),
            }
        )
        ids.append(img["id"])
    m = evaluate_coco(gt, detections_to_coco_results(dets, ids, LABEL_TO_CAT))
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert m[name] == 1.0, name
    assert m["AP/cat"] == m["AP/dog"] == m["AP/bird"] == 1.0
    assert m["AP/fish"] == -1.0  # no ground truth for that class


def test_empty_detections_give_zeros(gt):
    m = evaluate_coco(gt, [])
    assert [m[n] for n in STAT_NAMES] == [0.0] * 12
    assert m["AP/cat"] == 0.0 and m["AP/fish"] == -1.0
    # also through the list-of-empty-detections path
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    assert detections_to_coco_results(empty * 2, [1, 2], LABEL_TO_CAT) == []


def test_per_class_ap_matches_precision_array(gt, results):
    ours = evaluate_coco(gt, results)
    ref = pycocotools_direct(gt, results)
    precision = ref.eval["precision"]  # [T, R, K, A, M]
    assert ref.params.catIds == CATEGORY_IDS
    per_class = []
    for k, name in enumerate(NAMES):
        p = precision[:, :, k, 0, -1]
        expected = float(np.mean(p[p > -1])) if (p > -1).any() else -1.0
        assert ours[f"AP/{name}"] == pytest.approx(expected, rel=1e-12, abs=1e-15), name
        if expected >= 0:
            per_class.append(expected)
    assert len(set(per_class)) > 1  # classes differ: the test would notice mixed-up indices
    assert np.mean(per_class) == pytest.approx(ours["AP"], rel=1e-12)


def test_detections_to_coco_results_conversion():
    dets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 30.5, 60.25], [0.0, 0.0, 1.0, 1.0]]),
            "scores": torch.tensor([0.9, 0.123456789]),
            "labels": torch.tensor([2, 0]),
        },
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, dtype=np.int64)},
        {"boxes": [[5.0, 5.0, 7.0, 9.0]], "scores": [0.5], "labels": [3]},
    ]
    out = detections_to_coco_results(dets, [11, 12, 13], [1, 3, 7, 9])
    assert out == [
        {"image_id": 11, "category_id": 7, "bbox": [10.0, 20.0, 20.5, 40.25], "score": pytest.approx(0.9, abs=1e-6)},
        {"image_id": 11, "category_id": 1, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.123457},
        {"image_id": 13, "category_id": 9, "bbox": [5.0, 5.0, 2.0, 4.0], "score": 0.5},
    ]
    assert all(type(v) in (int, float) for r in out for v in (r["image_id"], r["category_id"], r["score"]))
    json.dumps(out)


def test_bad_detections_raise_clear_errors():
    good = {"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([0])}
    with pytest.raises(ValueError, match="2 detection dicts but 1 image ids"):
        detections_to_coco_results([good, good], [1], LABEL_TO_CAT)
    with pytest.raises(ValueError, match="label 4 .*image_id 5.*0..3"):
        detections_to_coco_results([{**good, "labels": torch.tensor([4])}], [5], LABEL_TO_CAT)
    with pytest.raises(ValueError, match=r"boxes must be \[n, 4\]"):
        detections_to_coco_results([{**good, "boxes": torch.zeros(1, 5)}], [5], LABEL_TO_CAT)
    with pytest.raises(ValueError, match="non-finite"):
        detections_to_coco_results([{**good, "scores": torch.tensor([float("nan")])}], [5], LABEL_TO_CAT)


def test_bad_results_raise_clear_errors(gt):
    ok = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}
    with pytest.raises(ValueError, match="image id.*not in the ground truth.*999"):
        evaluate_coco(gt, [{**ok, "image_id": 999}])
    with pytest.raises(ValueError, match="category id.*42"):
        evaluate_coco(gt, [{**ok, "category_id": 42}])
    with pytest.raises(ValueError, match=r"results\[1\]"):
        evaluate_coco(gt, [ok, {"image_id": 1}])
    with pytest.raises(ValueError, match="backend"):
        evaluate_coco(gt, [ok], backend="nope")


class FakeDataset:
    """What a COCO / VOC reader exposes to the evaluator."""

    def __init__(self, gt: dict) -> None:
        self._gt = gt
        self.label_to_category_id = dict(LABEL_TO_CAT)
        self.calls = 0

    def coco_gt(self) -> dict:
        self.calls += 1
        return self._gt


def _targets(ids, sizes=None):
    return [{"image_id": torch.tensor(i), **({"orig_size": sizes[k]} if sizes else {})} for k, i in enumerate(ids)]


def test_coco_evaluator_batches_results_json_round_trip(gt, results, tmp_path):
    dets, ids = make_detections(gt)
    ev = CocoEvaluator(FakeDataset(gt))
    for start in range(0, len(ids), 3):
        ev.update(dets[start : start + 3], _targets(ids[start : start + 3]))
    ev.update(dets[:1], _targets(ids[:1]))  # a repeated image (padding sampler) counts once
    assert ev.results() == results
    metrics = ev.evaluate()
    assert metrics == evaluate_coco(gt, results)
    assert ev.summary == metrics.summary

    out = ev.write_results(tmp_path / "sub" / "coco_results.json")
    assert json.loads(out.read_text()) == results
    assert [p.name for p in out.parent.iterdir()] == ["coco_results.json"]
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    assert evaluate_coco(gt_path, out) == metrics


def test_coco_evaluator_evaluates_only_the_images_it_saw(gt):
    dets, ids = make_detections(gt)
    ev = CocoEvaluator(coco_gt=gt, label_to_category_id=CATEGORY_IDS)
    ev.update(dets[:3], _targets(ids[:3]))
    subset = detections_to_coco_results(dets[:3], ids[:3], LABEL_TO_CAT)
    m = ev.evaluate()
    assert ev.image_ids == ids[:3]
    assert m == evaluate_coco(gt, subset, image_ids=ids[:3])
    assert m["AR100"] > evaluate_coco(gt, subset)["AR100"]  # unseen images would count as misses


def test_coco_evaluator_takes_boxes_as_given(gt):
    """Boxes are already in original pixels (the model maps them back): ``orig_size`` and the size the
    model saw change nothing."""
    dets, ids = make_detections(gt)
    ev = CocoEvaluator(FakeDataset(gt))
    ev.update(dets, _targets(ids, [(240, 320)] * len(ids)))
    assert ev.results() == detections_to_coco_results(dets, ids, LABEL_TO_CAT)


def test_coco_evaluator_rejects_datasets_without_the_interface():
    with pytest.raises(TypeError, match="coco_gt"):
        CocoEvaluator(object())


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gt = make_gt()
        dets, ids = make_detections(gt)
        shard = list(range(rank, len(ids), world))
        if rank == 1:
            shard.append(0)  # DistributedSampler-style padding: image 0 twice
        ev = CocoEvaluator(FakeDataset(gt))
        ev.update([dets[i] for i in shard], _targets([ids[i] for i in shard]))
        ev.gather()
        out = {"image_ids": sorted(ev.image_ids)}
        if rank == 0:
            out["metrics"] = dict(ev.evaluate())
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def test_gather_across_two_gloo_processes(gt, results, tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, str(tmp_path / "init"), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    all_ids = [img["id"] for img in gt["images"]]
    assert r0["image_ids"] == r1["image_ids"] == all_ids
    assert r0["metrics"] == dict(evaluate_coco(gt, results))


def test_faster_backend_agrees_when_installed(gt, results):
    pytest.importorskip("faster_coco_eval")
    ref = evaluate_coco(gt, results)
    fast = evaluate_coco(gt, results, backend="faster")
    assert set(fast) == set(ref)
    for k in ref:
        assert fast[k] == pytest.approx(ref[k], abs=1e-12), k
    assert fast.summary.splitlines()[0] == ref.summary.splitlines()[0]
