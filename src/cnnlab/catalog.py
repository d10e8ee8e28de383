"""What a listing says about one run directory: its name, date, data set, model, best validation
and test accuracy and status, or that it is damaged and why. A damaged run is that run's problem:
the listing shows it and goes on with the others.

Used by ``cnnlab runs`` (the table and ``--group``) and by the runs index page; it reads JSON
files only (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import rundir as rd
from .errors import UserError
from .lifecycle import read_status, shown_status


@dataclass
class RunSummary:
    """One row of a runs listing. ``damaged``: why a file of the run could not be read (the other
    fields then hold what could be)."""

    dir: Path
    name: str
    started: str
    dataset: str
    model: str
    best_val_acc: float | None
    test_acc: float | None
    status: str
    damaged: str | None = None


def summarize(d: Path) -> RunSummary:
    """The listing row of run directory ``d``; never raises for a damaged file."""
    d = Path(d)
    st = read_status(d)
    row = RunSummary(d, str(st.get("name", d.parent.name)), str(st.get("started", d.name))[:19].replace("T", " "),
                     str(st.get("dataset", "?")), str(st.get("model", "?")), None, None, "?")
    try:
        st = read_status(d, strict=True)
        row.status = shown_status(d, st)
        vals = [h["val_acc"] for h in rd.read_history(d) if isinstance(h.get("val_acc"), (int, float))]
        row.best_val_acc = max(vals) if vals else None
        acc = rd.read_metrics(d).get("test", {}).get("accuracy")
        row.test_acc = float(acc) if acc is not None else None
    except UserError as e:
        row.status, row.damaged = "damaged", _reason(e, d)
    return row


def _reason(e: UserError, d: Path) -> str:
    """The damage in a few words, relative to the run directory."""
    text = str(e).split(". Repair or remove", 1)[0]
    return text.replace(f"{d}/", "").replace(str(d), "")
