"""``retinanet ablate PLAN --out DIR``: the command line of the ablation runner (:mod:`retinanet.apps.ablate`).

    retinanet ablate PLAN --out DIR [section.key=value ...] [--set section.key=value ...]
                     [--axis section.key=[v1,v2,...]] [--iterations N | --minutes M] [--seeds 0 1 2]
                     [--base PRESET_OR_YAML] [--dry-run | --report-only] [--no-progress]
    retinanet ablate --list

PLAN is a plan file or a packaged plan's name (``--list``: the paper's Table 1 a-e). Overrides apply
to every run (the user's data: ``data.train_images=...``, ``model.num_classes=K``); ``--axis``
replaces the values of a swept key; ``--iterations`` / ``--minutes`` / ``--seeds`` / ``--base``
replace the plan's. ``--dry-run`` lists the cells and each run's state without training;
``--report-only`` writes the tables from the results there are. Exit code: 0, 2 for a bad plan, or
128 + the signal when Ctrl-C / SIGTERM stopped it (the same command continues).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_ablate_command", "cmd_ablate"]


def _load(args: argparse.Namespace) -> Any:
    from retinanet.apps.ablate_load import load_plan

    return load_plan(
        args.plan,
        overrides=list(args.overrides or []) + list(args.set or []),
        axes=args.axis or [],
        iterations=args.iterations,
        minutes=args.minutes,
        seeds=args.seeds,
        base=args.base,
    )


def _dry_run(plan: Any, out: Any) -> None:
    from retinanet.apps.ablate import run_dir
    from retinanet.training.checkpoint import latest_checkpoint

    print(f"{plan.title}: {len(plan.cells())} cells x {len(plan.seeds)} seeds, {plan.budget_text()} per run")
    for cell in plan.cells():
        for seed in plan.seeds:
            folder = run_dir(out, cell, seed)
            if (folder / "result.json").is_file():
                state = "done"
            else:
                ckpt = latest_checkpoint(folder) if folder.is_dir() else None
                state = f"resumes from {ckpt.name}" if ckpt is not None else "to run"
            print(f"  cell {cell.index:3d}  {cell.label:40s} seed {seed}: {state}  ({folder})")


def cmd_ablate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from retinanet.apps.ablate_load import list_plans, plan_path
    from retinanet.apps.ablate_plan import PlanError

    if args.list:
        for name in list_plans():
            first = plan_path(name).read_text().splitlines()[0].lstrip("# ")
            print(f"{name:28s} {first}")
        return 0
    if not args.plan or not args.out:
        raise PlanError("retinanet ablate needs a PLAN (a file or a packaged plan; --list names them) and --out DIR")
    plan = _load(args)
    out = Path(args.out)
    if args.dry_run:
        _dry_run(plan, out)
        return 0
    from retinanet.apps.ablate import read_results, run_plan
    from retinanet.apps.ablate_report import write_report

    if args.report_only:
        paths = write_report(plan, read_results(plan, out), out)
    else:
        from retinanet.utils.tuning import configure_runtime

        configure_runtime(args.malloc)
        run = run_plan(plan, out, progress=not args.no_progress)
        print(f"{run.trained} runs trained, {run.skipped} done before")
        paths = run.reports
        if run.stopped:
            print("stopped before the end of a run; run the same command again to continue")
    print((out / "results.md").read_text())
    print("written: " + ", ".join(str(p) for p in paths))
    return 128 + run.signal if not args.report_only and run.signal else 0


def add_ablate_command(sub: Any) -> None:
    """Add ``retinanet ablate`` to the subparsers ``sub``."""
    a = sub.add_parser(
        "ablate",
        help="run an ablation plan (the paper's Table 1 a-e, or your own grid) and tabulate AP over seeds",
        description="Trains one run per cell of the plan's grid and per seed (resumable: finished runs are "
        "skipped, killed ones continue from their checkpoint), then writes results.md/.csv/.json and a plot "
        "per axis under --out.",
    )
    a.add_argument("plan", nargs="?", help="plan YAML file or packaged plan name (see --list)")
    a.add_argument("overrides", nargs="*", help="section.key=value settings for every run (e.g. your data)")
    a.add_argument("--out", help="folder of the runs and the tables")
    a.add_argument("--set", action="append", metavar="KEY=VALUE", help="same as a section.key=value override")
    a.add_argument("--axis", action="append", metavar="KEY=[V,...]", help="replace the values of a swept key")
    budget = a.add_mutually_exclusive_group()
    budget.add_argument("--iterations", type=int, help="training iterations per run (instead of the plan's)")
    budget.add_argument("--minutes", type=float, help="training minutes per run (train.time_budget)")
    a.add_argument("--seeds", type=int, nargs="+", help="seeds (instead of the plan's)")
    a.add_argument("--base", help="preset or YAML file the runs start from (instead of the plan's base)")
    mode = a.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the cells and their runs' state; train nothing")
    mode.add_argument("--report-only", action="store_true", help="write the tables from the results there are")
    a.add_argument("--list", action="store_true", help="list the packaged plans")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.add_argument("--malloc", choices=["keep", "default"], default="keep", help="as for retinanet train")
    a.set_defaults(fn=cmd_ablate)
