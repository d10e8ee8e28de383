"""The training statistics callback: what it records, its cadence, that it does not change training,
and that stats.jsonl survives a resume with each epoch once."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import cnnlab
from cnnlab import rundir as rd
from cnnlab.lifecycle import RunStatus, write_status
from cnnlab.train.stats import ACTIVATION_STATS, _ActAccumulator, activation_stat, weight_layers

MLP = {
    "name": "st", "seed": 0,
    "data": {"dataset": "digits", "test_fraction": 0.2, "val_fraction": 0.1},
    "model": {"name": "mlp", "hidden_size": 64},
    "train": {"epochs": 3, "batch_size": 64, "lr": 1e-3, "device": "cpu"},
}


def real_run(tmp_path, **extra):
    """A small digits MLP run with ``extra`` sections merged in; returns its directory."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in MLP.items()}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cnnlab.run(cfg, runs_dir=tmp_path, quiet=True).dir


def test_dead_units_and_saturation_on_known_outputs():
    relu = _ActAccumulator("r", "ReLU", activation_stat(nn.ReLU()))
    y = torch.zeros(4, 8, 3, 3)
    y[:, :2] = 1.0  # channels 0-1 fire, 2-7 never: 6 of 8 dead
    relu.add(y[:2])
    relu.add(y[2:])
    mean, var, dead, sat = [float(v) for v in relu.scalars()]
    assert dead == pytest.approx(0.75) and mean == pytest.approx(0.25) and sat != sat  # NaN: not a bounded activation
    tanh = _ActAccumulator("t", "Tanh", activation_stat(nn.Tanh()))
    tanh.add(torch.tensor([[-0.999, 0.5, 0.995, 0.0]]))
    assert float(tanh.scalars()[3]) == pytest.approx(0.5)  # |y| > 0.98 is saturated
    assert activation_stat(nn.Linear(2, 2)) is None and nn.GELU in ACTIVATION_STATS


def test_weight_layers_in_forward_order():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    assert [n for n, _ in weight_layers(m)] == ["0", "4"]  # BatchNorm's 1-d weight is not a layer


def test_stats_do_not_change_training_and_survive_resume(tmp_path):
    off = real_run(tmp_path / "off", diagnostics={"stats_every": 0}, train={"epochs": 4}, checkpoint={"every": 1})
    on = real_run(tmp_path / "on", train={"epochs": 4}, checkpoint={"every": 1})
    assert not (off / "stats.jsonl").exists()
    assert [h["train_loss"] for h in rd.read_history(off)] == [h["train_loss"] for h in rd.read_history(on)]
    before = (on / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in before] == [1, 2, 3, 4]
    # Pretend the run was killed after epoch 2: resume from epoch-0002.pt, as `cnnlab resume` would.
    (on / "checkpoints" / "last.pt").write_bytes((on / "checkpoints" / "epoch-0002.pt").read_bytes())
    write_status(on, RunStatus.RUNNING)  # as a SIGKILL leaves it: "running", its process gone
    cnnlab.resume(on, quiet=True)
    after = [json.loads(line) for line in (on / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in after] == [1, 2, 3, 4]
    for a, b in zip(after, map(json.loads, before)):
        assert a["layers"][0]["weight_norm"] == pytest.approx(b["layers"][0]["weight_norm"], rel=1e-4)


def test_stats_cadence(tmp_path):
    d = real_run(tmp_path, diagnostics={"stats_every": 2, "probe_size": 16}, train={"epochs": 5})
    recs = [json.loads(line) for line in (d / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 4] and recs[0]["probe_size"] == 16


