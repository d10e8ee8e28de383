"""``cnnlab evaluate``, ``predict``, ``diagnose``, ``report`` and ``compare``: what a finished run shows."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import rundir as rd
from .._progress import Reporter
from ..diagnose import diagnose, print_findings, report
from ..inference import evaluate, predict
from ..report import compare_rows, print_compare, write_compare, write_report


def cmd_evaluate(a: argparse.Namespace) -> None:
    out = evaluate(a.run_dir, checkpoint=a.checkpoint, overrides=a.set, splits=a.split, quiet=a.json)
    if a.json:
        print(json.dumps(out, indent=2))


def cmd_predict(a: argparse.Namespace) -> None:
    out = predict(a.run_dir, a.images, checkpoint=a.checkpoint, k=a.top, quiet=a.json)
    if a.json:
        print(json.dumps(out, indent=2))


def cmd_diagnose(a: argparse.Namespace) -> None:
    findings = diagnose(a.run_dir)  # also writes diagnostics.json in the run directory
    if a.json:
        print(json.dumps(report(rd.require_run_dir(a.run_dir), findings), indent=2))
    else:
        print_findings(findings, a.run_dir)


def cmd_report(a: argparse.Namespace) -> None:
    # Drawing takes seconds (figures, the model's explain images): say so while it does.
    with Reporter().task(f"writing {Path(a.dir) / rd.REPORT}") as task:
        path = write_report(a.dir, quiet=True, on_section=task.update)
        task.finish(f"report: {path} ({task.seconds:.1f} s)")


def cmd_compare(a: argparse.Namespace) -> None:
    rows = compare_rows(a.run_dirs)
    print_compare(rows)
    print(f"compare: {write_compare(a.run_dirs, a.out, rows=rows)}")
