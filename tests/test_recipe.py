"""A recipe that follows the run: warmup as a fraction of the run, ``train.time_budget`` (the schedule
fitted to the measured step time, also with ``solver.epochs``, kept on resume) and ``model_best.pth``
(evaluation during training, the best kept by ``train.best_metric``, kept across a resume).

Time budgets run on a fake clock that advances a fixed number of seconds per training step, so every
fitted step count is a known answer; no test measures real time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from train_factory import assert_same_tensors, make_coco_split, tiny_config, write_config

import retinanet.training.trainer as trainer_module
from retinanet.cli import main
from retinanet.config import Config, ConfigError, config_from_dict, load_config
from retinanet.config.validation import parse_duration
from retinanet.inference.coco_eval import STAT_NAMES
from retinanet.training.best import BEST_CHECKPOINT, BestMetric
from retinanet.training.budget import TimeBudget
from retinanet.training.checkpoint import LAST_CHECKPOINT_FILE
from retinanet.training.schedule import effective_warmup, lr_at, solver_lr
from retinanet.training.trainer import Trainer
from retinanet.utils.serialization import load_file

# ------------------------------------------------------------------------------------ warmup


def test_warmup_is_the_smaller_of_iterations_and_fraction():
    assert effective_warmup(1000, 0.1, 90000) == 1000  # the paper's run: unchanged
    assert effective_warmup(500, 0.1, 1030) == 103  # a 15-minute run: no longer half warmup
    assert effective_warmup(2, 0.1, 4) == 0
    assert effective_warmup(150, 1.0, 301) == 150  # the demo states its warmup: fraction 1
    assert effective_warmup(500, 1.0, 300) == 300


def test_paper_schedule_is_unchanged_and_a_short_one_warms_up_over_a_tenth():
    s = Config().solver
    assert s.warmup_fraction == 0.1
    paper = dict(base_lr=0.01, max_iter=90000, warmup_iters=1000, warmup_factor=0.001, steps=(2 / 3, 8 / 9), gamma=0.1)
    for it in (0, 500, 999, 1000, 59999, 60000, 80000):
        assert solver_lr(s, it, 90000) == lr_at(it, **paper)
    assert solver_lr(s, 500, 90000) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    short = load_config(None, ["solver.warmup_iters=500", "solver.max_iter=1030"]).solver
    # 103 warmup iterations: at 50 the factor is 0.001 + (1 - 0.001) * 50 / 103; from 103 on, the full lr
    assert solver_lr(short, 50, 1030) == pytest.approx(0.01 * (0.001 + 0.999 * 50 / 103))
    assert solver_lr(short, 103, 1030) == pytest.approx(0.01)
    assert solver_lr(short, 102, 1030) < 0.01


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "value, seconds", [("15m", 900.0), ("90s", 90.0), ("1h", 3600.0), ("1.5h", 5400.0), ("600", 600.0), (45, 45.0)]
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds
    assert parse_duration(load_config(None, [f"train.time_budget={value}"]).train.time_budget) == seconds


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.time_budget=15x", "train.time_budget"),
        ("train.time_budget=0", "train.time_budget"),
        ("train.time_budget=-1m", "train.time_budget"),
        ("train.time_budget=true", "train.time_budget"),
        ("train.best_metric=mAP", "train.best_metric"),
        ("train.best_metric=AP/", "train.best_metric"),
        ("solver.warmup_fraction=1.5", "solver.warmup_fraction"),
        ("solver.ema_decay=1.0", "solver.ema_decay"),
        ("solver.ema_tau=-1", "solver.ema_tau"),
    ],
)
def test_bad_recipe_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert e.value.key == key and str(e.value).startswith(key)


def test_best_metric_names_are_the_evaluators():
    from retinanet.config.schema import EVAL_METRICS

    assert EVAL_METRICS == STAT_NAMES
    assert load_config(None, ["train.best_metric=AP50"]).train.best_metric == "AP50"
    assert load_config(None, ["train.best_metric=AP/cat"]).train.best_metric == "AP/cat"


# ------------------------------------------------------------------------------------ TimeBudget alone


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _FakeTrainer:
    def __init__(self, max_iter: int, eval_period: int = 0) -> None:
        self.cfg, self.max_iter, self.iteration = Config(), max_iter, 0
        self.cfg.train.eval_period = eval_period
        self.eval_seconds, self.last_eval_seconds = 0.0, None


def test_time_budget_leaves_evaluations_out_of_the_step_time_and_pays_for_them():
    clock = _Clock()
    hook = TimeBudget(t0=0.0, budget_s=1000.0, every=100, clock=clock)
    tr = _FakeTrainer(10000, eval_period=100)
    for it in range(1, 201):
        clock.t += 0.5
        tr.iteration = it
        hook(tr)
        if it == 100:  # an evaluation of 20 s after this step (the trainer evaluates after the hooks)
            clock.t += 20.0
            tr.eval_seconds, tr.last_eval_seconds = 20.0, 20.0
    assert hook.step_s == pytest.approx(0.5)  # (120 - 50 - 20 s of evaluation) / 100 steps
    # 1000 - 120 s spent - 20 s for the final evaluation = 860 s, at 0.5 s + 20 s / 100 per step
    assert tr.max_iter == 200 + int(860 / 0.7)


def test_time_budget_first_measures_after_skip_steps():
    clock = _Clock()
    hook = TimeBudget(t0=0.0, budget_s=100.0, every=50, skip=10, clock=clock)
    tr = _FakeTrainer(1000)
    for it in range(1, 61):
        clock.t += 1.0
        tr.iteration = it
        hook(tr)
        if it < 60:
            assert tr.max_iter == 1000
    assert tr.max_iter == 60 + 40  # window 10..60: 1 s per step; 40 s left


# ------------------------------------------------------------------------------------ Trainer + budget

STEP_S = 1.0  # fake seconds per training step
BUDGET_S = 79  # fits 80 steps (test_time_budget_fits_the_run_and_its_schedule)


class _StepClock:
    """Fake time: ``STEP_S`` per training step (advanced by a hook, after the budget's own hook)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def hook(self, trainer) -> None:
        self.t += STEP_S


def _budget_cfg(data: dict, out: Path, **train) -> Config:
    d = tiny_config(
        {k: v for k, v in data.items() if not k.startswith("val_")},
        out,
        solver={"epochs": 60, "steps": [0.8]},  # 6 images, batches of 2: at most 180 iterations
        train={"checkpoint_period": 1000, "log_period": 1, "time_budget": f"{BUDGET_S}s", **train},
    )
    return config_from_dict(d)


def _lrs(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["lr"] for r in rows if "lr" in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_split(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def budget_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget")
    clock = _StepClock()
    result = Trainer(_budget_cfg(data, out), progress=False, hooks=[clock.hook], clock=clock).train()
    return out, result


def test_time_budget_fits_the_run_and_its_schedule(budget_run):
    out, result = budget_run
    # the budget's hook sees the clock before this step's tick: at step 60 it reads 59 s. Window
    # 10..60 (9 s .. 59 s): 1 s per step; 79 - 59 = 20 s left: 80 steps, fewer than the 180 of
    # solver.epochs=60, and the lr step (0.8 of 80 = 64) still ahead of 60
    assert result.iteration == 80 and result.planned_iter == 180 and not result.stopped_early
    final = load_file(out / "model_final.pth")
    assert final["max_iter"] == 80 and final["time_budget"]["spent_s"] == pytest.approx(80.0)
    # lr: warmup over 2 steps (min(2, 0.1 * max_iter)), then 0.02; the step down at round(0.8 * max_iter):
    # 144 of 180 until the fit at 60, then 64 of 80
    lrs = _lrs(out)
    assert sorted(lrs) == list(range(1, 81))
    expected = {1: 0.002, 2: 0.011, **{i: 0.02 for i in range(3, 65)}, **{i: 0.002 for i in range(65, 81)}}
    assert lrs == pytest.approx(expected)


def test_time_budget_run_resumes_with_its_fitted_schedule(data, budget_run, tmp_path):
    ref_out, _ = budget_run
    out, clock = tmp_path / "run", _StepClock()

    def stop(tr) -> None:
        if tr.iteration == 70:
            tr.request_stop()

    first = Trainer(_budget_cfg(data, out), progress=False, hooks=[clock.hook, stop], clock=clock).train()
    assert first.stopped_early and first.iteration == 70
    ckpt = load_file(out / "model_0000070.pth")
    assert ckpt["max_iter"] == 80 and ckpt["time_budget"]["spent_s"] == pytest.approx(70.0)
    # the same clock goes on (as time does): the resumed run keeps the fitted 80 steps
    second = Trainer(_budget_cfg(data, out), resume=True, progress=False, hooks=[clock.hook], clock=clock).train()
    assert second.iteration == 80 and not second.stopped_early and second.planned_iter == 180
    a, b = load_file(out / "model_final.pth"), load_file(ref_out / "model_final.pth")
    assert_same_tensors(a["model"], b["model"], "model ")
    assert _lrs(out) == _lrs(ref_out)


def test_train_cli_with_a_time_budget_prints_steps_and_best(data, tmp_path, capsys):
    # the first measurement is at step 60: a 4-step run is never shortened, whatever this machine's speed
    out = tmp_path / "run"
    cfg = tiny_config(data, out, solver={"max_iter": 4}, train={"time_budget": "1h", "eval_period": 2})
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "time budget: 4 of at most 4 steps fit" in printed
    best = load_file(out / BEST_CHECKPOINT)["best"]
    assert f"best AP {best['value']:.4f} at iteration {best['iteration']}: {out / BEST_CHECKPOINT}" in printed
    # every evaluation row carries the best so far (strictly better replaces it)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "bbox/AP" in r]
    assert [r["iter"] for r in evals] == [2, 4]
    top = None
    for r in evals:
        if top is None or r["bbox/AP"] > top[0]:
            top = (r["bbox/AP"], r["iter"])
        assert (r["best/AP"], r["best/iter"]) == top
    assert (best["value"], best["iteration"]) == top


# ------------------------------------------------------------------------------------ best checkpoint


def test_best_metric_keeps_strictly_better_defined_values():
    b = BestMetric("AP")
    assert not b.update({"AP": -1.0}, 2)  # pycocotools' "undefined"
    assert b.update({"AP": 0.2}, 4) and (b.value, b.iteration) == (0.2, 4)
    assert not b.update({"AP": 0.2}, 6)  # a tie keeps the earlier
    assert not b.update({"AP50": 0.9}, 8)  # not the metric
    assert b.update({"AP": 0.3}, 10) and b.state_dict() == {"metric": "AP", "value": 0.3, "iteration": 10}
    other = BestMetric("AP50")
    other.load_state_dict(b.state_dict())  # another metric's record is not taken
    assert other.value is None
    again = BestMetric("AP")
    again.load_state_dict(b.state_dict())
    assert (again.value, again.iteration) == (0.3, 10)


SCRIPTED_AP = {2: 0.2, 4: 0.5, 6: 0.3}  # evaluations at 2, 4 and the final one at 6


@pytest.fixture
def scripted_evaluation(monkeypatch):
    """The evaluation returns SCRIPTED_AP[iteration] (and records which weights it was given)."""
    seen = {}

    def fake(model, val_set, cfg, device, out, iteration, rank, world, progress, log_to, best):
        seen[iteration] = {k: v.clone() for k, v in model.state_dict().items()}
        metrics = {"AP": SCRIPTED_AP[iteration], "AP50": 0.9}
        return metrics, best.update(metrics, iteration)

    monkeypatch.setattr(trainer_module, "evaluate_during_training", fake)
    return seen


def _best_cfg(data: dict, out: Path, **train) -> Config:
    return config_from_dict(
        tiny_config(data, out, solver={"max_iter": 6}, train={"eval_period": 2, "keep_checkpoints": 1, **train})
    )


def test_model_best_is_the_best_evaluation(data, tmp_path, scripted_evaluation):
    out = tmp_path / "run"
    result = Trainer(_best_cfg(data, out), progress=False).train()
    assert (result.best_metric, result.best_value, result.best_iteration) == ("AP", 0.5, 4)
    assert result.best_checkpoint == out / BEST_CHECKPOINT and result.metrics["AP"] == 0.3
    best = load_file(out / BEST_CHECKPOINT)
    assert best["best"] == {"metric": "AP", "value": 0.5, "iteration": 4} and best["iteration"] == 4
    assert "optimizer" not in best and "rng" not in best and best["config"]["train"]["best_metric"] == "AP"
    assert_same_tensors(best["model"], scripted_evaluation[4], "model_best ")  # the weights evaluated at 4
    # not pruned by keep_checkpoints=1, not a resume point
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_0000006.pth", "model_best.pth", "model_final.pth"]
    assert (out / LAST_CHECKPOINT_FILE).read_text().strip() == "model_final.pth"
    # every checkpoint holds the best so far (the one at 6 after the evaluation at 6)
    assert load_file(out / "model_final.pth")["best"] == best["best"]


def test_resumed_run_keeps_the_best_so_far(data, tmp_path, scripted_evaluation):
    out = tmp_path / "run"

    def stop(tr) -> None:
        if tr.iteration == 4:
            tr.request_stop()

    first = Trainer(_best_cfg(data, out), progress=False, hooks=[stop]).train()
    assert first.stopped_early and first.best_iteration == 4
    assert load_file(out / "model_0000004.pth")["best"]["value"] == 0.5  # evaluated before the checkpoint
    written = (out / BEST_CHECKPOINT).read_bytes()
    second = Trainer(_best_cfg(data, out), resume=True, progress=False).train()
    assert second.iteration == 6 and (second.best_value, second.best_iteration) == (0.5, 4)
    assert (out / BEST_CHECKPOINT).read_bytes() == written  # 0.3 at 6 did not replace 0.5 at 4


def test_best_metric_per_class_must_name_a_class(data, tmp_path):
    with pytest.raises(ConfigError, match="no class 'cow'"):
        Trainer(_best_cfg(data, tmp_path / "run", best_metric="AP/cow"), progress=False).train()


def test_best_by_another_metric(data, tmp_path, scripted_evaluation):
    result = Trainer(_best_cfg(data, tmp_path / "run", best_metric="AP50"), progress=False).train()
    assert (result.best_metric, result.best_value, result.best_iteration) == ("AP50", 0.9, 2)  # ties keep 2
    assert math.isclose(load_file(result.best_checkpoint)["best"]["value"], 0.9)
