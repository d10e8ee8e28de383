"""Runs side by side: ``cnnlab compare RUN_DIR... [--out DIR]``.

``compare_rows(run_dirs)`` reads each run directory once into a flat summary (the config keys that
differ between the runs, accuracy per split,
macro precision/recall/F1 and per-class accuracy on the test split, parameters, training time,
images/s), taking every metric from the run's metrics.json as it is (nothing is recomputed).
``print_compare`` prints them as one table with a column per run; ``write_compare`` writes
``compare.html`` with that table, the overlaid training curves and the per-class accuracy bars,
each figure also saved under ``figures/``.

Default output folder: ``<runs root>/compare/<timestamp>/``, where the runs root is the folder
that holds the runs' name folders (``runs/`` for ``runs/<name>/<timestamp>``; the deepest folder
common to all runs when they come from different roots). The page's sections are the macros of
``templates/compare.html``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import rundir as rd
from ..catalog import differing_keys, read_config
from ..errors import UserError
from ..lifecycle import read_status, shown_status
from ._page import Page
from .charts import compare_curves_chart
from .html import Section, fmt, fmt_seconds, href, note, page_template
from .plots import compare_curves_figure, grouped_bars_figure
from .run import parameter_count

# The printed table lists per-class accuracy up to this many classes (the page lists up to
# PAGE_MAX_CLASSES and draws bars up to BARS_MAX_CLASSES); metrics.json has them all.
PRINT_MAX_CLASSES = 20
PAGE_MAX_CLASSES = 200
# Config keys shown where they differ between the runs (the name aside: it labels the columns).
MAX_SETTINGS = 40
BARS_MAX_CLASSES = 40
HEADLINE_SPLIT = "test"  # the split of the macro and per-class columns: the one runs are judged by


def summarize(run_dir: str | Path) -> dict[str, Any]:
    """One run as a flat dict: ``dir``, ``name``, ``model``, ``dataset``, ``status``, ``epochs``,
    ``train_acc``/``val_acc``/``test_acc`` (metrics.json ``<split>.accuracy``),
    ``macro_precision``/``macro_recall``/``macro_f1`` (test split, ``macro``), ``per_class_acc``
    ({class name: test recall, i.e. the share of that class's test images classified right}),
    ``params``/``trainable_params`` (counted on the model built from the best checkpoint),
    ``train_seconds`` (run.json, else the sum of history.jsonl's ``seconds``), ``images_per_s``
    (mean of history.jsonl's per-epoch ``images_per_s``), ``history`` and ``config`` (config.toml
    as key paths; the settings that differ between runs head the table). Missing values are None."""
    d = rd.require_run_dir(run_dir)
    st = read_status(d, strict=True)
    history = rd.read_history(d)
    metrics = rd.read_metrics(d)
    head = metrics.get(HEADLINE_SPLIT, {})
    params = parameter_count(d)
    secs = [h["seconds"] for h in history if h.get("seconds") is not None]
    ips = [h["images_per_s"] for h in history if h.get("images_per_s")]
    per_class = {}
    if head.get("per_class"):
        per_class = dict(zip((str(c) for c in head["class_names"]), head["per_class"]["recall"]))
    return {
        "dir": d,
        "name": st.get("name", d.parent.name),
        "model": st.get("model"),
        "dataset": st.get("dataset"),
        "status": shown_status(d, st) if st else None,
        "epochs": history[-1]["epoch"] if history else 0,
        **{f"{s}_acc": metrics.get(s, {}).get("accuracy") for s in ("train", "val", "test")},
        **{f"macro_{m}": head.get("macro", {}).get(m) for m in ("precision", "recall", "f1")},
        "per_class_acc": per_class,
        "params": params[0] if params else None,
        "trainable_params": params[1] if params else None,
        "train_seconds": float(st["train_seconds"]) if st.get("train_seconds") is not None
        else (float(sum(secs)) if secs else None),
        "images_per_s": sum(ips) / len(ips) if ips else None,
        "history": history,
        "config": read_config(d),
    }


def differing_settings(rows: list[dict[str, Any]]) -> list[str]:
    """The config keys (``data.augment.hflip``) whose values are not the same in every run, the
    name aside, in key order: the settings the comparison is about."""
    return differing_keys([r.get("config") for r in rows], ignore=("name",))


def _setting(value: Any) -> str:
    return "-" if value is None else json.dumps(value, default=str) if not isinstance(value, str) else value


def compare_rows(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """``summarize`` of each run, each with a unique ``label`` (the run name, with its timestamp
    folder added where two runs share a name)."""
    if not run_dirs:
        raise UserError("compare needs at least one run directory (cnnlab compare RUN_DIR RUN_DIR ...).")
    rows = [summarize(d) for d in run_dirs]
    names = [r["name"] for r in rows]
    for r in rows:
        r["label"] = r["name"] if names.count(r["name"]) == 1 else f"{r['name']}/{r['dir'].name}"
    seen: dict[str, int] = {}
    for r in rows:  # the same directory given twice
        n = seen[r["label"]] = seen.get(r["label"], 0) + 1
        if n > 1:
            r["label"] += f" ({n})"
    return rows


def _classes(rows: list[dict[str, Any]]) -> list[str]:
    """Every class name of the runs, in order of first appearance."""
    out: dict[str, None] = {}
    for r in rows:
        out.update(dict.fromkeys(r["per_class_acc"]))
    return list(out)


def table_rows(rows: list[dict[str, Any]], max_classes: int) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the side-by-side table: one row per quantity, one column per run."""
    def line(label: str, key: str, f=fmt) -> list[str]:
        return [label, *[f(r.get(key)) for r in rows]]

    head = ["", *[r["label"] for r in rows]]
    body = [
        line("model", "model", lambda v: v or "-"),
        line("data set", "dataset", lambda v: v or "-"),
        line("status", "status", lambda v: v or "-"),
        line("epochs", "epochs"),
        *[[f"config: {k}", *[_setting((r.get("config") or {}).get(k)) for r in rows]]
          for k in differing_settings(rows)[:MAX_SETTINGS]],
        line("train accuracy", "train_acc"),
        line("val accuracy", "val_acc"),
        line("test accuracy", "test_acc"),
        line("test macro precision", "macro_precision"),
        line("test macro recall", "macro_recall"),
        line("test macro F1", "macro_f1"),
        line("parameters", "params"),
        line("training time", "train_seconds", fmt_seconds),
        line("images/s (training)", "images_per_s", lambda v: fmt(v, ",.0f")),
    ]
    for c in _classes(rows)[:max_classes]:
        body.append([f"test accuracy: {c}", *[fmt(r["per_class_acc"].get(c)) for r in rows]])
    return head, body


def print_compare(rows: list[dict[str, Any]]) -> None:
    """The side-by-side table on stdout (rich)."""
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    head, body = table_rows(rows, PRINT_MAX_CLASSES)
    table = Table(title=f"{len(rows)} runs side by side")
    for i, h in enumerate(head):
        table.add_column(Text(h), justify="left" if i == 0 else "right", overflow="fold")
    for row in body:
        table.add_row(*[Text(c) for c in row])  # Text: a "[red]" in a run or class name is not markup
    console = Console() if sys.stdout.isatty() else Console(width=200)
    console.print(table)
    k = len(_classes(rows))
    if k > PRINT_MAX_CLASSES:
        print(f"(per-class accuracy of the first {PRINT_MAX_CLASSES} of {k} classes; compare.html has more)")
    for r in rows:
        print(f"{r['label']}: {r['dir']}")


def default_out_dir(run_dirs: list[Path]) -> Path:
    """``<runs root>/compare/<timestamp>``: see the module docstring."""
    roots = [Path(d).resolve().parent.parent for d in run_dirs]
    try:
        root = Path(os.path.commonpath([str(r) for r in roots]))
    except ValueError:  # different drives (Windows)
        root = Path.cwd()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = root / "compare" / stamp
    i = 1
    while out.exists():
        out, i = root / "compare" / f"{stamp}-{i}", i + 1
    return out


def write_compare(run_dirs: list[str | Path], out_dir: str | Path | None = None,
                  rows: list[dict[str, Any]] | None = None) -> Path:
    """Write ``compare.html`` (and ``figures/*.png``) comparing the runs; returns its path.
    ``out_dir``: where (default: ``default_out_dir``). ``rows``: ``compare_rows(run_dirs)`` when
    the caller has it already. Links to each run's report are relative."""
    rows = rows if rows is not None else compare_rows(list(run_dirs))
    out = Path(out_dir) if out_dir is not None else default_out_dir([r["dir"] for r in rows])
    rd.writable_dir(out, "--out")
    page = Page("cnnlab comparison: " + ", ".join(r["label"] for r in rows), out,
                f"{len(rows)} runs; macro and per-class columns on the {HEADLINE_SPLIT} split")
    head, body = table_rows(rows, PAGE_MAX_CLASSES)
    runs = [{"label": r["label"], "dir": str(r["dir"]),
             "report": href(r["dir"] / rd.REPORT, out) if (r["dir"] / rd.REPORT).exists() else None} for r in rows]
    classes = _classes(rows)
    k = len(classes)
    template = page_template("compare")
    sections = [Section("table", "Side by side", template.side_by_side(head, body, min(k, PAGE_MAX_CLASSES), k, runs))]
    curves_caption = ("Training loss, validation loss and validation accuracy per epoch of each run (runs without a "
                      "validation split show their training values).")
    curves = page.figure("compare_curves", compare_curves_figure({r["label"]: r["history"] for r in rows}),
                         curves_caption)
    per_class = None
    if classes and k <= BARS_MAX_CLASSES:
        fig = grouped_bars_figure(classes, {r["label"]: [r["per_class_acc"].get(c) for c in classes] for r in rows},
                                  "test accuracy of the class")
        low = fig.axes[0].get_ylim()[0]
        per_class = page.figure("compare_per_class", fig, "Per-class test accuracy (recall) of each run" + (
            f"; the axis starts at {low:.3g}, not 0, so that small differences show: compare the bars' tops, "
            f"not their lengths." if low > 0 else "."))
    elif classes:
        per_class = note(f"{k} classes: per-class bars are drawn up to {BARS_MAX_CLASSES}; see the table.")
    interactive = page.chart(compare_curves_chart({r["label"]: r["history"] for r in rows}, chart_id="chart-compare-curves"),
                             curves_caption)
    sections.append(Section("figures", "Curves and per-class accuracy", template.figures(curves, per_class, interactive)))
    path = out / rd.COMPARE
    rd.atomic_write_text(path, page.render(sections))
    return path
