"""The runs index: ``<root>/index.html`` linking every run, sweep and comparison page found under a folder."""

from __future__ import annotations

import os
from pathlib import Path

from .. import rundir as rd
from ..errors import UserError
from ..catalog import summarize
from .html import Markup, Page, esc, fmt, href, note, table, tag


def _find(root: Path, marker: str, max_depth: int = 6) -> list[Path]:
    """Folders under ``root`` (itself included) holding ``marker``, at most ``max_depth`` deep,
    without descending into checkpoints/, predictions/ or figures/."""
    found, skip = [], {rd.CHECKPOINTS, rd.PREDICTIONS, rd.FIGURES, rd.EVALUATIONS, rd.TENSORBOARD, "mlruns"}
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith(".")) if depth < max_depth else []
        if marker in filenames:
            found.append(Path(dirpath))
    return found


def write_runs_index(root: str | Path) -> Path:
    """Write ``<root>/index.html``: one row per run directory under ``root`` (also the trials of
    sweeps) with its name, date, data set, model, best val and test accuracy, status and a link to
    its report; then the sweep reports and comparison pages found there. Returns the page's path."""
    root = Path(root)
    if problem := rd.path_problem(root, "folder"):
        raise UserError(f"runs folder {str(root)!r} {problem} (give --runs-dir DIR).")
    rd.writable_dir(root, "--runs-dir")  # index.html goes there
    rows = []
    for d in _find(root, rd.STATUS):
        if not rd.is_run_dir(d):
            continue
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
    sweeps = [d for d in _find(root, rd.SWEEP_JSON)]
    if sweeps:
        srows = []
        for d in sorted(sweeps):
            link = tag("a", "report", href=href(d / rd.REPORT, root)) if (d / rd.REPORT).exists() else "no report yet"
            srows.append([Path(os.path.relpath(d, root)).as_posix(), link])
        sections.append(("sweeps", "Sweeps", table(["directory", "report"], srows)))
    compares = sorted(_find(root, rd.COMPARE))
    if compares:
        sections.append(("comparisons", "Comparisons", table(
            ["directory", "page"], [[Path(os.path.relpath(d, root)).as_posix(),
                                     tag("a", "compare", href=href(d / rd.COMPARE, root))] for d in compares])))
    out = root / rd.INDEX
    rd.atomic_write_text(out, page.render(sections))
    return out
