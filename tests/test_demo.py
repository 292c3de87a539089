"""The shortened demo (``retinanet demo --quick``, about a minute on 2 cores) end to end, through the
CLI: dataset generated, model trained, COCO AP measured on the held-out split above what an untrained
or broken model reaches, pictures and summary written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retinanet.cli import main

# An untrained model (prior 0.01 everywhere, below the 0.05 score threshold) detects nothing: AP 0.
# The quick demo (300 steps of 2 images, 160 training scenes, evaluated at 320 px) measured AP 0.033,
# AP50 0.080 on this 2-core machine (0.020 / 0.057 with the earlier recipe, evaluated at 256); the
# bounds are ~25-30% of that, far above what random boxes reach (~0.001).
MIN_QUICK_AP = 0.008
MIN_QUICK_AP50 = 0.025


@pytest.mark.slow
def test_quick_demo_learns_and_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["AP"] >= MIN_QUICK_AP, summary
    assert summary["AP50"] >= MIN_QUICK_AP50, summary
    assert f"COCO AP {summary['AP']:.3f}" in printed
    for key in ("gallery", "curves", "checkpoint", "metrics"):
        path = out / summary[key].split("/")[-1]
        assert path.is_file() and path.stat().st_size > 1000, key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    data = json.loads((tmp_path / summary["dataset"].split("/")[-1] / "annotations" / "instances_val.json").read_text())
    assert len(data["images"]) == 40 and len(data["categories"]) == 8


def test_fit_iterations() -> None:
    from retinanet.apps.demo import fit_iterations

    # plenty of time: the planned number, no more
    assert fit_iterations(200, 0.1, 1000.0, 2800, 2 / 3) == 2800
    # 300 s left at 0.2 s per step after 200 steps: 1500 more
    assert fit_iterations(200, 0.2, 300.0, 2800, 2 / 3) == 1700
    # hopeless: just enough that the first lr step (2/3 of the total) is still ahead of step 600
    assert fit_iterations(600, 1.0, 10.0, 2800, 2 / 3) == 901
    assert fit_iterations(600, 1.0, -50.0, 2800, 2 / 3) == 901


class _FakeTrainer:
    def __init__(self, max_iter: int) -> None:
        from retinanet.config import Config

        self.cfg, self.max_iter, self.iteration = Config(), max_iter, 0


def test_time_budget_lowers_max_iter_only_before_the_first_lr_step(monkeypatch) -> None:
    import retinanet.apps.demo as demo

    clock = {"t": 0.0}
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock["t"])
    hook = demo.TimeBudget(t0=0.0, budget_s=600.0, reserve_s=60.0, every=100)
    tr = _FakeTrainer(2800)
    for it in range(1, 201):  # 0.25 s per step
        clock["t"] += 0.25
        tr.iteration = it
        hook(tr)
    # at step 200, 50 s spent: (600 - 50 - 60) / 0.25 = 1960 more steps
    assert tr.max_iter == 200 + 1960
    assert hook.step_s == pytest.approx(0.25)  # what the demo's summary reports
    for it in range(201, 1501):  # the machine gets faster: back up, never above the plan
        clock["t"] += 0.05
        tr.iteration = it
        hook(tr)
    assert tr.max_iter == 2800
    assert hook.step_s == pytest.approx(0.05)
    for it in range(1501, 2001):  # much slower: at step 1600 the budget is gone, so the fewest steps
        clock["t"] += 1.0  # that keep the first lr step (2/3 of the total) ahead: 1.5 * 1600 + 1
        tr.iteration = it
        hook(tr)
        if it == 1600:
            assert tr.max_iter == 2401
    assert tr.max_iter == 2401  # from step 1700 on, past 2/3 of 2401: nothing changes any more


def test_trainer_ends_normally_when_a_hook_lowers_max_iter(tmp_path) -> None:
    from retinanet.apps.demo import demo_config
    from retinanet.apps.synth import ensure_synthetic_coco
    from retinanet.training.trainer import Trainer

    cfg = demo_config(
        tmp_path / "demo",
        quick=True,
        overrides=["solver.max_iter=12", "solver.warmup_iters=2", "train.checkpoint_period=100"],
    )
    ensure_synthetic_coco(Path(cfg.data.train_images).parent, num_train=8, num_val=4, image_size=(256, 256), seed=0)

    def lower(tr) -> None:
        if tr.iteration == 3:
            tr.max_iter = 5

    res = Trainer(cfg, resume=False, progress=False, hooks=[lower]).train()
    assert res.iteration == 5 and not res.stopped_early
    assert res.final_checkpoint.name == "model_final.pth" and "AP" in res.metrics


@pytest.mark.slow
def test_demo_reports_when_the_time_budget_set_the_step_count(tmp_path, capsys, monkeypatch) -> None:
    """A budget too small for the plan: training stops at the fewest steps that keep the lr schedule
    (31 of 40), and the summary says how many steps fit at what measured time per step.

    Small and quick: 3 + 3 scenes of 64 px (fewer than 4 per split: rendered in this process, no
    worker pool) and the budget's measurement windows 10 steps long instead of 100. The first window
    starts at step 10 and ends at step 20, when the 1 s budget is long gone, so the run gets the fewest
    steps that keep the first lr step (2/3 of the total) ahead of step 20: ceil(20 * 3 / 2) + 1 = 31."""
    import dataclasses

    from retinanet.apps import demo

    budget_cls = demo.TimeBudget
    monkeypatch.setattr(demo, "TimeBudget", lambda *a, **k: budget_cls(*a, every=10, **k))
    plan = dataclasses.replace(
        demo.QUICK,
        num_train=3,
        num_val=3,
        size=64,
        test_size=None,
        objects_per_image=(1, 3),
        distractors_per_image=(0, 2),
        max_iter=40,
        warmup=10,
        time_budget_s=1.0,
    )
    assert demo.demo_config(tmp_path / "demo", plan=plan).solver.steps[0] == pytest.approx(2 / 3)
    summary = demo.run_demo(tmp_path / "demo", plan=plan, progress=False)
    assert summary["iterations"] == 31 and summary["steps_planned"] == 40
    assert summary["ms_per_step"] > 0
    printed = capsys.readouterr().out
    assert f"time budget: 31 of up to 40 steps fit here ({summary['ms_per_step']:.0f} ms per step)" in printed
