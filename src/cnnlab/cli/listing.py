"""``cnnlab runs`` and ``cnnlab datasets``: what exists. Both read files and registries only, and
import neither torch nor matplotlib (tests/test_imports.py holds them to it); ``cnnlab models``,
which builds models, is in ``cli.models``."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..catalog import RunSummary, differing_keys, find_runs, summarize
from ..dataset_names import DATASETS
from ..errors import UserError, printable
from ..report import write_runs_index


def _console():
    """A rich console; when output is not a terminal, wide enough that tables do not fold."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def cmd_runs(a: argparse.Namespace) -> None:
    root = Path(a.runs_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"--runs-dir {str(root)!r} is a file, not a folder of runs; give the folder that "
                        f"`cnnlab run --runs-dir` wrote into (default: runs).")
    summaries = [summarize(d) for d in find_runs(root)] if root.is_dir() else []  # any depth: runs/, sweeps/, copies
    if a.html:
        print(f"index: {write_runs_index(root)}")
    if not summaries:
        print(f"no runs under {root}/ (start one with `cnnlab run EXPERIMENT.toml`).")
        return
    if a.group:
        _print_groups(summaries, root)
        return
    table = Table(title=f"runs in {root}/")
    for col in ("name", "date", "data set", "model", "best val acc", "test acc", "status", "directory"):
        table.add_column(col, overflow="fold")
    for s in summaries:
        table.add_row(*map(_cell, (s.name, s.started, s.dataset, s.model, _acc(s.best_val_acc), _acc(s.test_acc),
                                   s.status, str(s.dir))))
    _console().print(table)
    for s in summaries:
        if s.damaged:
            print(printable(f"damaged: {s.dir}: {s.damaged}"))


def _cell(value: str) -> Text:
    """A table cell from a run's files: shown literally (no rich markup), control characters escaped,
    so a hand-edited run.json cannot clear the screen or break the table."""
    return Text(printable(value))


def _acc(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def _print_groups(summaries: list[RunSummary], root: Path) -> None:
    """Completed runs grouped by fingerprint (the resolved config minus the seed): n and mean ± std
    (sample std) of best val and test accuracy. Groups that share a name but not their settings get
    the keys that differ between them."""
    groups: dict[str, list[RunSummary]] = {}
    for s in summaries:
        if s.status == "completed":
            groups.setdefault(s.fingerprint, []).append(s)

    def stat(values: list[float | None]) -> str:
        xs = [v for v in values if v is not None]
        if not xs:
            return "-"
        sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{100 * statistics.fmean(xs):.2f} ± {100 * sd:.2f} %"

    by_name: dict[str, list[list[RunSummary]]] = {}
    for runs in groups.values():
        by_name.setdefault(runs[0].name, []).append(runs)
    table = Table(title=f"completed runs in {root}/ by settings (mean ± sample std over seeds)")
    for col in ("name", "n", "best val acc", "test acc", "settings that differ from its namesakes"):
        table.add_column(col, overflow="fold")
    for name, same_name in by_name.items():
        for runs in same_name:
            table.add_row(_cell(name), str(len(runs)), stat([r.best_val_acc for r in runs]),
                          stat([r.test_acc for r in runs]), _cell(_differing(runs[0], [g[0] for g in same_name])))
    _console().print(table)


def _differing(run: RunSummary, others: list[RunSummary]) -> str:
    """``key=value`` of the settings (seed aside) in which ``run``'s group differs from the other
    groups of the same name; "" when it is the only one."""
    if len(others) < 2 or run.config is None:
        return "" if len(others) < 2 else "config.toml unreadable"
    differ = differing_keys([o.config for o in others], ignore=("seed",))
    return ", ".join(f"{k}={json.dumps(run.config.get(k), default=str)}" for k in differ) or "(same settings)"


def cmd_datasets(a: argparse.Namespace) -> None:
    for e in DATASETS:
        print(f"{e.name}: {e.summary}")
