"""Faults and exact resume: stop + resume, SIGKILL, Ctrl-C, NaN loss, unwritable folder, full disk.

Every run here uses the same tiny config (``train_factory``; 12 iterations, checkpoints every 3,
warmup 2, the learning-rate step at iteration 6, multi-scale + flip augmentation, the EMA loss
normalizer, 6 images = 3 batches per epoch). One uninterrupted run is the reference: a run stopped
anywhere and resumed must end with *bit-identical* weights and momentum buffers (``torch.equal``;
CPU, one thread), and log the same losses, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from train_factory import (
    assert_same_tensors,
    cli_command,
    make_coco_split,
    momentum_buffers,
    subprocess_env,
    tiny_config,
    write_config,
)

from retinanet.cli import main
from retinanet.config import config_from_dict
from retinanet.modeling.retinanet import RetinaNet
from retinanet.training.checkpoint import LAST_CHECKPOINT_FILE, latest_checkpoint, list_checkpoints
from retinanet.training.divergence import TrainingDiverged
from retinanet.training.trainer import Trainer
from retinanet.utils import serialization
from retinanet.utils.serialization import load_file

pytestmark = pytest.mark.slow

MAX_ITER, PERIOD = 12, 3


def _cfg_dict(data: dict, out: Path, workers: int = 0, **solver) -> dict:
    d = tiny_config(
        {k: v for k, v in data.items() if not k.startswith("val_")},
        out,
        solver={"max_iter": MAX_ITER, **solver},
        train={"checkpoint_period": PERIOD},
        data={"num_workers": workers},
    )
    d["model"]["loss_normalizer"] = "ema"  # one more piece of state that resuming must restore
    return d


def _cfg(data, out, workers=0, **solver):
    return config_from_dict(_cfg_dict(data, out, workers, **solver))


def _train_rows(out: Path) -> dict[int, dict]:
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "loss" in r:
            assert r["iter"] not in rows, f"iteration {r['iter']} logged twice"
            rows[r["iter"]] = r
    return rows


def _losses(rows: dict[int, dict]) -> dict[int, tuple]:
    return {i: (r["loss"], r["loss_cls"], r["loss_box"], r["lr"]) for i, r in rows.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_coco_split(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run: final checkpoint and logged losses."""
    out = tmp_path_factory.mktemp("reference")
    result = Trainer(_cfg(data, out), progress=False).train()
    assert result.iteration == MAX_ITER and not result.stopped_early
    return {"state": load_file(out / "model_final.pth"), "losses": _losses(_train_rows(out))}


def _assert_same_as_reference(state: dict, reference: dict) -> None:
    ref = reference["state"]
    assert state["iteration"] == ref["iteration"] == MAX_ITER
    assert_same_tensors(state["model"], ref["model"], "model ")
    bufs, ref_bufs = momentum_buffers(state), momentum_buffers(ref)
    assert len(bufs) == len(ref_bufs) > 0
    assert all(torch.equal(a, b) for a, b in zip(bufs, ref_bufs)), "momentum buffers differ"
    assert state["fg_ema"] == ref["fg_ema"]


# ------------------------------------------------------------------------------------ stop + resume


@pytest.mark.parametrize("workers", [0, 1])
def test_stopped_then_resumed_run_equals_the_uninterrupted_one(data, reference, tmp_path, workers):
    out = tmp_path / "run"
    stop_at = 4  # mid-epoch, between checkpoints (3, 6), just before the lr step at 6

    def stop(trainer):
        if trainer.iteration == stop_at:
            trainer.request_stop()

    first = Trainer(_cfg(data, out, workers), progress=False, hooks=[stop]).train()
    assert first.stopped_early and first.iteration == stop_at and first.signal == 0
    assert (out / LAST_CHECKPOINT_FILE).read_text().strip() == "model_0000004.pth"
    assert not (out / "model_final.pth").exists()
    assert load_file(out / "model_0000004.pth")["iteration"] == stop_at
    # the stopped run is not the reference yet
    key = "head.classification_head.cls_logits.weight"
    assert not torch.equal(load_file(out / "model_0000004.pth")["model"][key], reference["state"]["model"][key])

    second = Trainer(_cfg(data, out, workers), resume=True, progress=False).train()
    assert second.iteration == MAX_ITER and not second.stopped_early
    _assert_same_as_reference(load_file(out / "model_final.pth"), reference)
    assert _losses(_train_rows(out)) == reference["losses"]  # data order, augmentation, lr: all the same


# ------------------------------------------------------------------------------------ SIGKILL


def _wait_for_iteration(proc: subprocess.Popen, metrics: Path, target: int, timeout: float = 120) -> int:
    """Poll metrics.jsonl until a row with iter >= target; return the largest logged iteration."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"training ended (rc {proc.returncode}) before iteration {target}:\n{err[-3000:]}")
        if metrics.is_file():
            its = []
            for line in metrics.read_text().splitlines():
                try:
                    its.append(json.loads(line).get("iter", 0))
                except ValueError:  # a line being written
                    pass
            if its and max(its) >= target:
                return max(its)
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no iteration {target} within {timeout} s")


def test_sigkill_at_a_random_step_then_resume(data, reference, tmp_path, caplog):
    seed = int.from_bytes(os.urandom(4), "little")
    kill_after = random.Random(seed).randint(PERIOD + 1, MAX_ITER - 4)  # after >= 1 checkpoint
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", _cfg_dict(data, out))
    proc = subprocess.Popen(
        cli_command("train", str(cfg_path), "--no-progress"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = _wait_for_iteration(proc, out / "metrics.jsonl", kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    why = f"(seed {seed}: killed after iteration {seen})"

    # every checkpoint on disk is complete and loadable, the newest is at most one period old
    files = list_checkpoints(out)
    assert files, why
    for f in files:
        assert load_file(f)["iteration"] == int(f.stem.split("_")[1]), (f, why)
    resume_from = load_file(latest_checkpoint(out))["iteration"]
    assert PERIOD <= resume_from <= seen + 1 and seen - resume_from <= PERIOD, (resume_from, why)

    stale = list(out.glob(".*.tmp"))  # a write interrupted by the kill, if it hit one
    with caplog.at_level(logging.INFO, logger="retinanet.train"):
        assert main(["train", str(cfg_path), "--resume", "--no-progress"]) == 0, why
    assert f"resumed from {out / f'model_{resume_from:07d}.pth'} at iteration {resume_from}" in caplog.text, why
    assert all(not p.exists() for p in stale), why
    _assert_same_as_reference(load_file(out / "model_final.pth"), reference)
    # the log has every iteration once (rows redone after the checkpoint replaced), same losses
    assert _losses(_train_rows(out)) == reference["losses"], why
    assert not list(out.glob(".*.tmp")), why  # no debris left


# ------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_stops_cleanly_with_a_checkpoint_and_resume_finishes(data, reference, tmp_path, capsys):
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", _cfg_dict(data, out, workers=1))
    # a new session: the signal goes to the whole process group, DataLoader worker included, as from
    # a terminal's Ctrl-C
    proc = subprocess.Popen(
        cli_command("train", str(cfg_path), "--no-progress"),
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_iteration(proc, out / "metrics.jsonl", PERIOD + 1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert "Traceback" not in stderr and "exited unexpectedly" not in stderr, stderr[-3000:]
    stopped_at = max(_train_rows(out))
    assert PERIOD + 1 <= stopped_at < MAX_ITER
    assert f"training stopped early by SIGINT at iteration {stopped_at}" in stdout
    assert "--resume" in stdout
    # the step in progress was finished and checkpointed
    assert (out / LAST_CHECKPOINT_FILE).read_text().strip() == f"model_{stopped_at:07d}.pth"
    assert load_file(out / f"model_{stopped_at:07d}.pth")["iteration"] == stopped_at
    assert not (out / "model_final.pth").exists()

    assert main(["train", str(cfg_path), "--resume", "--no-progress"]) == 0
    assert f"training finished at iteration {MAX_ITER}" in capsys.readouterr().out
    _assert_same_as_reference(load_file(out / "model_final.pth"), reference)
    assert _losses(_train_rows(out)) == reference["losses"]


# ------------------------------------------------------------------------------------ NaN


@pytest.fixture
def nan_at(monkeypatch):
    """``nan_at(trainer, {iterations})``: the model's classification loss is NaN at those iterations."""

    def install(trainer: Trainer, iterations: set[int]) -> None:
        orig = RetinaNet.forward

        def forward(self, images, targets=None, output_sizes=None):
            out = orig(self, images, targets, output_sizes)
            if self.training and trainer.iteration + 1 in iterations:
                out = dict(out, loss_cls=out["loss_cls"] * float("nan"))
            return out

        monkeypatch.setattr(RetinaNet, "forward", forward)

    return install


def test_nan_loss_stops_with_training_diverged(data, tmp_path, nan_at):
    out = tmp_path / "run"
    trainer = Trainer(_cfg(data, out), progress=False)
    nan_at(trainer, {5})
    with pytest.raises(TrainingDiverged) as e:
        trainer.train()
    msg = str(e.value)
    assert "non-finite loss at iteration 5" in msg
    assert "loss=nan" in msg and "loss_cls=nan" in msg and "loss_box=" in msg
    assert str(out / "model_0000003.pth") in msg and "intact" in msg
    assert "solver.base_lr" in msg and "solver.skip_nonfinite" in msg and "clip_grad_norm" in msg
    # the last good checkpoint is untouched and loadable; nothing was written after the bad step
    assert [p.name for p in list_checkpoints(out)] == ["model_0000003.pth"]
    assert latest_checkpoint(out) == out / "model_0000003.pth"
    state = load_file(out / "model_0000003.pth")
    assert state["iteration"] == 3 and all(torch.isfinite(v).all() for v in state["model"].values())
    assert max(_train_rows(out)) == 4


def test_absurd_learning_rate_through_the_cli(data, tmp_path, capsys):
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", _cfg_dict(data, out))
    rc = main(["train", str(cfg_path), "solver.base_lr=1e6", "solver.warmup_iters=0", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("retinanet train: error: non-finite")
    assert "at iteration" in err and "solver.base_lr (now 1000000.0)" in err
    assert not (out / "model_final.pth").exists()


def test_skip_nonfinite_skips_and_counts(data, tmp_path, nan_at):
    out = tmp_path / "run"
    cfg = _cfg(data, out, max_iter=6, skip_nonfinite=True)
    cfg.train.checkpoint_period = 1
    trainer = Trainer(cfg, progress=False)
    nan_at(trainer, {2, 5})
    result = trainer.train()
    assert result.iteration == 6 and not result.stopped_early and result.skipped_steps == 2
    rows = _train_rows(out)
    assert [i for i, r in rows.items() if r.get("skipped")] == [2, 5]
    assert rows[2]["loss"] is None and rows[2]["loss_cls"] is None  # JSON null, not NaN
    assert rows[6]["skipped_steps"] == 2 and "skipped_steps" not in rows[1]
    assert all(math.isfinite(rows[i]["loss"]) for i in (1, 3, 4, 6))
    final = load_file(out / "model_final.pth")
    assert final["skipped_steps"] == 2 and all(torch.isfinite(v).all() for v in final["model"].values())
    # a skipped step changes nothing: weights and momentum after step 2 are those after step 1
    s1, s2, s3 = (load_file(out / f"model_{i:07d}.pth") for i in (1, 2, 3))
    assert_same_tensors(s1["model"], s2["model"], "skipped step ")
    assert all(torch.equal(a, b) for a, b in zip(momentum_buffers(s1), momentum_buffers(s2)))
    assert not torch.equal(
        s2["model"]["head.classification_head.cls_logits.weight"],
        s3["model"]["head.classification_head.cls_logits.weight"],
    )


# ------------------------------------------------------------------------------------ file system


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_output_dir_is_one_clear_error(data, tmp_path, capsys):
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", _cfg_dict(data, out, max_iter=1))
    assert main(["train", str(cfg_path), "--no-progress"]) == 0
    before = _snapshot(out)
    out.chmod(0o500)
    try:
        for extra in ([], ["--resume"]):
            rc = main(["train", str(cfg_path), "solver.max_iter=3", "--no-progress", *extra])
            err = capsys.readouterr().err.strip()
            assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
            assert "train.output_dir" in err and str(out) in err and "ermission denied" in err
            assert _snapshot(out) == before  # earlier files untouched, nothing new
    finally:
        out.chmod(0o700)


def test_permission_denied_in_output_dir_simulated(data, tmp_path, capsys, monkeypatch):
    """The same as above where it can run as root: creating any file in the folder fails with EACCES."""
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", _cfg_dict(data, out, max_iter=1))
    assert main(["train", str(cfg_path), "--no-progress"]) == 0
    before = _snapshot(out)
    real_open = os.open

    def deny(path, flags, *args, **kwargs):
        if Path(path).parent == out and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    rc = main(["train", str(cfg_path), "solver.max_iter=3", "--resume", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "train.output_dir" in err and str(out) in err and "ermission denied" in err
    monkeypatch.undo()
    assert _snapshot(out) == before


def test_output_dir_that_cannot_be_created_is_one_clear_error(data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cfg_path = write_config(tmp_path / "c.yaml", _cfg_dict(data, blocker / "run"))
    assert main(["train", str(cfg_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.output_dir" in err and str(blocker / "run") in err
    assert blocker.read_text() == "not a folder"


def test_disk_full_while_saving_a_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", _cfg_dict(data, out))
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):  # the second checkpoint hits a full disk half-way
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(serialization.torch, "save", save)
    rc = main(["train", str(cfg_path), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "no space left on device" in err and str(out / "model_0000006.pth") in err
    assert "previous file" in err and "untouched" in err
    # the previous checkpoint is intact and still the one to resume from; no partial file anywhere
    assert [p.name for p in list_checkpoints(out)] == ["model_0000003.pth"]
    assert latest_checkpoint(out) == out / "model_0000003.pth"
    assert load_file(out / "model_0000003.pth")["iteration"] == 3
    assert not list(out.glob(".*.tmp"))
