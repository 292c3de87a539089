"""The shortened demo (``retinanet demo --quick``, about a minute on 2 cores) end to end, through the
CLI: dataset generated, model trained, COCO AP measured on the held-out split above what an untrained
or broken model reaches, pictures and summary written."""

from __future__ import annotations

import json

import pytest

from retinanet.cli import main

# An untrained model (prior 0.01 everywhere, below the 0.05 score threshold) detects nothing: AP 0.
# The quick demo (300 steps of 2 images, 160 training scenes) measured AP 0.020, AP50 0.057 on this
# 2-core machine; the bounds are ~40% of that, above what random boxes reach (~0.001).
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
    data = json.loads((tmp_path / summary["dataset"].split("/")[-1] / "annotations" / "instances_val.json")
                      .read_text())
    assert len(data["images"]) == 40 and len(data["categories"]) == 8
