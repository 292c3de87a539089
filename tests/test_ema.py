"""Weight EMA (``solver.ema``): the average against hand-computed values, frozen weights and buffers
copied, DDP/DataParallel unwrapped; in training: bit-exact resume of the EMA, evaluation with the EMA
weights, and :func:`load_detector` (prediction, eval, export) loading them from checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from train_factory import assert_same_tensors, make_coco_split, tiny_config

from retinanet.config import config_from_dict
from retinanet.data.build import build_dataset, build_eval_loader
from retinanet.inference.loop import predict_batches
from retinanet.inference.predictor import load_detector
from retinanet.training.ema import ModelEMA
from retinanet.training.trainer import Trainer
from retinanet.utils.serialization import load_file


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)
        self.bn = nn.BatchNorm1d(2)


def _set(net: _Net, w: float, frozen: float, mean: float) -> None:
    with torch.no_grad():
        net.lin.weight.fill_(w)
        net.lin.bias.fill_(-w)
        net.frozen.fill_(frozen)
        net.bn.running_mean.fill_(mean)
        net.bn.num_batches_tracked.fill_(int(mean))


def test_ema_follows_the_ramped_decay_and_copies_frozen_weights_and_buffers():
    net = _Net()
    _set(net, 0.0, 0.0, 0.0)
    ema = ModelEMA(nn.DataParallel(net), decay=0.9, tau=2.0)  # a wrapped model is unwrapped
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    expected = 0.0
    for n, w in enumerate([1.0, 3.0, -2.0], start=1):
        _set(net, w, frozen=10.0 * n, mean=5.0 * n)
        ema.update(nn.DataParallel(net))
        d = 0.9 * (1 - math.exp(-n / 2.0))  # by hand, in float64
        expected = d * expected + (1 - d) * w
        assert ema.updates == n
        assert ema.module.lin.weight.flatten().tolist() == pytest.approx([expected] * 2, abs=1e-6)
        assert ema.module.lin.bias.item() == pytest.approx(-expected, abs=1e-6)
        assert torch.equal(ema.module.frozen, net.frozen)  # copied, not averaged
        assert torch.equal(ema.module.bn.running_mean, net.bn.running_mean)
        assert int(ema.module.bn.num_batches_tracked) == int(5.0 * n)
    assert ema.decay_at(10**9) == pytest.approx(0.9)


def test_without_a_ramp_the_decay_is_constant():
    net = _Net()
    _set(net, 2.0, 0.0, 0.0)
    ema = ModelEMA(net, decay=0.75, tau=0.0)
    _set(net, 6.0, 0.0, 0.0)
    ema.update(net)
    assert ema.module.lin.weight.flatten().tolist() == pytest.approx([0.75 * 2.0 + 0.25 * 6.0] * 2)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(net, decay=1.0)


# ------------------------------------------------------------------------------------ in training

MAX_ITER = 8
EMA = {"ema": True, "ema_decay": 0.9, "ema_tau": 2.0}  # fast, so the EMA is far from the raw weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_split(tmp_path_factory.mktemp("data"))


def _cfg(data: dict, out: Path, val: bool = False, **train):
    paths = data if val else {k: v for k, v in data.items() if not k.startswith("val_")}
    d = tiny_config(paths, out, solver={"max_iter": MAX_ITER, **EMA}, train={"checkpoint_period": 3, **train})
    d["model"]["loss_normalizer"] = "ema"
    return config_from_dict(d)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ema_ref")
    Trainer(_cfg(data, out), progress=False).train()
    return load_file(out / "model_final.pth")


def test_ema_is_saved_and_resumes_bit_exactly(data, reference, tmp_path):
    ref = reference
    assert ref["ema_updates"] == MAX_ITER and list(ref["ema"]) == list(ref["model"])
    key = "head.classification_head.cls_logits.weight"
    assert not torch.equal(ref["ema"][key], ref["model"][key])  # a real average, not a copy
    frozen = "backbone.body.features.0.0.weight"  # freeze_at 2: the stem is frozen, so copied
    assert torch.equal(ref["ema"][frozen], ref["model"][frozen])

    out = tmp_path / "run"

    def stop(tr) -> None:
        if tr.iteration == MAX_ITER // 2:
            tr.request_stop()

    assert Trainer(_cfg(data, out), progress=False, hooks=[stop]).train().stopped_early
    half = load_file(out / f"model_{MAX_ITER // 2:07d}.pth")
    assert half["ema_updates"] == MAX_ITER // 2
    Trainer(_cfg(data, out), resume=True, progress=False).train()
    final = load_file(out / "model_final.pth")
    assert final["ema_updates"] == MAX_ITER
    assert_same_tensors(final["model"], ref["model"], "model ")
    assert_same_tensors(final["ema"], ref["ema"], "ema ")


def test_resume_without_ema_state_starts_the_average_from_the_resumed_weights(data, tmp_path):
    out = tmp_path / "run"
    d = tiny_config({k: v for k, v in data.items() if not k.startswith("val_")}, out, solver={"max_iter": 3})
    Trainer(config_from_dict(d), progress=False).train()
    assert "ema" not in load_file(out / "model_final.pth")
    d["solver"].update(max_iter=4, **EMA)
    Trainer(config_from_dict(d), resume=True, progress=False).train()
    final = load_file(out / "model_final.pth")
    assert final["ema_updates"] == 1 and not torch.equal(
        final["ema"]["head.classification_head.cls_logits.weight"],
        final["model"]["head.classification_head.cls_logits.weight"],
    )


def _scores(model, cfg) -> list[float]:
    ds = build_dataset(cfg, train=False)
    loader = build_eval_loader(ds, cfg)
    with torch.no_grad():
        return [s for _, det in predict_batches(model, loader, torch.device("cpu")) for s in det["scores"].tolist()]


def test_evaluation_prediction_and_best_use_the_ema_weights(data, tmp_path):
    out = tmp_path / "run"
    result = Trainer(_cfg(data, out, val=True), progress=False).train()
    final = out / "model_final.pth"
    det = load_detector(final)
    assert det.ema
    assert_same_tensors(det.model.state_dict(), load_file(final)["ema"], "loaded ")
    raw = load_detector(final, overrides=["solver.ema=false"])
    assert not raw.ema
    assert_same_tensors(raw.model.state_dict(), load_file(final)["model"], "raw ")
    # the training's final evaluation scored the EMA weights: the same detections as the loaded EMA model
    written = json.loads((out / f"detections_{MAX_ITER:07d}.json").read_text())
    ema_scores = _scores(det.model.fuse_for_inference(), det.cfg)
    assert sorted(r["score"] for r in written) == pytest.approx(sorted(ema_scores), abs=1e-6)
    assert sorted(ema_scores) != pytest.approx(sorted(_scores(raw.model.fuse_for_inference(), raw.cfg)), abs=1e-6)
    # model_best holds the EMA too, and loads it
    assert result.best_checkpoint is not None and load_detector(result.best_checkpoint).ema


def test_model_weights_takes_the_ema_of_an_ema_checkpoint(tmp_path):
    """Fine-tuning (model.weights) from a checkpoint trained with solver.ema starts from its EMA weights,
    as prediction does; without solver.ema in its config, from its raw weights."""
    import model_factory

    from retinanet.config import config_to_dict
    from retinanet.modeling.build import build_model
    from retinanet.modeling.retinanet import RetinaNet
    from retinanet.utils.serialization import save_file

    cfg = model_factory.tiny_config(["solver.ema=true"])
    torch.manual_seed(0)
    raw = RetinaNet.from_config(cfg).state_dict()
    torch.manual_seed(1)
    ema = RetinaNet.from_config(cfg).state_dict()
    key = "backbone.fpn.inner_blocks.0.0.weight"
    assert not torch.equal(raw[key], ema[key])
    for flag, expected in ((True, ema), (False, raw)):
        stored = config_to_dict(model_factory.tiny_config([f"solver.ema={str(flag).lower()}"]))
        path = save_file(tmp_path / f"ema_{flag}.pth", {"model": raw, "ema": ema, "config": stored})
        model = build_model(model_factory.tiny_config([f"model.weights={path}"]))
        assert torch.equal(model.state_dict()[key], expected[key])
