"""The sweep report from hand-built sweep directories (sweep.json and results.csv as a sweep writes
them, no training): the ranked table stays narrow enough for a laptop's page whatever the number of
parameters, the objective plot numbers trials as the table does, links find the trials' run
directories, and every string from the sweep file or a trial is shown as text."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from markupsafe import escape

from cnnlab.report import sweep as report_sweep
from cnnlab.report import write_sweep_report
from cnnlab.rundir import REPORT

from .pagetext import outside_scripts

EVIL = "<script>alert(1)</script>"
SUMMARIES = ["val.loss", "test.accuracy", "test.loss"]


def make_sweep(d: Path, keys: list[str], n: int = 6, failed: tuple[int, ...] = (1,), name: str = "wide",
               value: str = "x") -> Path:
    """A sweep directory whose results.csv has ``n`` trials over ``keys`` (trial t: val.accuracy
    0.5 + 0.05 t; the trials in ``failed`` failed), each run in trials/<name>/<t> as results.csv
    records it: by a path from another working directory."""
    d.mkdir(parents=True)
    (d / "sweep.json").write_text(json.dumps({"config": {"name": name, "metric": "val.accuracy",
                                                         "direction": "maximize", "strategy": "grid"},
                                              "study": "s", "storage": "sqlite:///study.db"}))
    cols = ["trial", "state", *keys, "val.accuracy", "val.accuracy.std", *SUMMARIES, "seconds", "repeats", "run_dir",
            "error"]
    with open(d / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for t in range(n):
            ok = t not in failed
            (d / "trials" / "tiny" / f"t{t}").mkdir(parents=True)
            w.writerow({"trial": t, "state": "complete" if ok else "fail",
                        **{k: value if i == len(keys) - 1 else 10.0 ** -t for i, k in enumerate(keys)},
                        "val.accuracy": 0.5 + 0.05 * t if ok else "", "val.accuracy.std": "", "val.loss": 1.25,
                        "test.accuracy": 0.875, "test.loss": 1.5, "seconds": 3.25 * t, "repeats": 1,
                        "run_dir": f"elsewhere/trials/tiny/t{t}", "error": "" if ok else f"boom {EVIL}"})
    return d


def header(text: str) -> list[str]:
    head = re.search(r'<table class="ranking">\n<thead><tr>(.*?)</tr></thead>', text, re.S).group(1)
    return re.findall(r"<th[^>]*>(.*?)</th>", head)


def body_rows(text: str) -> list[list[str]]:
    body = re.search(r'<table class="ranking">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


@pytest.mark.parametrize("n_keys", [1, 3, 4, 8])
def test_the_ranked_table_stays_narrow_whatever_the_number_of_parameters(tmp_path, n_keys):
    """Up to PARAM_COLUMNS_MAX parameters get a column each; more share one cell, a line each: at most
    3 + PARAM_COLUMNS_MAX + 1 metric + 3 summaries + time + run columns (the metrics and the time stay
    in view on a laptop, where results.csv has 8 parameters and 14 columns)."""
    keys = [f"group{i}.key_{i}" for i in range(n_keys)]
    d = make_sweep(tmp_path / "s", keys)
    text = write_sweep_report(d).read_text()
    head = header(text)
    assert len(head) <= 3 + report_sweep.PARAM_COLUMNS_MAX + 1 + len(SUMMARIES) + 2
    assert head[-2:] == ["time", "run"] and "test.<wbr>accuracy" in head and "val.<wbr>accuracy" in head
    rows = body_rows(text)
    assert [r[1] for r in rows] == ["5", "4", "3", "2", "0"]  # best first; trial 1 failed
    if n_keys <= report_sweep.PARAM_COLUMNS_MAX:
        assert head[2:2 + n_keys] == [k.replace(".", ".<wbr>").replace("_", "_<wbr>") for k in keys]
    else:  # one cell: each parameter on its line, by the shortest unambiguous name
        assert "parameters" in head[2] and len(head) == 9
        assert rows[0][2] == "<br>".join([f"key_{i} = 1e-05" for i in range(n_keys - 1)] + [f"key_{n_keys - 1} = x"])
    assert rows[0][-3:-1] == ["1.5000", "16.2 s"]  # test.loss and the time: compact formats


def test_links_find_the_trials_run_directories_inside_the_sweep(tmp_path):
    d = make_sweep(tmp_path / "s", ["train.lr"])
    (d / "trials" / "tiny" / "t5" / REPORT).write_text("<html></html>")
    rows = body_rows(write_sweep_report(d).read_text())
    assert rows[0][-1] == '<a href="trials/tiny/t5/report.html">report</a>'  # a report where there is one
    assert rows[1][-1] == '<a href="trials/tiny/t4">run</a>'  # else the run directory


def test_the_objective_plot_numbers_trials_as_the_table(tmp_path, monkeypatch):
    """The page draws the objective (the sweep had not): its points sit at the table's trial numbers,
    from 0, with the failed trial's gap, and each tick is labelled with one."""
    drawn = []

    def keep(*args, **kwargs):  # the page clears each figure once saved: read it as drawn
        ax = (fig := history(*args, **kwargs)).axes[0]
        drawn.append((list(ax.lines[0].get_xdata()), [t.get_text() for t in ax.get_xticklabels()]))
        return fig

    history = report_sweep.sweep_history_figure
    monkeypatch.setattr(report_sweep, "sweep_history_figure", keep)
    d = make_sweep(tmp_path / "s", ["train.lr", "model.name"], n=5, failed=(1, 3))
    text = write_sweep_report(d).read_text()
    table_ids = sorted(int(r[1]) for r in body_rows(text))
    assert table_ids == [0, 2, 4]
    assert drawn == [(table_ids, ["0", "2", "4"])]
    assert (d / "figures" / "sweep_objective.png").is_file() and (d / "figures" / "sweep_params.png").is_file()


def test_every_string_of_the_sweep_shows_as_text(tmp_path):
    d = make_sweep(tmp_path / "s", ["train.lr", "model.activation"], name=EVIL, value=EVIL)
    text = write_sweep_report(d).read_text()
    assert "<script" not in outside_scripts(text).lower()
    assert text.count(str(escape(EVIL))) >= 2 + 5 + 1  # title and heading, a parameter per trial, the error
