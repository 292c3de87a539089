"""``retinanet ablate``: plan parsing and its errors, cell expansion (product and zipped axes), the packaged
paper plans, resumability (finished runs skipped, killed runs resumed), divergence reported as such,
the mean / spread over seeds against hand-computed values, and the written tables through the CLI.

Runs use the tiny model of ``train_factory`` (MobileNetV2 random init, 32-channel FPN, ~0.05 s per step)
for a few iterations.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from train_factory import make_coco_split, tiny_config

from retinanet.apps.ablate import run_dir, run_plan
from retinanet.apps.ablate_load import list_plans, load_plan
from retinanet.apps.ablate_plan import PlanError
from retinanet.apps.ablate_report import markdown_table, summarize
from retinanet.cli import main
from retinanet.training.trainer import Trainer

DATA_OVERRIDES = [
    "data.train_images=/d/train",
    "data.train_annotations=/d/train.json",
    "data.val_images=/d/val",
    "data.val_annotations=/d/val.json",
]


def _write_plan(path: Path, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(fields, sort_keys=False, allow_unicode=True))
    return path


def _base_plan(tmp_path: Path, **fields: Any) -> Path:
    """A plan on the paper's R50 preset with fake data paths (parsing only: nothing is read)."""
    plan = {
        "title": "t",
        "base": "retinanet_R50_FPN_1x",
        "data": {"train_images": "/d/t", "train_annotations": "/d/t.json", "val_images": "/d/v",
                 "val_annotations": "/d/v.json"},
        "iterations": 10,
        "seeds": 2,
        "axes": [{"model.focal_gamma": [0.0, 2.0]}],
    }  # fmt: skip
    plan.update(fields)
    return _write_plan(tmp_path / "plan.yaml", **plan)


# ---------------------------------------------------------------------------------------------- parsing
def test_cells_are_the_product_of_groups_and_zipped_keys_move_together(tmp_path):
    axes = [
        {"model.cls_loss": ["focal", "ce"]},
        {"name": "g/a", "model.focal_gamma": [0.0, 1.0, 2.0], "model.focal_alpha": [0.75, 0.5, 0.25]},
    ]
    plan = load_plan(_base_plan(tmp_path, axes=axes))
    cells = plan.cells()
    expected = [  # written out by hand: first group outermost, the second's pairs kept together
        ("focal", 0.0, 0.75), ("focal", 1.0, 0.5), ("focal", 2.0, 0.25),
        ("ce", 0.0, 0.75), ("ce", 1.0, 0.5), ("ce", 2.0, 0.25),
    ]  # fmt: skip
    got = [(c.values["model.cls_loss"], c.values["model.focal_gamma"], c.values["model.focal_alpha"]) for c in cells]
    assert got == expected
    assert [c.index for c in cells] == list(range(6))
    assert cells[4].positions == (1, 1) and cells[4].labels == ("ce", "focal_gamma=1, focal_alpha=0.5")
    assert len({c.slug for c in cells}) == 6
    assert plan.seeds == (0, 1) and plan.iterations == 10 and plan.minutes is None
    cfg = plan.cell_config(cells[5], seed=1, output_dir=tmp_path / "r")
    assert (cfg.model.cls_loss, cfg.model.focal_gamma, cfg.model.focal_alpha) == ("ce", 2.0, 0.25)
    assert cfg.train.seed == 1 and cfg.solver.max_iter == 10 and cfg.train.output_dir == str(tmp_path / "r")
    assert cfg.model.backbone.name == "resnet50"  # the rest is the base preset's
    # a mapping of axes is one group per key (Cartesian), and the budget in minutes sets the time budget
    plan2 = load_plan(_base_plan(tmp_path, axes={"model.focal_gamma": [1.0, 2.0], "model.prior": [0.01, 0.1]},
                                 iterations=None, minutes=1.5))  # fmt: skip
    assert [tuple(c.values.values()) for c in plan2.cells()] == [(1.0, 0.01), (1.0, 0.1), (2.0, 0.01), (2.0, 0.1)]
    assert plan2.cell_config(plan2.cells()[0], 0, tmp_path).train.time_budget == 90.0


@pytest.mark.parametrize(
    "fields, needles",
    [
        ({"axes": [{"model.focal_gama": [1.0, 2.0]}]}, ["axes[0]", "model.focal_gama", "Did you mean 'focal_gamma'"]),
        ({"axes": [{"model.focal_alpha": [0.25, 1.5]}]}, ["axes[0]", "model.focal_alpha = 1.5", "must be < 1"]),
        (
            {"axes": [{"model.focal_gamma": [1.0, 2.0], "model.focal_alpha": [0.25]}]},
            ["axes[0]", "zipped", "model.focal_alpha: 1"],
        ),
        ({"axes": [{"train.seed": [1, 2]}]}, ["axes[0]", "train.seed", "set by the runner"]),
        ({"axes": [{"model.prior": 0.01}]}, ["axes[0]", "model.prior", "non-empty list"]),
        ({"axes": []}, ["axes", "non-empty list"]),
        ({"axes": [{"model.prior": [0.1]}, {"model.prior": [0.2]}]}, ["axes[1]", "already swept by axes[0]"]),
        ({"iteratons": 5}, ["unknown plan field 'iteratons'", "Did you mean 'iterations'"]),
        ({"minutes": 3}, ["iterations or minutes"]),
        ({"iterations": 0}, ["iterations", ">= 1"]),
        ({"seeds": [0, 0]}, ["seeds", "repeated"]),
        ({"seeds": "three"}, ["seeds"]),
        ({"paper": [1.0]}, ["paper", "2 entries"]),
        ({"set": {"solver.base_lrr": 0.1}}, ["set", "solver.base_lrr"]),
        ({"data": {"val_annotations": None, "val_images": None}}, ["validation set", "data.val_annotations"]),
        ({"base": "no_such_preset"}, ["base", "no_such_preset"]),
    ],
)
def test_plan_errors_name_the_file_and_the_field(tmp_path, fields, needles):
    path = _base_plan(tmp_path, **fields)
    with pytest.raises(PlanError) as e:
        load_plan(path)
    msg = str(e.value)
    assert str(path) in msg or "base" in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_command_line_replaces_axes_budget_seeds_and_rejects_swept_overrides(tmp_path):
    path = _base_plan(
        tmp_path, axes=[{"label": ["a", "b"], "model.focal_gamma": [0.0, 2.0], "model.focal_alpha": [0.75, 0.25]}]
    )
    plan = load_plan(
        path, axes=["model.focal_gamma=[1, 3]", "model.focal_alpha=[0.5, 0.5]"], iterations=3, seeds=[7],
        overrides=["solver.base_lr=0.5"],
    )  # fmt: skip
    assert [(c.values["model.focal_gamma"], c.values["model.focal_alpha"]) for c in plan.cells()] == [
        (1, 0.5),
        (3, 0.5),
    ]
    assert plan.cells()[0].labels == ("focal_gamma=1, focal_alpha=0.5",)  # labels rebuilt from the new values
    assert plan.seeds == (7,) and plan.iterations == 3
    assert plan.cell_config(plan.cells()[0], 7, tmp_path).solver.base_lr == 0.5
    with pytest.raises(PlanError, match="zipped"):  # one key of a zipped pair changes length alone
        load_plan(path, axes=["model.focal_gamma=[1, 2, 3]"])
    with pytest.raises(PlanError, match="not an axis of this plan"):
        load_plan(path, axes=["model.prior=[0.1]"])
    with pytest.raises(PlanError, match="sweeps this key"):
        load_plan(path, overrides=["model.focal_gamma=1.0"])
    with pytest.raises(PlanError, match="set by the runner"):
        load_plan(path, overrides=["train.seed=3"])
    with pytest.raises(PlanError, match="Did you mean 'table1a_alpha'"):
        load_plan("table1a_alpah")


def test_packaged_plans_hold_the_papers_grid_points():
    assert {"table1a_alpha", "table1b_gamma", "table1c_anchors", "table1d_ohem", "table1e_speed"} <= set(list_plans())
    a = load_plan("table1a_alpha", overrides=DATA_OVERRIDES)
    assert [c.values["model.focal_alpha"] for c in a.cells()] == [0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999]
    assert a.config["model"]["cls_loss"] == "ce" and a.config["data"]["test_min_size"] == 600
    assert [p["AP"] for p in a.paper] == [0.0, 10.8, 30.2, 31.1, 30.8, 28.7, 25.1]  # design notes, Table 1a
    b = load_plan("table1b_gamma", overrides=DATA_OVERRIDES)
    pairs = [(c.values["model.focal_gamma"], c.values["model.focal_alpha"]) for c in b.cells()]
    assert pairs == [(0, 0.75), (0.1, 0.75), (0.2, 0.75), (0.5, 0.5), (1, 0.25), (2, 0.25), (5, 0.25)]
    c = load_plan("table1c_anchors", overrides=DATA_OVERRIDES)
    grid = [(1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3), (4, 3)]  # (scales per octave, aspect ratios)
    for cell, (n, r) in zip(c.cells(), grid):
        assert cell.values["model.anchors.scales"] == pytest.approx([2 ** (k / n) for k in range(n)], rel=1e-12)
        assert cell.values["model.anchors.ratios"] == ([1.0] if r == 1 else [0.5, 1.0, 2.0])
    d = load_plan("table1d_ohem", overrides=DATA_OVERRIDES)
    assert d.config["model"]["backbone"]["name"] == "resnet101"
    methods = [(v["model.cls_loss"], v["model.ohem_batch"], v["model.ohem_nms"], v["model.ohem_pos_fraction"])
               for v in (x.values for x in d.cells())]  # fmt: skip
    assert methods[3] == ("ohem", 128, 0.5, None) and d.paper[3] == {"AP": 32.8}  # the paper's best OHEM
    assert methods[-1][0] == "focal" and d.paper[-1] == {"AP": 36.0}
    assert {m[3] for m in methods[6:9]} == {0.25}  # the "1:3" variant
    e = load_plan("table1e_speed", overrides=DATA_OVERRIDES)
    assert e.speed and len(e.cells()) == 10
    last = e.cell_config(e.cells()[-1], 0, "x")
    assert last.model.backbone.name == "resnet101" and last.data.min_size == (800,) and last.data.max_size == 1333
    assert e.paper[0] == {"AP": 30.5, "ms": 64.0}
    init = load_plan("init_prior", overrides=DATA_OVERRIDES)
    assert [c.values["model.prior"] for c in init.cells()] == [0.5, 0.01]  # 0.5: bias 0, no prior
    assert init.config["model"]["cls_loss"] == "ce" and init.config["model"]["focal_alpha"] < 0  # standard CE
    with pytest.raises(PlanError, match="validation set"):  # a packaged plan needs the user's data
        load_plan("table1a_alpha")


# ---------------------------------------------------------------------------------------------- report
def _rec(cell: int, seed: int, ap: float, aps: float = 0.1, status: str = "finished", step: int = 0) -> dict:
    if status == "diverged":
        return {"cell": cell, "seed": seed, "status": "diverged", "step": step}
    metrics = {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.1, "APs": aps, "APm": 0.5, "APl": -1.0}
    return {"cell": cell, "seed": seed, "status": "finished", "metrics": metrics, "iterations": 10,
            "speed": {"median_ms": 10.0 * (seed + 1)}}  # fmt: skip


def test_summary_mean_and_sample_std_over_seeds(tmp_path):
    plan = load_plan(_base_plan(tmp_path, seeds=3, speed=True, axes=[{"model.focal_gamma": [0.0, 2.0]}]))
    records = [_rec(0, 0, 0.30, aps=-1.0), _rec(0, 1, 0.50), _rec(0, 2, 0.40), _rec(1, 0, 0.2)]
    records.append(_rec(1, 1, 0.0, status="diverged", step=17))
    s = summarize(plan, records)
    ap = s[0]["metrics"]["AP"]
    # by hand: mean (0.3 + 0.5 + 0.4) / 3 = 0.4; sample variance (0.01 + 0.01 + 0) / 2 = 0.01 -> std 0.1
    assert ap["mean"] == pytest.approx(0.4, abs=1e-12) and ap["std"] == pytest.approx(0.1, abs=1e-12)
    assert ap["n"] == 3
    assert s[0]["metrics"]["APs"]["mean"] == pytest.approx(0.1) and s[0]["metrics"]["APs"]["n"] == 2  # -1 left out
    assert s[0]["metrics"]["APl"]["mean"] is None  # no objects of that size in any run
    assert s[0]["ms_per_image"]["mean"] == pytest.approx(20.0) and s[0]["ms_per_image"]["std"] == pytest.approx(10.0)
    assert s[1]["finished"] == 1 and s[1]["diverged"] == [{"seed": 1, "step": 17}] and s[1]["pending"] == 1
    assert s[1]["metrics"]["AP"] == {"mean": 0.2, "std": None, "n": 1, "values": [0.2]}
    table = markdown_table(plan, s)
    rows = table.splitlines()
    assert rows[0].startswith("| model.focal_gamma | AP | AP50 |") and "ms/img" in rows[0]
    assert "| 0 | 40.0 ± 10.0 | 60.0 ± 10.0 | 30.0 ± 10.0 |" in rows[2]
    assert "| 2 | 20.0 | 40.0 |" in rows[3] and "**diverged** at step 17" in rows[3] and "1 pending" in rows[3]


# ---------------------------------------------------------------------------------------------- runs
class CountingTrainer(Trainer):
    """Records each construction (run folder, resume flag) and the iterations each run trains."""

    calls: list[tuple[str, bool, list[int]]] = []
    kill_at: int = 0  # > 0: raise at that iteration (a killed process; the checkpoint before it stays)

    def __init__(self, cfg: Any, resume: bool = False, progress: bool = True) -> None:
        steps: list[int] = []

        def hook(t: Trainer) -> None:
            steps.append(t.iteration)
            if self.kill_at and t.iteration == self.kill_at:
                raise RuntimeError("killed")

        super().__init__(cfg, resume=resume, progress=progress, hooks=[hook])
        CountingTrainer.calls.append((cfg.train.output_dir, resume, steps))


def _tiny_plan(tmp_path: Path, **fields: Any) -> Path:
    data = make_coco_split(tmp_path / "data")
    base = tiny_config(data, tmp_path / "unused")
    base["train"]["tensorboard"] = False
    base_path = _write_plan(tmp_path / "base.yaml", **base)
    plan = {"title": "tiny", "base": base_path.name, "iterations": 4, "seeds": [0],
            "axes": [{"model.focal_gamma": [0.0, 2.0]}]}  # fmt: skip
    plan.update(fields)
    return _write_plan(tmp_path / "tiny_plan.yaml", **plan)


@pytest.mark.slow
def test_finished_runs_are_skipped_and_a_killed_run_resumes(tmp_path):
    plan = load_plan(_tiny_plan(tmp_path))
    out = tmp_path / "out"
    CountingTrainer.calls = []
    run = run_plan(plan, out, trainer_cls=CountingTrainer)
    assert run.trained == 2 and run.skipped == 0 and len(CountingTrainer.calls) == 2
    assert [c[1] for c in CountingTrainer.calls] == [False, False]
    assert all(steps == [1, 2, 3, 4] for _, _, steps in CountingTrainer.calls)
    assert [r["status"] for r in run.records] == ["finished", "finished"]
    assert all(0.0 <= r["metrics"]["AP"] <= 1.0 and r["iterations"] == 4 for r in run.records)
    # a finished run keeps its final weights, no periodic checkpoint (while it ran: one every ceil(4 / 5) = 1 step)
    first = run_dir(out, plan.cells()[0], 0)
    assert (first / "model_final.pth").is_file() and not list(first.glob("model_0*.pth"))
    assert plan.cell_config(plan.cells()[0], 0, first).train.checkpoint_period == 1

    CountingTrainer.calls = []  # again: nothing to train
    run = run_plan(plan, out, trainer_cls=CountingTrainer)
    assert run.trained == 0 and run.skipped == 2 and CountingTrainer.calls == []
    assert len(run.records) == 2

    # a killed run: its result is gone, it has the checkpoint of iteration 2 (checkpoint_period 2)
    cell = plan.cells()[1]
    folder = run_dir(out, cell, 0)
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()
    CountingTrainer.calls, CountingTrainer.kill_at = [], 3
    with pytest.raises(RuntimeError, match="killed"):
        run_plan(plan, out, trainer_cls=CountingTrainer)
    assert (folder / "model_0000002.pth").is_file() and not (folder / "result.json").exists()
    CountingTrainer.calls, CountingTrainer.kill_at = [], 0
    run = run_plan(plan, out, trainer_cls=CountingTrainer)
    assert run.trained == 1 and run.skipped == 1
    (where, resumed, steps), = CountingTrainer.calls  # fmt: skip
    assert where == str(folder) and resumed and steps == [3, 4]  # continued from iteration 2, not from 0
    assert json.loads((folder / "result.json").read_text())["iterations"] == 4

    # the same --out with a changed plan: that run folder is not silently reused
    changed = load_plan(_tiny_plan(tmp_path), overrides=["solver.base_lr=0.01"])
    with pytest.raises(Exception, match="another config"):
        run_plan(changed, out, trainer_cls=CountingTrainer)


@pytest.mark.slow
def test_a_diverging_cell_is_reported_with_its_step_not_as_a_crash(tmp_path):
    # cross-entropy without the prior (bias 0) at a huge learning rate: non-finite within a few steps
    plan = load_plan(
        _tiny_plan(tmp_path, set={"model.cls_loss": "ce", "model.focal_alpha": -1.0, "solver.base_lr": 1.0e4},
                   axes=[{"label": ["no prior", "prior .01"], "model.prior": [0.5, 0.01]}], iterations=6)
    )  # fmt: skip
    out = tmp_path / "out"
    run = run_plan(plan, out, trainer_cls=CountingTrainer)
    diverged = [r for r in run.records if r["status"] == "diverged"]
    assert diverged, run.records
    for r in diverged:
        assert 1 <= r["step"] <= 6 and f"at iteration {r['step']}:" in r["message"]
    md = (out / "results.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| no prior"))
    assert "**diverged** at step" in row
    CountingTrainer.calls = []
    run_plan(plan, out, trainer_cls=CountingTrainer)  # a diverged run is a result: not retried
    assert CountingTrainer.calls == []


@pytest.mark.slow
def test_cli_runs_a_plan_and_writes_markdown_csv_json_and_plots(tmp_path, capsys):
    plan = _tiny_plan(tmp_path, speed=True, speed_images=3, paper=[{"AP": 30.0}, None])
    out = tmp_path / "out"
    assert main(["ablate", str(plan), "--out", str(out), "--seeds", "0", "1", "--iterations", "2",
                 "--no-progress", "train.num_threads=1"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "4 runs trained, 0 done before" in printed
    md = (out / "results.md").read_text()
    assert "| model.focal_gamma | AP | AP50 | AP75 | APs | APm | APl | ms/img | paper AP | runs |" in md
    assert md.count("2/2 seeds") == 2
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model.focal_gamma"] for r in rows] == ["0.0", "2.0"] and rows[0]["paper_AP"] == "30.0"
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 4 and res["plan"]["budget"] == {"iterations": 2}
    for cell, row in zip(res["cells"], rows):
        aps = [r["metrics"]["AP"] for r in res["runs"] if r["cell"] == cell["cell"]]
        assert cell["metrics"]["AP"]["mean"] == pytest.approx(sum(aps) / 2)
        assert float(row["AP_mean"]) == pytest.approx(sum(aps) / 2)
        assert cell["ms_per_image"]["mean"] > 0 and cell["iterations"]["mean"] == 2
    speed = res["runs"][0]["speed"]
    assert speed["batch"] == 1 and speed["images"] == 3 and speed["median_ms"] > 0
    assert (out / "plot_model.focal_gamma.png").stat().st_size > 0 and (out / "speed_accuracy.png").is_file()
    assert main(["ablate", str(plan), "--out", str(out), "--seeds", "0", "1", "--iterations", "2", "--dry-run"]) == 0
    assert capsys.readouterr().out.count(": done") == 4
    assert main(["ablate", str(plan), "--out", str(out), "model.focal_gama=1"]) == 2  # one clear line, exit 2
    assert "unknown config key" in capsys.readouterr().err
