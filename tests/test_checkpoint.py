"""Tests for checkpoints: atomic save and safe load (utils.serialization), readable mismatch errors
(modeling.state_dict), RNG state (training.rng), the checkpoint folder (training.checkpoint)."""

from __future__ import annotations

import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from retinanet.modeling.state_dict import StateDictMismatchError, load_model_state
from retinanet.training.checkpoint import (
    LAST_CHECKPOINT_FILE,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)
from retinanet.training.rng import get_rng_state, set_rng_state
from retinanet.utils.serialization import CheckpointError, UnsafeCheckpointError, load_file

torch.set_num_threads(1)


def _mlp(out: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, out))


def _assert_same(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _full_state() -> tuple[dict, nn.Module, torch.optim.Optimizer]:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 80], gamma=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "iteration": 1000,
        "best_ap": 0.3125,
        "config": {"name": "r50", "sizes": [32, 64], "pair": (1, 2), "none": None, "flag": True},
        "rng": get_rng_state(),
    }
    return state, model, opt


def test_round_trip_nested_state_with_optimizer_and_rng(tmp_path):
    state, model, opt = _full_state()
    assert opt.state_dict()["state"], "optimizer must have momentum buffers for the test to mean anything"
    path = save_checkpoint(tmp_path / checkpoint_name(1000), state)
    assert path.name == "model_0001000.pth"
    loaded = load_file(path)
    _assert_same(state, loaded)

    # the optimizer state loads into a fresh optimizer and steps identically
    model2 = _mlp()
    load_model_state(model2, loaded["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    opt2.load_state_dict(loaded["optimizer"])
    x = torch.randn(3, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for p1, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p1, p2)


def test_rng_state_survives_weights_only_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gauss_next
    save_checkpoint(tmp_path / "rng.pth", {"rng": get_rng_state()})
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(2).tolist(),
        torch.rand(3).tolist(),
    )
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(load_file(tmp_path / "rng.pth")["rng"])
    got = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(2).tolist(),
        torch.rand(3).tolist(),
    )
    assert got == expected


def test_set_rng_state_rejects_unknown_sections():
    with pytest.raises(ValueError, match="unknown sections"):
        set_rng_state({"pyhton": {}})


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "model_0000100.pth"
    save_checkpoint(path, {"iteration": 100, "w": torch.arange(10.0)})
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial garbage" * 100)
        f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CheckpointError, match="no space left") as info:
        save_checkpoint(path, {"iteration": 200, "w": torch.zeros(10)})
    assert str(path) in str(info.value)
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_CHECKPOINT_FILE, path.name]
    assert load_file(path)["iteration"] == 100


def test_interrupt_mid_write_propagates_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {"v": 1}, update_last=False)
    before = path.read_bytes()

    def interrupted_save(obj, f, *args, **kwargs):
        f.write(b"x" * 1000)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"v": 2}, update_last=False)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def test_failing_rename_is_a_checkpoint_error(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_checkpoint(path, {"v": 1}, update_last=False)

    def no_replace(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(CheckpointError, match="Permission denied") as info:
        save_checkpoint(path, {"v": 2}, update_last=False)
    monkeypatch.undo()
    assert str(path) in str(info.value)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]
    assert load_file(path) == {"v": 1}


def test_state_that_weights_only_cannot_load_is_rejected_before_writing(tmp_path):
    path = tmp_path / "bad.pth"
    with pytest.raises(TypeError, match=r"\['extra'\]\['arr'\].*numpy"):
        save_checkpoint(path, {"extra": {"arr": np.zeros(3)}})

    class Custom:
        pass

    with pytest.raises(TypeError, match=r"\['items'\]\[1\].*Custom"):
        save_checkpoint(path, {"items": [1, Custom()]})
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_truncated_empty_and_foreign_files_raise_clear_errors(tmp_path):
    good = tmp_path / "good.pth"
    save_checkpoint(good, {"w": torch.randn(1000)}, update_last=False)
    data = good.read_bytes()
    for n in (10, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"trunc_{n}.pth"
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated") as info:
            load_file(bad)
        assert str(bad) in str(info.value)

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_file(empty)

    text = tmp_path / "notes.pth"
    text.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint") as info:
        load_file(text)
    assert str(text) in str(info.value)

    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    with pytest.raises(CheckpointError, match="not a checkpoint: it holds a list"):
        load_file(listed)

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_file(tmp_path / "missing.pth")


class _Evil:
    """Unpickling this calls open(marker, "w"), i.e. creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickles_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "PWNED"
    zip_file = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Evil(marker)}, zip_file)
    raw2 = tmp_path / "evil_p2.pkl"
    raw4 = tmp_path / "evil_p4.pkl"
    with open(raw2, "wb") as f:
        pickle.dump({"payload": _Evil(marker)}, f, protocol=2)
    with open(raw4, "wb") as f:
        pickle.dump({"payload": _Evil(marker)}, f, protocol=4)

    for path in (zip_file, raw2, raw4):
        with pytest.raises(UnsafeCheckpointError, match="refusing to execute code") as info:
            load_file(path)
        assert str(path) in str(info.value)
        assert "open" in str(info.value)  # names the offending global
        assert not marker.exists(), f"loading {path.name} executed code"

    # control: the payloads are live, an unsafe loader would have run them
    torch.load(zip_file, weights_only=False)
    assert marker.exists()
    marker.unlink()
    with open(raw4, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def _arch_a() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 1, bias=False))


def _arch_b() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2))


def test_wrong_architecture_lists_missing_unexpected_and_mismatched_keys():
    src, dst = _arch_a(), _arch_b()
    with pytest.raises(StateDictMismatchError) as info:
        load_model_state(dst, src.state_dict())
    msg = str(info.value)
    assert "missing keys (2): 4.weight, 4.bias" in msg
    assert "unexpected keys (1): 3.weight" in msg
    assert ("shape mismatches: 2.weight: checkpoint [3, 8] vs model [5, 8], 2.bias: checkpoint [3] vs model [5]") in msg
    assert "0.weight" not in msg
    # nothing was loaded by the failed strict call
    assert not torch.equal(dst[0].weight, src[0].weight)


def test_many_differing_keys_are_grouped_by_module_not_cut_off():
    src = nn.Sequential(nn.Linear(4, 4))
    dst = nn.Sequential(nn.Linear(4, 4), *[nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(3)])
    with pytest.raises(StateDictMismatchError) as info:
        load_model_state(dst, src.state_dict())
    assert "missing keys (12): 1.0.* (2), 1.1.* (2), 2.0.* (2), 2.1.* (2), 3.0.* (2), 3.1.* (2)" in str(info.value)
    few = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(StateDictMismatchError, match=r"missing keys \(2\): 1.weight, 1.bias"):
        load_model_state(few, src.state_dict())


def test_non_strict_loads_matching_entries_and_reports_the_rest():
    src, dst = _arch_a(), _arch_b()
    before = dst[2].weight.clone()
    report = load_model_state(dst, src.state_dict(), strict=False)
    assert report.missing == ["4.weight", "4.bias"]
    assert report.unexpected == ["3.weight"]
    assert report.mismatched == ["2.weight", "2.bias"]
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[0].bias, src[0].bias)
    assert torch.equal(dst[2].weight, before)


def test_ddp_prefix_and_checkpoint_dict_are_accepted():
    src, dst = _mlp(), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ddp_sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    report = load_model_state(dst, {"model": ddp_sd, "iteration": 5})
    assert report.missing == report.unexpected == report.mismatched == []
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_latest_checkpoint_and_keep_last_pruning(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "does_not_exist") is None
    for it in (100, 200, 300, 400, 500):
        save_checkpoint(tmp_path / checkpoint_name(it), {"iteration": it}, keep_last=2)
    (tmp_path / "best.pth").write_bytes(b"not touched")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["model_0000400.pth", "model_0000500.pth"]
    assert (tmp_path / LAST_CHECKPOINT_FILE).read_text().strip() == "model_0000500.pth"
    assert latest_checkpoint(tmp_path) == tmp_path / "model_0000500.pth"
    assert load_file(latest_checkpoint(tmp_path))["iteration"] == 500

    # a run killed after writing the checkpoint but before updating the pointer
    save_checkpoint(tmp_path / checkpoint_name(600), {"iteration": 600}, update_last=False)
    assert latest_checkpoint(tmp_path).name == "model_0000600.pth"
    # iteration order is numeric, not by file mtime or listing order
    save_checkpoint(tmp_path / checkpoint_name(10_000_000), {"iteration": 10_000_000}, update_last=False)
    assert latest_checkpoint(tmp_path).name == "model_10000000.pth"

    save_checkpoint(tmp_path / "model_final.pth", {"iteration": -1})
    assert latest_checkpoint(tmp_path).name == "model_final.pth"
    removed = prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in removed) == ["model_0000400.pth", "model_0000500.pth", "model_0000600.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pth",
        LAST_CHECKPOINT_FILE,
        "model_10000000.pth",
        "model_final.pth",
    ]

    # a pointer to a file that is gone falls back to the newest numbered checkpoint
    (tmp_path / "model_final.pth").unlink()
    assert latest_checkpoint(tmp_path).name == "model_10000000.pth"


def test_pruning_never_deletes_the_pointed_checkpoint(tmp_path):
    for it in (1, 2, 3):
        save_checkpoint(tmp_path / checkpoint_name(it), {"iteration": it}, update_last=(it == 1))
    prune_checkpoints(tmp_path, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["model_0000001.pth", "model_0000003.pth"]
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=0)


def test_safetensors_model_weights(tmp_path):
    pytest.importorskip("safetensors")
    src = _mlp()
    path = save_checkpoint(tmp_path / "weights.safetensors", src.state_dict(), update_last=False)
    loaded = load_file(path)
    assert set(loaded) == set(src.state_dict())
    dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    load_model_state(dst, loaded)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)

    data = path.read_bytes()
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_file(bad)
    with pytest.raises(TypeError, match="iteration"):
        save_checkpoint(tmp_path / "w2.safetensors", {"iteration": 3})
