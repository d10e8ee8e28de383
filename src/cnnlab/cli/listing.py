"""``cnnlab runs``, ``cnnlab models`` and ``cnnlab datasets``: what exists."""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import rundir as rd
from ..errors import UserError, printable
from ..data import DATASETS
from ..catalog import summarize
from ..models import build_model, describe_models
from ..report import write_runs_index


def _console():
    """A rich console; when output is not a terminal, wide enough that tables do not fold."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def cmd_runs(a: argparse.Namespace) -> None:
    root = Path(a.runs_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--runs-dir {str(root)!r} is a file, not a folder of runs; give the folder that "
                        f"`cnnlab run --runs-dir` wrote into (default: runs).")
    rows = []
    damaged = []
    for status_file in sorted(root.glob(f"*/*/{rd.STATUS}")):
        s = summarize(status_file.parent)
        if s.damaged:
            damaged.append(s)
        rows.append((s.name, s.started, s.dataset, s.model, _acc(s.best_val_acc), _acc(s.test_acc), s.status, str(s.dir)))
    if a.html:
        print(f"index: {write_runs_index(root)}")
    if not rows:
        print(f"no runs under {root}/ (start one with `cnnlab run EXPERIMENT.toml`).")
        return
    if a.group:
        _print_groups(rows, root)
        return
    table = Table(title=f"runs in {root}/")
    for col in ("name", "date", "data set", "model", "best val acc", "test acc", "status", "directory"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*map(_cell, r))
    _console().print(table)
    for s in damaged:
        print(printable(f"damaged: {s.dir}: {s.damaged}"))


def _cell(value: str) -> Text:
    """A table cell from a run's files: shown literally (no rich markup), control characters escaped,
    so a hand-edited run.json cannot clear the screen or break the table."""
    return Text(printable(value))


def _acc(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def _print_groups(rows: list[tuple], root: Path) -> None:
    """Completed runs grouped by name: n and mean ± std (sample std) of best val and test accuracy."""
    groups: dict[str, list[tuple]] = {}
    for r in rows:
        if r[6] == "completed":
            groups.setdefault(r[0], []).append(r)

    def stat(values: list[str]) -> str:
        xs = [float(v) for v in values if v != "-"]
        if not xs:
            return "-"
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{100 * statistics.fmean(xs):.2f} ± {100 * sd:.2f} %"

    table = Table(title=f"completed runs in {root}/ by name (mean ± sample std)")
    for col in ("name", "n", "best val acc", "test acc"):
        table.add_column(col)
    for name, rs in groups.items():
        table.add_row(_cell(name), str(len(rs)), stat([r[4] for r in rs]), stat([r[5] for r in rs]))
    _console().print(table)


def cmd_models(a: argparse.Namespace) -> None:
    if a.show:
        _show_model(a.show)
        return
    for name, summary, keys in describe_models():
        print(f"{name}: {summary}")
        for key, (typ, default) in keys.items():
            print(f"    {key} = {'unset' if default is None else repr(default)}  ({typ})")


def _show_model(name: str) -> None:
    """Module names of a model built for (3, 32, 32) images and 10 classes: what [transfer]
    freeze / unfreeze patterns match."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model({"name": name}, (3, 32, 32), 10)
    print(f"{name} (built for 3x32x32 images, 10 classes): module names for [transfer] freeze/unfreeze patterns")
    for mname, m in model.named_modules():
        if not mname:
            continue
        n = sum(p.numel() for p in m.parameters())
        print(f"  {mname:<40} {type(m).__name__:<20} {n:>10,} parameters")


def cmd_datasets(a: argparse.Namespace) -> None:
    for e in DATASETS:
        print(f"{e.name}: {e.summary}")
