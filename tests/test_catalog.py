"""Run discovery and grouping (cnnlab.catalog, `cnnlab runs`), on hand-built run directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cnnlab import rundir as rd
from cnnlab.catalog import find_runs, summarize
from cnnlab.cli import main
from cnnlab.metrics import compute_metrics


def make_run(d: Path, name: str = "exp", seed: int = 0, epochs: int = 3, acc: float = 0.9,
             status: str = "completed") -> Path:
    """A run directory with just what a listing reads: config.toml, run.json, history and metrics."""
    d.mkdir(parents=True)
    (d / rd.CONFIG).write_text(f'name = "{name}"\nseed = {seed}\n[train]\nepochs = {epochs}\n')
    rd.atomic_write_json(d / rd.STATUS, {"status": status, "name": name, "dataset": "digits", "model": "cnn",
                                          "started": "2026-12-02T10:00:00"})
    rd.write_history(d, [{"epoch": 1, "val_acc": acc - 0.01}])
    rd.atomic_write_json(d / rd.METRICS, {"test": _metrics(acc)})
    (d / rd.CHECKPOINTS).mkdir()
    return d


def _metrics(acc: float) -> dict:
    """metrics.json's entry of a 100-image, two-class split with accuracy ``acc``."""
    y = np.arange(100) % 2
    right = np.arange(100) < round(100 * acc)
    prob = np.where(right == (y == 1), 0.8, 0.2)  # P(class 1)
    return compute_metrics(y, np.stack([1 - prob, prob], axis=1), ["0", "1"], 0.3)


@pytest.fixture
def tree(tmp_path):
    """runs/ as `cnnlab run` writes it, a sweep's trials, a copy three folders down, and decoys."""
    made = [make_run(tmp_path / "runs" / "exp" / "s0", seed=0, acc=0.90),
            make_run(tmp_path / "runs" / "exp" / "s1", seed=1, acc=0.92),
            make_run(tmp_path / "runs" / "exp" / "long", seed=0, epochs=8, acc=0.95),
            make_run(tmp_path / "sweeps" / "sw" / "t" / "trials" / "0000" / "ts", name="sw_0000"),
            make_run(tmp_path / "backup" / "a" / "b" / "exp" / "old", seed=3, acc=0.5)]
    # a run.json inside a run's checkpoints/ and a folder with run.json only are not runs
    rd.atomic_write_json(made[0] / rd.CHECKPOINTS / rd.STATUS, {"status": "completed"})
    (tmp_path / "loose").mkdir()
    rd.atomic_write_json(tmp_path / "loose" / rd.STATUS, {"status": "completed"})
    return tmp_path, made


def test_runs_are_found_at_any_depth_and_nowhere_else(tree):
    root, made = tree
    assert find_runs(root) == sorted(made)
    assert find_runs(root / "sweeps") == [made[3]]
    assert find_runs(made[0]) == [made[0]]  # a run directory itself


@pytest.mark.parametrize("where, expected", [(".", 5), ("sweeps", 1), ("runs", 3)])
def test_cnnlab_runs_lists_what_the_index_page_lists(tree, capsys, monkeypatch, where, expected):
    root, made = tree
    monkeypatch.chdir(root)
    assert main(["runs", "--runs-dir", where, "--html"]) == 0
    out = capsys.readouterr().out
    listed = [d for d in made if str(d.relative_to(root)) in out.replace("\n", "") or d.name in out]
    assert "no runs" not in out and len(listed) >= expected
    page = (root / where / rd.INDEX).read_text()
    assert page.count("<tr>") - 1 >= expected  # the page's runs table has the same runs (and a header row)


def test_group_pools_seeds_of_the_same_settings_and_names_what_differs(tree, capsys, monkeypatch):
    root, _ = tree
    monkeypatch.chdir(root)
    assert main(["runs", "--runs-dir", "runs", "--group"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith("│ exp")]
    assert len(rows) == 2, out  # 3 epochs (seeds 0 and 1) and 8 epochs: two groups of one name
    two = next(r for r in rows if "│ 2 " in r)
    assert "91.00 ± 1.41 %" in two and "train.epochs=3" in two
    one = next(r for r in rows if "│ 1 " in r)
    assert "95.00 ± 0.00 %" in one and "train.epochs=8" in one


def test_a_run_whose_config_cannot_be_read_is_a_group_of_its_own(tree):
    _, made = tree
    (made[1] / rd.CONFIG).write_text("not [toml")
    a, b = summarize(made[0]), summarize(made[1])
    assert a.config == {"name": "exp", "seed": 0, "train.epochs": 3} and b.config is None
    assert a.fingerprint != b.fingerprint and b.damaged is None  # the listing still shows it normally
    assert summarize(made[0]).fingerprint == summarize(made[0]).fingerprint
    c = summarize(make_run(made[0].parent / "s9", seed=9))
    assert c.fingerprint == a.fingerprint  # another seed, the same settings
    assert json.loads((made[0] / rd.STATUS).read_text())["status"] == "completed"
