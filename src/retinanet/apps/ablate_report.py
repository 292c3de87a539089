"""The tables and plots of an ablation (``retinanet ablate``): per cell, the mean and spread over seeds.

``summarize(plan, records) -> [cell summary]``: for each cell of the plan, over its seeds' records
(``result.json`` of :mod:`~retinanet.apps.ablate`): how many finished, diverged (and at which step) or
are pending; for each metric of :data:`METRICS` (COCO, fractions 0-1) and for the inference time per
image, ``{"mean", "std", "n", "values"}``: the mean and sample standard deviation (n - 1; None for
one seed) of the finished seeds. COCO's -1 (no ground truth of that size) is left out.

``write_report(plan, records, out)`` writes

- ``results.md``: the table as the paper prints it, AP in percent (``34.0 ± 0.3``), a column per axis;
- ``results.csv``: one row per cell, metrics as fractions (mean and std columns);
- ``results.json``: the plan, the summaries and every run's record;
- ``plot_<axis>.png``: AP (mean ± std) against each axis, a line per combination of the other axes;
- ``speed_accuracy.png`` (plans with ``speed``): AP against ms per image.
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from retinanet.apps.ablate_plan import AxisGroup, Plan
from retinanet.utils.io import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["METRICS", "summarize", "write_report", "markdown_table"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = [float(x) for x in values]
    return {
        "mean": statistics.fmean(v) if v else None,
        "std": statistics.stdev(v) if len(v) > 1 else None,
        "n": len(v),
        "values": v,
    }


def summarize(plan: Plan, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per cell (see the module docstring), in cell order."""
    out = []
    for cell in plan.cells():
        runs = {r["seed"]: r for r in records if r["cell"] == cell.index and r["seed"] in plan.seeds}
        fin = [runs[s] for s in plan.seeds if s in runs and runs[s]["status"] == "finished"]
        div = [runs[s] for s in plan.seeds if s in runs and runs[s]["status"] == "diverged"]
        metrics = {m: _stats([r["metrics"][m] for r in fin if r["metrics"].get(m, -1.0) >= 0]) for m in METRICS}
        speed = [r["speed"]["median_ms"] for r in fin if r.get("speed")]
        out.append(
            {
                "cell": cell.index,
                "label": cell.label,
                "labels": list(cell.labels),
                "values": cell.values,
                "seeds": len(plan.seeds),
                "finished": len(fin),
                "diverged": [{"seed": r["seed"], "step": r["step"]} for r in div],
                "pending": len(plan.seeds) - len(fin) - len(div),
                "metrics": metrics,
                "ms_per_image": _stats(speed) if speed else None,
                "iterations": _stats([r["iterations"] for r in fin]),
                "paper": cell.paper,
            }
        )
    return out


# ------------------------------------------------------------------------------------------ text
def _pct(s: Optional[dict[str, Any]], scale: float = 100.0, digits: int = 1) -> str:
    if not s or s["mean"] is None:
        return "-"
    text = f"{s['mean'] * scale:.{digits}f}"
    return text + (f" ± {s['std'] * scale:.{digits}f}" if s["std"] is not None else "")


def _status(c: dict[str, Any]) -> str:
    parts = [f"{c['finished']}/{c['seeds']} seeds"]
    if c["diverged"]:
        steps = ", ".join(str(d["step"]) for d in c["diverged"])
        parts.append(
            f"**diverged** at step {steps}" + (f" ({len(c['diverged'])} seeds)" if len(c["diverged"]) > 1 else "")
        )
    if c["pending"]:
        parts.append(f"{c['pending']} pending")
    return ", ".join(parts)


def _paper_keys(summaries: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for c in summaries if c["paper"] for k in c["paper"]))


def _paper_value(key: str, v: float) -> str:
    return f"{v:.1f}" if key.startswith("AP") else f"{v:g}"  # AP as the paper prints it (34.0)


def markdown_table(plan: Plan, summaries: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of :func:`write_report` (``results.md``)."""
    speed = any(c["ms_per_image"] for c in summaries)
    paper = _paper_keys(summaries)
    head = [g.name for g in plan.groups] + list(METRICS) + (["ms/img"] if speed else [])
    head += [f"paper {k}" for k in paper] + ["runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in summaries:
        row = list(c["labels"]) + [_pct(c["metrics"][m]) for m in METRICS]
        if speed:
            row.append(_pct(c["ms_per_image"], scale=1.0, digits=0))
        row += [_paper_value(k, c["paper"][k]) if c["paper"] and k in c["paper"] else "-" for k in paper]
        row.append(_status(c))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _header(plan: Plan, summaries: Sequence[dict[str, Any]]) -> str:
    seeds = ", ".join(map(str, plan.seeds))
    lines = [
        f"# {plan.title}",
        "",
        f"Plan `{plan.source}`, base config `{plan.base}`; {plan.budget_text()} per run; seeds {seeds}.",
        "COCO box AP on the validation set, in percent: mean ± sample standard deviation over the finished "
        "seeds (one seed: the value). A diverged run (non-finite loss or gradient) is listed with the step "
        "that failed and left out of the means.",
    ]
    if any(c["ms_per_image"] for c in summaries):
        lines.append(
            "ms/img: median inference time per image (batch 1, BN folded, from the loaded image tensor to the "
            "detections; file decoding and resizing not timed), mean ± std over seeds."
        )
    return "\n".join(lines)


def _csv(plan: Plan, summaries: Sequence[dict[str, Any]]) -> str:
    keys = [k for g in plan.groups for k in g.keys]
    paper = _paper_keys(summaries)
    head = ["cell"] + [g.name for g in plan.groups] + keys + ["seeds", "finished", "diverged", "diverged_steps"]
    head += ["pending"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + ["ms_per_image_mean"]
    head += ["ms_per_image_std"] + [f"paper_{k}" for k in paper]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for c in summaries:
        ms = c["ms_per_image"] or {}
        row: list[Any] = [c["cell"], *c["labels"], *(json.dumps(c["values"][k]) for k in keys)]
        row += [c["seeds"], c["finished"], len(c["diverged"]), " ".join(str(d["step"]) for d in c["diverged"])]
        row += [c["pending"]] + [c["metrics"][m][s] for m in METRICS for s in ("mean", "std")]
        row += [ms.get("mean"), ms.get("std")] + [(c["paper"] or {}).get(k) for k in paper]
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------ plots
def _plot_group(plan: Plan, gi: int, summaries: Sequence[dict[str, Any]], path: Path) -> Path:
    """AP (percent, mean ± std) against group ``gi``'s entries; a line per combination of the other groups."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    g: AxisGroup = plan.groups[gi]
    fig = Figure(figsize=(max(6.0, 1.0 + 0.9 * len(g)), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    series: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for cell, c in zip(plan.cells(), summaries):
        rest = "; ".join(lab for j, lab in enumerate(cell.labels) if j != gi)
        series.setdefault(rest, []).append((cell.positions[gi], c))
    for k, (name, points) in enumerate(series.items()):
        xs = [x for x, c in points if c["metrics"]["AP"]["mean"] is not None]
        ys = [c["metrics"]["AP"]["mean"] * 100 for _, c in points if c["metrics"]["AP"]["mean"] is not None]
        err = [(c["metrics"]["AP"]["std"] or 0.0) * 100 for _, c in points if c["metrics"]["AP"]["mean"] is not None]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=f"C{k % 10}", label=name or None)
        bad = [x for x, c in points if c["diverged"] and not c["finished"]]
        ax.plot(bad, [0.0] * len(bad), "x", color="red", markersize=10, label="diverged" if bad and k == 0 else None)
    labels = [lab.replace(", ", "\n") for lab in g.labels]  # one key per line: zipped labels stay legible
    crowded = len(g) > 5 or max(map(len, g.labels), default=0) * len(g) > 60
    ax.set_xticks(range(len(g)), labels, rotation=20 if crowded else 0, ha="right" if crowded else "center")
    ax.set_xlabel(g.name)
    ax.set_ylim(bottom=0.0)
    ax.set_ylabel("AP (%)")
    ax.set_title(plan.title)
    ax.grid(True, color="0.88")
    if any(ax.get_legend_handles_labels()[1]):
        ax.legend(loc="best", fontsize="small")
    return atomic_write(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))


def _plot_speed(plan: Plan, summaries: Sequence[dict[str, Any]], path: Path) -> Path:
    """AP against ms per image, a line per combination of all groups but the last (e.g. per backbone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    series: dict[str, list[tuple[float, float, str]]] = {}
    for cell, c in zip(plan.cells(), summaries):
        if c["ms_per_image"] and c["metrics"]["AP"]["mean"] is not None:
            point = (c["ms_per_image"]["mean"], c["metrics"]["AP"]["mean"] * 100, cell.labels[-1])
            series.setdefault("; ".join(cell.labels[:-1]), []).append(point)
    for k, (name, pts) in enumerate(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=f"C{k % 10}", label=name or None)
        for x, y, lab in pts:
            ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
    ax.set_xlabel("inference time (ms per image)")
    ax.set_ylabel("AP (%)")
    ax.set_title(plan.title)
    ax.grid(True, color="0.88")
    if any(ax.get_legend_handles_labels()[1]):
        ax.legend(loc="best", fontsize="small")
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _file_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "axis"


def write_report(plan: Plan, records: Sequence[dict[str, Any]], out: str | Path) -> list[Path]:
    """Write the tables and plots (see the module docstring) under ``out``; return their paths."""
    out = Path(out)
    summaries = summarize(plan, records)
    md = _header(plan, summaries) + "\n\n" + markdown_table(plan, summaries) + "\n"
    paths = [atomic_write_text(out / "results.md", md), atomic_write_text(out / "results.csv", _csv(plan, summaries))]
    paths.append(
        atomic_write_json(
            out / "results.json",
            {"plan": plan.summary(), "units": "metrics: COCO fractions 0-1; ms_per_image: milliseconds",
             "cells": summaries, "runs": list(records)},
            indent=1,
        )
    )  # fmt: skip
    if any(c["finished"] or c["diverged"] for c in summaries):
        for gi, g in enumerate(plan.groups):
            paths.append(_plot_group(plan, gi, summaries, out / f"plot_{_file_slug(g.name)}.png"))
        if plan.speed and any(c["ms_per_image"] for c in summaries):
            paths.append(_plot_speed(plan, summaries, out / "speed_accuracy.png"))
    return paths
