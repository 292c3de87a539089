"""Learning-rate schedule and the deterministic, resumable, shardable data order."""

import itertools
import math
import random

import pytest
import torch

from retinanet.data.sampler import SeededDataset, TrainBatchSampler, sample_seed
from retinanet.training.schedule import lr_at


def test_paper_schedule():
    kw = dict(base_lr=0.01, max_iter=90000, warmup_iters=1000, warmup_factor=0.001, steps=(2 / 3, 8 / 9), gamma=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.01 * 0.001)
    assert lr_at(500, **kw) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert lr_at(1000, **kw) == pytest.approx(0.01)
    assert lr_at(59999, **kw) == pytest.approx(0.01)
    assert lr_at(60000, **kw) == pytest.approx(0.001)
    assert lr_at(79999, **kw) == pytest.approx(0.001)
    assert lr_at(80000, **kw) == pytest.approx(0.0001)
    assert lr_at(89999, **kw) == pytest.approx(0.0001)


def test_cosine_schedule():
    kw = dict(
        base_lr=0.02,
        max_iter=1000,
        warmup_iters=100,
        warmup_factor=0.001,
        steps=(2 / 3, 8 / 9),
        gamma=0.1,
        schedule="cosine",
    )
    assert lr_at(0, **kw) == pytest.approx(0.02 * 0.001)
    # warmup multiplies the cosine value: at 50, half warmed up and cos(pi * 0.05) on the way down
    assert lr_at(50, **kw) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5) * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert lr_at(500, **kw) == pytest.approx(0.01)  # half way: half the base lr
    assert lr_at(750, **kw) == pytest.approx(0.02 * 0.5 * (1 - math.sqrt(0.5)))
    assert lr_at(1000, **kw) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(i, **kw) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never increases after warmup


def test_schedule_is_validated():
    from retinanet.config import Config, ConfigError, validate

    cfg = Config()
    cfg.solver.schedule = "linear"
    with pytest.raises(ConfigError, match="solver.schedule"):
        validate(cfg)


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_two_processes_split_the_one_process_batch():
    one = _take(TrainBatchSampler(37, 8, seed=3), 12)
    r0 = _take(TrainBatchSampler(37, 8, seed=3, rank=0, world_size=2), 12)
    r1 = _take(TrainBatchSampler(37, 8, seed=3, rank=1, world_size=2), 12)
    for g, a, b in zip(one, r0, r1):
        assert len(a) == len(b) == 4
        assert a + b == g


def test_epochs_are_permutations_and_differ():
    s = TrainBatchSampler(40, 8, seed=0)
    batches = _take(s, 10)  # 5 batches per epoch
    e0 = sorted(i for b in batches[:5] for i, e in b)
    e1 = [i for b in batches[5:] for i, e in b]
    assert e0 == list(range(40))
    assert sorted(e1) == list(range(40)) and e1 != [i for b in batches[:5] for i, e in b]
    assert {e for b in batches[:5] for _, e in b} == {0} and {e for b in batches[5:] for _, e in b} == {1}


def test_resume_continues_the_same_order():
    full = _take(TrainBatchSampler(23, 4, seed=1, max_iter=20), 20)
    resumed = _take(TrainBatchSampler(23, 4, seed=1, start_iter=13, max_iter=20), 100)
    assert resumed == full[13:]
    assert len(TrainBatchSampler(23, 4, start_iter=13, max_iter=20)) == 7


def test_tiny_dataset_and_bad_batch():
    b = _take(TrainBatchSampler(3, 8), 2)
    assert all(len(x) == 8 for x in b)
    with pytest.raises(ValueError, match="divisible"):
        TrainBatchSampler(10, 3, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        TrainBatchSampler(0, 2)


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return (i, random.random(), torch.rand(1).item())


def test_seeded_dataset_makes_augmentation_a_function_of_the_sample():
    ds = SeededDataset(_RandomItems(), seed=5)
    a = ds[(3, 1)]
    random.random(), torch.rand(5)  # unrelated draws in between change nothing
    assert ds[(3, 1)] == a
    assert ds[(3, 2)] != a and ds[(4, 1)] != a
    assert sample_seed(5, 1, 3) != sample_seed(5, 3, 1)


@pytest.mark.parametrize("factor", [1.0, 0.25])
def test_backbone_lr_factor_gives_the_backbone_its_own_learning_rate(tmp_path, factor):
    """solver.backbone_lr_factor: the backbone body's trainable parameters step at lr * factor, the
    FPN and head at lr; with 1.0 there is one parameter group (old checkpoints resume)."""
    from train_factory import make_coco_split, tiny_config

    from retinanet.config import config_from_dict
    from retinanet.training.trainer import Trainer

    data = make_coco_split(tmp_path / "data")
    cfg = config_from_dict(
        tiny_config(
            data,
            tmp_path / "out",
            solver={"max_iter": 2, "backbone_lr_factor": factor, "momentum": 0.0, "weight_decay": 0.0},
        )
    )
    seen = []
    trainer = Trainer(cfg, progress=False, hooks=[lambda t: seen.append([g["lr"] for g in t.optimizer.param_groups])])
    trainer.train()
    groups = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    if factor == 1.0:
        assert len(groups) == 1 and all(len(s) == 1 for s in seen)
        return
    body, rest = groups
    assert {names[id(p)].split(".")[1] for p in body["params"]} == {"body"}
    assert all(not names[id(p)].startswith("backbone.body.") for p in rest["params"])
    assert len(body["params"]) > 0 and len(rest["params"]) > 0
    for lr_body, lr_rest in seen:
        assert lr_body == pytest.approx(factor * lr_rest) and lr_rest > 0
