"""The benchmark suite still runs end to end (small sizes) and its summary renders; no timing is
asserted, only that every section produced figures of the right kind."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_all_quick_writes_every_section_and_the_targets(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--modes", "default", "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    res = json.loads(out.read_text())
    run = res["modes"]["default"]
    model = run["model"]
    assert model["roofline"]  # the conv roofline was measured
    focal = run["focal"]["results"]
    assert {"naive", "ours_int", "ours_dense"} <= set(focal)
    assert all(v["fwd_bwd_ms_median"] > 0 for v in focal.values())
    for name in ("ours_int", "ours_dense"):  # what is timed is the same math as the naive formula
        assert focal[name]["loss_rel_diff_vs_naive"] < 1e-4, focal[name]
        assert focal[name]["grad_max_abs_diff_vs_naive"] < 1e-5, focal[name]
    names = [t["target"] for t in res["targets"]]
    assert any("focal" in n for n in names) and any("post-processing" in n for n in names)
    assert any("training step" in n for n in names)
    for t in res["targets"]:
        assert t["value"] is not None and t["met"] in (True, False), t
    text = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "summarize.py"), str(out)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "### Targets (issue 5)" in text and "| default |" in text


def test_bench_tuning_quick_measures_each_kept_tuning_against_its_fallback(tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_tuning.py"), "--quick", "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=300,
    )
    reuse = json.loads(out.read_text())["modes"]["default"]["reuse"]["2,12000,80"]
    assert reuse["reuse"]["cpu"]["n"] == reuse["no_reuse"]["cpu"]["n"] == 3
    assert reuse["no_reuse"]["cpu_ratio"]["median"] > 0
    assert reuse["reuse"]["peak_mb"] is None or reuse["reuse"]["peak_mb"] > 0


def test_bench_winograd_quick_compares_each_conv_with_the_direct_one(tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_winograd.py"), "--quick", "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    res = json.loads(out.read_text())
    assert len(res["convs"]) >= 8
    for row in res["convs"]:
        assert row["direct"]["median_ms"] > 0 and row["winograd"]["median_ms"] > 0
        assert row["rel_err_winograd"] < 5e-5, row  # what is timed computes the same convolution
    (net,) = res["network"]
    assert net["size"] == [128, 128] and net["max_abs_diff_head_outputs"] < 1e-3
