"""End to end through the command line: train on tiny COCO and VOC datasets written to disk, evaluate
the checkpoint, check the results json and the metrics log, resume, and reject a misspelt config key.

The model is the tiny one of ``train_factory`` (MobileNetV2 random init, 32-channel FPN, ~0.05 s per
step on one thread); ``model.score_thresh=0`` so that an untrained model still produces detections.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch
from data_factory import make_voc
from train_factory import make_coco_split, run_cli, tiny_config, val_coco_dict, write_config

from retinanet.cli import main
from retinanet.config import load_config
from retinanet.data.build import build_dataset
from retinanet.inference.coco_eval import STAT_NAMES
from retinanet.modeling.retinanet import RetinaNet
from retinanet.training.checkpoint import LAST_CHECKPOINT_FILE
from retinanet.training.schedule import lr_at
from retinanet.training.trainer import Trainer
from retinanet.utils.serialization import load_file

pytestmark = pytest.mark.slow


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _check_results_json(
    path: Path, image_sizes: dict[int, tuple[int, int]], category_ids: set[int], per_image: int
) -> list[dict]:
    """COCO results format; ids in the dataset's id space; boxes inside the original images."""
    results = json.loads(path.read_text())
    assert isinstance(results, list) and results
    for r in results:
        assert set(r) == {"image_id", "category_id", "bbox", "score"}, r
        assert isinstance(r["image_id"], int) and r["image_id"] in image_sizes, r
        assert isinstance(r["category_id"], int) and r["category_id"] in category_ids, r
        x, y, w, h = r["bbox"]
        assert len(r["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in r["bbox"])
        iw, ih = image_sizes[r["image_id"]]
        assert w >= 0 and h >= 0
        # original pixels: every box lies in the file's w x h (the model saw 2x larger images)
        assert -1e-6 <= x and x + w <= iw + 0.011 and -1e-6 <= y and y + h <= ih + 0.011, (r, iw, ih)
        assert 0.0 <= r["score"] <= 1.0
    counts = {i: sum(r["image_id"] == i for r in results) for i in image_sizes}
    assert all(c == per_image for c in counts.values()), counts  # score_thresh 0: every image has its top D
    return results


def _check_eval_metrics(m: dict, prefix: str = "") -> None:
    for name in STAT_NAMES:
        v = m[prefix + name]
        assert isinstance(v, float) and (0.0 <= v <= 1.0 or v == -1.0), (name, v)
    for name in ("AP", "AP50", "AP75", "AR100"):  # defined: the val set has boxes
        assert 0.0 <= m[prefix + name] <= 1.0


def test_coco_train_eval_resume_through_the_cli(tmp_path, capsys):
    data = make_coco_split(tmp_path / "data")
    out = tmp_path / "run"
    cfg_dict = tiny_config(data, out, solver={"max_iter": 4})
    cfg_path = write_config(tmp_path / "coco.yaml", cfg_dict)

    assert main(["train", str(cfg_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "training finished at iteration 4" in printed and "AP " in printed

    # checkpoints, pointer, resolved config
    for name in (
        "model_0000002.pth",
        "model_0000004.pth",
        "model_final.pth",
        "config.yaml",
        "detections_0000004.json",
        "training_curves.png",
    ):
        assert (out / name).is_file(), name
    assert (out / LAST_CHECKPOINT_FILE).read_text().strip() == "model_final.pth"
    final = load_file(out / "model_final.pth")
    assert final["iteration"] == 4 and final["max_iter"] == 4
    assert final["label_to_category_id"] == [3, 7, 11] and final["class_names"] == ["cat", "dog", "bird"]
    assert load_config(str(out / "config.yaml")).solver.max_iter == 4
    assert not (out / "tensorboard").exists()  # tensorboard is not installed here: silently skipped

    # metrics.jsonl: one row per iteration (log_period 1) with loss and lr, then the final evaluation
    rows = _rows(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert [r["iter"] for r in train_rows] == [1, 2, 3, 4]
    s = load_config(str(cfg_path)).solver
    for r in train_rows:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["loss"] == pytest.approx(r["loss_cls"] + r["loss_box"], abs=2e-6)
        assert r["lr"] == pytest.approx(
            lr_at(r["iter"] - 1, s.lr(), 4, s.warmup_iters, s.warmup_factor, s.steps, s.gamma)
        )
        assert r["num_fg"] >= 0 and r["grad_norm"] > 0
    assert [r["lr"] for r in train_rows] == pytest.approx([0.002, 0.011, 0.002, 0.002])
    eval_rows = [r for r in rows if "bbox/AP" in r]
    assert len(eval_rows) == 1 and eval_rows[0]["iter"] == 4
    _check_eval_metrics(eval_rows[0], "bbox/")
    assert {"bbox/AP/cat", "bbox/AP/dog", "bbox/AP/bird"} <= set(eval_rows[0])

    # retinanet eval CONFIG --weights CKPT
    ev = tmp_path / "eval"
    assert (
        main(["eval", str(cfg_path), "--weights", str(out / "model_final.pth"), "--out", str(ev), "--no-progress"]) == 0
    )
    assert "AP " in capsys.readouterr().out
    val = val_coco_dict()
    sizes = {im["id"]: (im["width"], im["height"]) for im in val["images"]}
    results = _check_results_json(ev / "detections.json", sizes, {3, 7, 11}, per_image=20)
    metrics = json.loads((ev / "metrics.json").read_text())
    _check_eval_metrics(metrics)
    # the same model on the same data: the evaluation at the end of training gave the same numbers
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(eval_rows[0]["bbox/" + name], abs=1e-9)
    assert json.loads((out / "detections_0000004.json").read_text()) == results

    # boxes in original pixels: recompute one image by hand; the model sees it at twice the file's size
    cfg = load_config(str(cfg_path))
    model = RetinaNet.from_config(cfg)
    model.load_state_dict(final["model"])
    model.eval()
    ds = build_dataset(cfg, train=False)
    for i in range(len(ds)):
        image, target = ds[i]
        ow, oh = sizes[target["image_id"]]
        assert tuple(image.shape[1:]) == (2 * oh, 2 * ow)
        with torch.no_grad():
            det = model([image])[0]  # boxes in the pixels of the network's input
        mine = [r for r in results if r["image_id"] == target["image_id"]]
        for box, score, label in list(zip(det["boxes"], det["scores"], det["labels"]))[:5]:
            x1, y1, x2, y2 = (box / 2).tolist()
            cat = [3, 7, 11][int(label)]
            assert any(
                r["category_id"] == cat
                and abs(r["score"] - float(score)) < 1e-4
                and all(abs(a - b) < 0.02 for a, b in zip(r["bbox"], [x1, y1, x2 - x1, y2 - y1]))
                for r in mine
            ), (target["image_id"], box, score)

    # --resume continues from the latest checkpoint (model_final at 4) to a longer schedule
    assert main(["train", str(cfg_path), "--resume", "solver.max_iter=6", "--no-progress"]) == 0
    assert "training finished at iteration 6" in capsys.readouterr().out
    rows = _rows(out / "metrics.jsonl")
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["iter"] for r in rows if "bbox/AP" in r] == [4, 6]
    assert load_file(out / "model_final.pth")["iteration"] == 6
    assert load_file(out / "model_0000006.pth")["iteration"] == 6
    assert (out / LAST_CHECKPOINT_FILE).read_text().strip() == "model_final.pth"


def test_voc_train_as_a_command_with_a_worker_then_eval(tmp_path):
    """``python -m retinanet train`` as a real process on VOC data with one DataLoader worker, then
    ``retinanet eval``."""
    root = make_voc(
        tmp_path / "voc", splits={"train": ["000001", "000002", "000003"], "val": ["000001", "000002", "000003"]}
    )
    out = tmp_path / "run"
    data = {
        "format": "voc",
        "voc_root": str(root),
        "train_split": "train",
        "val_split": "val",
        "class_names": ["dog", "person", "cat"],
        "num_workers": 1,
    }
    cfg_path = write_config(tmp_path / "voc.yaml", tiny_config(data, out, solver={"max_iter": 3}))
    r = run_cli("train", str(cfg_path), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training finished at iteration 3" in r.stdout
    rows = _rows(out / "metrics.jsonl")
    assert [x["iter"] for x in rows if "loss" in x] == [1, 2, 3]
    assert all(math.isfinite(x["loss"]) and x["lr"] > 0 for x in rows if "loss" in x)
    _check_eval_metrics(rows[-1], "bbox/")

    assert main(["eval", str(cfg_path), "--weights", str(out / "model_final.pth"), "--no-progress"]) == 0
    # VOC: image ids are positions in the split file, category ids 1..K, files are 64x48
    _check_results_json(out / "detections.json", {0: (64, 48), 1: (64, 48), 2: (64, 48)}, {1, 2, 3}, per_image=20)
    _check_eval_metrics(json.loads((out / "metrics.json").read_text()))


def test_unknown_config_key_fails_at_once(tmp_path, capsys):
    data = make_coco_split(tmp_path / "data")
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", tiny_config(data, out))

    assert main(["train", str(cfg_path), "solver.base_lrr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "solver.base_lrr" in err and "'base_lr'" in err
    assert not out.exists()  # nothing was created or trained

    bad = tiny_config(data, out)
    bad["trian"] = bad.pop("train")
    bad_path = write_config(tmp_path / "typo.yaml", bad)
    assert main(["eval", str(bad_path), "--weights", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'trian'" in err and "'train'" in err

    # the same from a real process: exit status 2 and one line on stderr
    r = run_cli("train", str(cfg_path), "model.fpn_chanels=64", timeout=60)
    assert r.returncode == 2, r.stderr
    assert "model.fpn_chanels" in r.stderr and "'fpn_channels'" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


class _FakeWriter:
    instances: list["_FakeWriter"] = []

    def __init__(self, log_dir, **kw):
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        _FakeWriter.instances.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_when_available_and_not_when_disabled(tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeWriter.instances.clear()
    data = make_coco_split(tmp_path / "data")
    cfg = load_config(
        str(write_config(tmp_path / "c.yaml", tiny_config(data, tmp_path / "run", solver={"max_iter": 2})))
    )
    Trainer(cfg, progress=False).train()
    (w,) = _FakeWriter.instances
    assert w.closed and Path(w.log_dir) == tmp_path / "run" / "tensorboard"
    tags = {(t, s) for t, _, s in w.scalars}
    assert {("train/loss", 1), ("train/loss", 2), ("train/lr", 1), ("bbox/AP", 2)} <= tags
    rows = [r for r in _rows(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert [v for t, v, _ in w.scalars if t == "train/loss"] == [r["loss"] for r in rows]

    _FakeWriter.instances.clear()
    cfg.train.tensorboard = False
    cfg.train.output_dir = str(tmp_path / "run2")
    Trainer(cfg, progress=False).train()
    assert _FakeWriter.instances == []

    # a SummaryWriter that fails to open costs nothing either
    class Broken:
        def __init__(self, *a, **k):
            raise OSError("no events for you")

    fake.SummaryWriter = Broken
    cfg.train.tensorboard = True
    cfg.train.output_dir = str(tmp_path / "run3")
    assert Trainer(cfg, progress=False).train().iteration == 2
