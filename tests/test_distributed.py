"""DistributedDataParallel on CPU (gloo): 2 processes launched the way torchrun launches them.

Each process is ``python -m retinanet train CONFIG`` with torchrun's environment (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); ``utils.distributed`` joins the group
with ``init_process_group("gloo")`` (``env://``). Each rank takes half of every global batch of 2.

Why 2 processes must match 1: the model has no batch statistics (frozen BN), the loss of each rank is
normalized by the mean foreground count over ranks and DDP averages the gradients, which is the
gradient of the global batch; every batch pads to 128x128 whatever the image, so a rank's half-batch
sees exactly the pixels the 1-process batch does; the data order and augmentation are functions of
(seed, epoch, index). Only the summation order differs, so losses and weights agree to float32
rounding: we require 1e-5 relative on the losses and rtol 1e-4 / atol 1e-6 on every weight after 4
SGD steps (observed differences are ~1e-7).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_factory import cli_command, make_coco_split, subprocess_env, tiny_config, val_coco_dict, write_config

from retinanet.config import config_from_dict
from retinanet.training.checkpoint import LAST_CHECKPOINT_FILE
from retinanet.training.trainer import Trainer
from retinanet.utils.serialization import load_file

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg_path: Path, world: int = 2, *extra: str) -> list[subprocess.Popen]:
    """Start ``world`` ranks of ``retinanet train`` like ``torchrun --nproc_per_node world`` would."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = subprocess_env(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
            GLOO_SOCKET_IFNAME="lo",
        )
        procs.append(
            subprocess.Popen(
                cli_command("train", str(cfg_path), "--no-progress", *extra),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    results = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank hung (timeout)")
        results.append((p.returncode, out, err))
    return results


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_split(tmp_path_factory.mktemp("data"))


def test_two_processes_train_and_evaluate_like_one(data, tmp_path):
    sections = dict(solver={"max_iter": 4}, train={"checkpoint_period": 2})
    two = write_config(tmp_path / "two.yaml", tiny_config(data, tmp_path / "two", **sections))
    procs = _launch(two)
    # meanwhile: the same run in one process, with the same global batch
    one = tmp_path / "one"
    Trainer(config_from_dict(tiny_config(data, one, **sections)), progress=False).train()
    (rc0, out0, err0), (rc1, out1, err1) = _finish(procs)
    assert rc0 == 0, err0[-4000:]
    assert rc1 == 0, err1[-4000:]
    assert "training finished at iteration 4" in out0
    assert out1.strip() == ""  # only rank 0 prints and logs at INFO
    assert "INFO" not in err1

    # rank 0 alone wrote the log: each iteration once, same losses, lr and foreground counts
    rows1, rows2 = _rows(one / "metrics.jsonl"), _rows(tmp_path / "two" / "metrics.jsonl")
    train1, train2 = [r for r in rows1 if "loss" in r], [r for r in rows2 if "loss" in r]
    assert [r["iter"] for r in train2] == [r["iter"] for r in train1] == [1, 2, 3, 4]
    for a, b in zip(train1, train2):
        for k in ("loss", "loss_cls", "loss_box"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=2e-6), (a["iter"], k)
        assert b["lr"] == a["lr"] and b["num_fg"] == a["num_fg"], a["iter"]  # num_fg: the global batch's

    # same weights: every tensor of the final model, and the momentum buffers
    s1, s2 = load_file(one / "model_final.pth"), load_file(tmp_path / "two" / "model_final.pth")
    assert s2["iteration"] == s1["iteration"] == 4
    assert list(s1["model"]) == list(s2["model"])
    for k, v in s1["model"].items():
        torch.testing.assert_close(s2["model"][k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
    start = load_file(one / "model_0000002.pth")["model"]
    moved = [k for k, v in s1["model"].items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert len(moved) > 10  # the comparison is not vacuous: training changed the weights
    for (i, a), (_, b) in zip(sorted(s1["optimizer"]["state"].items()), sorted(s2["optimizer"]["state"].items())):
        torch.testing.assert_close(b["momentum_buffer"], a["momentum_buffer"], rtol=1e-3, atol=1e-6)

    # evaluation: rank 0's results hold every val image, though each rank ran only its share
    val_ids = {im["id"] for im in val_coco_dict()["images"]}
    res1 = json.loads((one / "detections_0000004.json").read_text())
    res2 = json.loads((tmp_path / "two" / "detections_0000004.json").read_text())
    assert {r["image_id"] for r in res2} == val_ids
    assert len(res2) == len(res1) == 20 * len(val_ids)
    for iid in val_ids:
        top1 = max(r["score"] for r in res1 if r["image_id"] == iid)
        top2 = max(r["score"] for r in res2 if r["image_id"] == iid)
        assert top2 == pytest.approx(top1, abs=1e-4)
    ev1 = [r for r in rows1 if "bbox/AP" in r]
    ev2 = [r for r in rows2 if "bbox/AP" in r]
    assert len(ev2) == 1 and ev2[0]["iter"] == 4 and 0.0 <= ev2[0]["bbox/AP"] <= 1.0
    assert ev2[0]["bbox/AP50"] == pytest.approx(ev1[0]["bbox/AP50"], abs=0.02)


def _forked_rank(rank: int, world: int, port: str, argv: list[str], log: str) -> None:
    """A rank in a process forked from this one (no interpreter start-up: the modules are loaded),
    with torchrun's environment, running the command line's ``main``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout, sys.stderr = open(1, "w", buffering=1, closefd=False), open(2, "w", buffering=1, closefd=False)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        GLOO_SOCKET_IFNAME="lo",
    )
    from retinanet.cli import main

    sys.exit(main(argv))


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(data, tmp_path):
    """SIGINT reaching rank 1 only: both ranks stop after the same iteration (without the agreement,
    rank 0 would wait forever in its next collective), rank 0 writes the checkpoint of that iteration,
    both exit with 130. The ranks are forked from the test process (same code path as above, without
    the interpreter start-up)."""
    out = tmp_path / "run"
    cfg = write_config(
        tmp_path / "c.yaml", tiny_config(data, out, solver={"max_iter": 200}, train={"checkpoint_period": 1000})
    )
    port = str(_free_port())
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_forked_rank, args=(r, 2, port, ["train", str(cfg), "--no-progress"], str(tmp_path / f"rank{r}.log"))
        )
        for r in range(2)
    ]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert all(p.is_alive() for p in procs), "a rank ended early: " + (tmp_path / "rank0.log").read_text()
            if (out / "metrics.jsonl").is_file() and any(r["iter"] >= 2 for r in _rows(out / "metrics.jsonl")):
                break
            time.sleep(0.02)
        os.kill(procs[1].pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=60)
        assert not any(p.is_alive() for p in procs), "a rank hung after the signal"
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    log0, log1 = (tmp_path / "rank0.log").read_text(), (tmp_path / "rank1.log").read_text()
    assert procs[1].exitcode == 128 + signal.SIGINT, log1[-3000:]
    assert procs[0].exitcode == 128 + signal.SIGINT, log0[-3000:]
    stopped = max(r["iter"] for r in _rows(out / "metrics.jsonl"))
    assert 2 <= stopped < 200
    assert f"training stopped early by SIGINT at iteration {stopped}" in log0
    assert (out / LAST_CHECKPOINT_FILE).read_text().strip() == f"model_{stopped:07d}.pth"
    assert load_file(out / f"model_{stopped:07d}.pth")["iteration"] == stopped


def test_ranks_exit_cleanly_run_after_run(data, tmp_path):
    """Every rank of a finished run exits with 0. Before ``distributed.cleanup`` collected garbage
    (the Trainer and its DDP wrapper sat in a reference cycle until the interpreter's exit, after
    the process group was gone), rank 1 aborted with "terminate called without an active
    exception" in 3 of 12 two-process runs (4 steps each); with the collection, 0 of 74. Four runs
    in a row, so that a return of the race is likely (~70%) to show here (on the old code this test
    failed 2 times of 3)."""
    for i in range(4):
        cfg = write_config(
            tmp_path / f"c{i}.yaml",
            tiny_config(data, tmp_path / f"run{i}", solver={"max_iter": 2}, train={"checkpoint_period": 100}),
        )
        for rank, (rc, out, err) in enumerate(_finish(_launch(cfg))):
            assert rc == 0, f"run {i}, rank {rank}: exit {rc}: {err[-2000:]}"
