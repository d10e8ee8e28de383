"""The runs index: ``<root>/index.html`` linking every run, sweep and comparison page found under a folder."""

from __future__ import annotations

import os
from pathlib import Path

from .. import rundir as rd
from ..errors import UserError
from ..catalog import find_dirs, find_runs, summarize
from .html import Markup, Page, esc, fmt, href, note, table, tag


def write_runs_index(root: str | Path) -> Path:
    """Write ``<root>/index.html``: one row per run directory under ``root`` (also the trials of
    sweeps) with its name, date, data set, model, best val and test accuracy, status and a link to
    its report; then the sweep reports and comparison pages found there. Returns the page's path."""
    root = Path(root)
    if problem := rd.path_problem(root, "folder"):
        raise UserError(f"runs folder {str(root)!r} {problem} (give --runs-dir DIR).")
    rd.writable_dir(root, "--runs-dir")  # index.html goes there
    rows = []
    for d in find_runs(root):
        s = summarize(d)
        rel = Path(os.path.relpath(d, root)).as_posix()
        link = tag("a", "report", href=href(d / rd.REPORT, root)) if (d / rd.REPORT).exists() \
            else Markup(f'<span title="{esc("cnnlab report " + str(d))}">no report yet</span>')
        status = Markup(f'<span title="{esc(s.damaged)}">damaged</span>') if s.damaged else s.status
        rows.append((s.started, [s.name, s.started, s.dataset, s.model, fmt(s.best_val_acc), fmt(s.test_acc),
                                 status, rel, link]))
    rows.sort(key=lambda t: t[0], reverse=True)
    page = Page(f"cnnlab runs in {root.name or root}", root, f"{root.resolve()}")
    head = ["name", "date", "data set", "model", "best val acc", "test acc", "status", "directory", "report"]
    sections = [("runs", f"Runs ({len(rows)})", table(head, [r for _, r in rows]) if rows else
                 note(f"no runs under {root} (start one with `cnnlab run EXPERIMENT.toml`)."))]
    sweeps = [d for d in find_dirs(root, rd.SWEEP_JSON)]
    if sweeps:
        srows = []
        for d in sorted(sweeps):
            link = tag("a", "report", href=href(d / rd.REPORT, root)) if (d / rd.REPORT).exists() else "no report yet"
            srows.append([Path(os.path.relpath(d, root)).as_posix(), link])
        sections.append(("sweeps", "Sweeps", table(["directory", "report"], srows)))
    compares = sorted(find_dirs(root, rd.COMPARE))
    if compares:
        sections.append(("comparisons", "Comparisons", table(
            ["directory", "page"], [[Path(os.path.relpath(d, root)).as_posix(),
                                     tag("a", "compare", href=href(d / rd.COMPARE, root))] for d in compares])))
    out = root / rd.INDEX
    rd.atomic_write_text(out, page.render(sections))
    return out
