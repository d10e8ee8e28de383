"""`cnnlab compare`: two real tiny digits runs (a CNN and an MLP) side by side; every number of
the table is the one in each run's metrics.json / history.jsonl, in print and on the page."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from markupsafe import escape

import cnnlab
from cnnlab import rundir as rd
from cnnlab.lifecycle import read_status
from cnnlab.cli import main
from cnnlab.report.compare import compare_rows, default_out_dir, write_compare
from cnnlab.rundir import COMPARE

from .pagetext import outside_scripts

BASE = {"seed": 0, "report": False, "data": {"dataset": "digits", "val_fraction": 0.1},
        "train": {"epochs": 2, "batch_size": 64, "device": "cpu"}}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cmp") / "runs"
    a = cnnlab.run({**BASE, "name": "cmp_cnn", "model": {"name": "cnn", "channels": [8], "hidden": [16]}},
                   runs_dir=root, quiet=True).dir
    b = cnnlab.run({**BASE, "name": "[red]<i>mlp", "model": {"name": "mlp", "hidden_size": 16}},
                   runs_dir=root, quiet=True).dir
    return a, b


def test_rows_equal_each_runs_files(two_runs):
    rows = compare_rows(list(two_runs))
    for r, d in zip(rows, two_runs):
        m = rd.read_json(d / rd.METRICS)
        hist = rd.read_history(d)
        assert r["label"] == read_status(d)["name"]
        assert (r["train_acc"], r["val_acc"], r["test_acc"]) == (m["train"]["accuracy"], m["val"]["accuracy"],
                                                                 m["test"]["accuracy"])
        assert (r["macro_precision"], r["macro_recall"], r["macro_f1"]) == tuple(
            m["test"]["macro"][k] for k in ("precision", "recall", "f1"))
        assert r["per_class_acc"] == dict(zip(m["test"]["class_names"], m["test"]["per_class"]["recall"]))
        assert r["params"] == sum(p.numel() for p in cnnlab.Run(d).model.parameters())
        assert r["train_seconds"] == pytest.approx(read_status(d)["train_seconds"])
        assert r["images_per_s"] == pytest.approx(sum(h["images_per_s"] for h in hist) / len(hist))
    assert rows[0]["params"] != rows[1]["params"]


def test_same_name_runs_get_distinct_labels(two_runs, tmp_path):
    twin = tmp_path / "cmp_cnn" / "other"
    shutil.copytree(two_runs[0], twin)
    labels = [r["label"] for r in compare_rows([two_runs[0], twin])]
    assert labels == [f"cmp_cnn/{two_runs[0].name}", "cmp_cnn/other"]


def test_compare_page_and_printed_table(two_runs, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", *map(str, two_runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    text = (out / COMPARE).read_text()
    assert f"compare: {out / COMPARE}" in printed
    for d in two_runs:
        m = rd.read_json(d / rd.METRICS)
        for v in (m["train"]["accuracy"], m["val"]["accuracy"], m["test"]["accuracy"], m["test"]["macro"]["f1"]):
            assert f"{v:.4f}" in printed and f"<td>{v:.4f}</td>" in text
    # One row per quantity, one column per run, in the order given.
    ta = [rd.read_json(d / rd.METRICS)["test"]["accuracy"] for d in two_runs]
    assert f"<tr><td>test accuracy</td><td>{ta[0]:.4f}</td><td>{ta[1]:.4f}</td></tr>" in text
    m0 = rd.read_json(two_runs[0] / rd.METRICS)["test"]
    name, rec = m0["class_names"][3], m0["per_class"]["recall"][3]
    assert f"<td>test accuracy: {name}</td><td>{rec:.4f}</td>" in text
    # The run name with markup is text, on the page and in print (rich markup off).
    assert "[red]&lt;i&gt;mlp" in text and "<i>mlp" not in text
    assert "[red]<i>mlp" in printed
    for key in ("compare_curves", "compare_per_class"):
        assert (out / "figures" / f"{key}.png").stat().st_size > 0
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 2
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", outside_scripts(text))
    assert 'id="chart-compare-curves"' in text  # the overlaid curves, interactive


def test_default_output_goes_next_to_the_runs(two_runs):
    out = default_out_dir(list(two_runs))
    assert out.parent == two_runs[0].parent.parent.resolve() / "compare"
    path = write_compare(list(two_runs), None)
    assert path.parent.parent == two_runs[0].parent.parent.resolve() / "compare" and path.exists()
    page = path.read_text()
    assert escape("[red]<i>mlp") in page


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["compare", str(tmp_path / "x")]) == 2
    assert "not a cnnlab run directory" in capsys.readouterr().err


def test_the_settings_that_differ_head_the_table(two_runs, tmp_path, capsys):
    from cnnlab.report.compare import differing_settings, table_rows

    rows = compare_rows(list(two_runs))
    keys = differing_settings(rows)
    assert "model.name" in keys and "model.channels" in keys and "model.hidden_size" in keys
    assert "name" not in keys and "seed" not in keys and "train.epochs" not in keys  # the same in both
    _, body = table_rows(rows, 10)
    by_label = {r[0]: r[1:] for r in body}
    assert by_label["config: model.name"] == ["cnn", "mlp"]
    assert by_label["config: model.channels"] == ["[8]", "-"]  # the MLP has no such key
    assert main(["compare", *map(str, two_runs), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "config: model.name" in out and "config: model.hidden_size" in out
    assert "config: model.name" in (tmp_path / "c" / COMPARE).read_text()
