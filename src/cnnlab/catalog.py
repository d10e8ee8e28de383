"""What a listing says about one run directory: its name, date, data set, model, best validation
and test accuracy and status, or that it is damaged and why. A damaged run is that run's problem:
the listing shows it and goes on with the others.

Used by ``cnnlab runs`` (the table and ``--group``) and by the runs index page; it reads JSON
files only (no torch).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rundir as rd
from ._toml import flatten, parse_toml
from .errors import UserError
from .lifecycle import read_status, shown_status

# Folders inside a run or sweep that never hold runs: not walked when looking for runs.
_INTERNAL = {rd.CHECKPOINTS, rd.PREDICTIONS, rd.FIGURES, rd.EVALUATIONS, rd.TENSORBOARD, "mlruns"}
# How deep below the given folder runs are looked for: runs/<name>/<stamp> is 2,
# sweeps/<name>/<stamp>/trials/<trial>/<stamp> is 5.
MAX_DEPTH = 6


def find_dirs(root: str | Path, marker: str, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Folders under ``root`` (itself included) holding the file ``marker``, at most ``max_depth``
    deep, in sorted order, without descending into a run's own folders (checkpoints/, ...) or
    hidden ones."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if d not in _INTERNAL and not d.startswith(".")) \
            if depth < max_depth else []
        if marker in filenames:
            found.append(Path(dirpath))
    return found


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory under ``root`` at any depth (up to MAX_DEPTH): runs/, a sweep's trials,
    a copied folder, or ``root`` itself. The one discovery that ``cnnlab runs`` and the runs index
    share."""
    return [d for d in find_dirs(root, rd.STATUS) if rd.is_run_dir(d)]


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
    config: dict[str, Any] | None = None  # config.toml flattened to key paths; None when unreadable

    @property
    def fingerprint(self) -> str:
        """The run's settings minus its seed, hashed: runs with the same fingerprint repeat one
        experiment with other seeds (what ``cnnlab runs --group`` pools)."""
        if self.config is None:
            return f"unreadable:{self.dir}"
        same = {k: v for k, v in self.config.items() if k != "seed"}
        return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    row.config = read_config(d)  # None: only --group reads it, and such a run is a group of its own
    return row


def read_config(d: Path) -> dict[str, Any] | None:
    """Run directory ``d``'s config.toml as key paths (``train.lr``), or None when it cannot be read."""
    try:
        return flatten(parse_toml(rd.text_file(d / rd.CONFIG), str(d / rd.CONFIG)))
    except UserError:
        return None


def differing_keys(configs: list[dict[str, Any] | None], ignore: tuple[str, ...] = ()) -> list[str]:
    """The key paths, in key order, whose values are not the same in every one of ``configs``
    (flattened configs; an unreadable one counts as empty), ``ignore`` aside."""
    flat = [c or {} for c in configs]
    keys = sorted(set().union(*flat) - set(ignore))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in flat}) > 1]


def _reason(e: UserError, d: Path) -> str:
    """The damage in a few words, relative to the run directory."""
    text = str(e).split(". Repair or remove", 1)[0]
    return text.replace(f"{d}/", "").replace(str(d), "")
