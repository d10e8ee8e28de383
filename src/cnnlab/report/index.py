"""The runs index: ``<root>/index.html`` linking every run, sweep and comparison page found under a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import rundir as rd
from ..errors import UserError
from ..lifecycle import read_status, shown_status
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
    if not root.is_dir():
        raise UserError(f"runs folder {str(root)!r} does not exist (give --runs-dir DIR).")
    rows = []
    for d in _find(root, rd.STATUS):
        if not rd.is_run_dir(d):
            continue
        st = read_status(d)
        try:
            hist = rd.read_history(d)
        except (OSError, json.JSONDecodeError):
            hist = []
        vals = [h["val_acc"] for h in hist if h.get("val_acc") is not None]
        try:
            m = rd.read_json(d / rd.METRICS) if (d / rd.METRICS).exists() else {}
        except (OSError, json.JSONDecodeError):
            m = {}
        test = m.get("test", {}).get("accuracy")
        rel = Path(os.path.relpath(d, root)).as_posix()
        link = tag("a", "report", href=href(d / rd.REPORT, root)) if (d / rd.REPORT).exists() \
            else Markup(f'<span title="{esc("cnnlab report " + str(d))}">no report yet</span>')
        rows.append((str(st.get("started", d.name)), [st.get("name", d.parent.name), str(st.get("started", d.name))[:19].replace("T", " "),
                     st.get("dataset", "-"), st.get("model", "-"), fmt(max(vals)) if vals else "-", fmt(test),
                     shown_status(d, st) if st else "-", rel, link]))
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
