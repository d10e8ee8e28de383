"""The runs index: ``<root>/index.html`` linking every run, sweep and comparison page found under a
folder. Its sections are the macros of ``templates/index.html``; it draws no figure, so it imports
no matplotlib (``cnnlab runs --html`` stays quick)."""

from __future__ import annotations

import os
from pathlib import Path

from .. import rundir as rd
from ..errors import UserError
from ..catalog import find_dirs, find_runs, summarize
from .html import Hint, Link, Section, fmt, href, page_template, render_page


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
        link = Link("report", href(d / rd.REPORT, root)) if (d / rd.REPORT).exists() \
            else Hint("no report yet", f"cnnlab report {d}")
        status = Hint("damaged", s.damaged) if s.damaged else s.status
        rows.append((s.started, [s.name, s.started, s.dataset, s.model, fmt(s.best_val_acc), fmt(s.test_acc),
                                 status, _rel(d, root), link]))
    rows.sort(key=lambda t: t[0], reverse=True)
    template = page_template("index")
    sections = [Section("runs", f"Runs ({len(rows)})", template.runs([r for _, r in rows], str(root)))]
    sweeps = sorted(find_dirs(root, rd.SWEEP_JSON))
    if sweeps:
        sections.append(Section("sweeps", "Sweeps", template.sweeps([
            [_rel(d, root), Link("report", href(d / rd.REPORT, root)) if (d / rd.REPORT).exists() else "no report yet"]
            for d in sweeps])))
    compares = sorted(find_dirs(root, rd.COMPARE))
    if compares:
        sections.append(Section("comparisons", "Comparisons", template.comparisons([
            [_rel(d, root), Link("compare", href(d / rd.COMPARE, root))] for d in compares])))
    out = root / rd.INDEX
    rd.atomic_write_text(out, render_page(f"cnnlab runs in {root.name or root}", sections, f"{root.resolve()}"))
    return out


def _rel(d: Path, root: Path) -> str:
    """``d`` relative to ``root``, with forward slashes (as the page shows it)."""
    return Path(os.path.relpath(d, root)).as_posix()
