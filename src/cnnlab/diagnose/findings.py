"""Findings and the run they are about: ``Finding``, the ``RunContext`` the checks read, the
``CHECKS`` registry, and the driver.

``diagnose(run_dir)`` loads the run's history.jsonl, metrics.json, stats.jsonl, config.toml and
run.json into a :class:`RunContext`, runs every check of the ``CHECKS`` registry on it (they are
registered in :mod:`cnnlab.diagnose.checks`), writes ``diagnostics.json`` (atomically) and returns
the :class:`Finding` list, errors first. ``cnnlab diagnose RUN_DIR [--json]`` prints the findings;
``cnnlab run`` calls :func:`diagnose_after_run` once the metrics are written and prints the
warnings and errors. The findings, their triggers and example outputs: docs/diagnostics.md.
"""

from __future__ import annotations

import math
import shutil
import textwrap
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from .. import rundir as rd
from ..errors import UserError
from .._toml import parse_toml
from ..lifecycle import read_status
from ..registry import Registry
from ..train.stats import read_stats

CHECKS: Registry[Callable[["RunContext"], list["Finding"]]] = Registry("check")

# Severity -> sort rank (errors first).
SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}


@dataclass
class Finding:
    """One diagnosis: a stable ``id``, a ``severity`` (error, warning, info), a one-line ``title``,
    the ``evidence`` (numbers from this run, with epochs or layers), ``why`` it matters, the
    ``remedies`` to try, and ``data``: the numbers behind the evidence, for programs."""

    id: str
    severity: str
    title: str
    evidence: str
    why: str
    remedies: list[str]
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_RANK:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITY_RANK)}")

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(x: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python numbers, recursively (diagnostics.json is strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


# ---------------------------------------------------------------------------------- context
def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The loss of a model that outputs the uniform distribution, per loss name (K classes, the loss
# section of config.toml): the level a model that has learnt nothing sits at. Cross-entropy, with
# or without label smoothing, gives ln K; focal loss scales it by (1 - 1/K)^gamma.
CHANCE_LOSS: dict[str, Callable[[int, dict[str, Any]], float]] = {
    "cross_entropy": lambda k, loss: math.log(k),
    "focal": lambda k, loss: (1 - 1 / k) ** float(loss.get("gamma", 2.0)) * math.log(k),
}


@dataclass
class RunContext:
    """What the checks read: the run's files, parsed once. ``config`` is config.toml as a raw dict
    (so runs written by older versions still load); ``history`` one dict per epoch; ``metrics`` the
    metrics.json content ({} when training never finished an epoch); ``stats`` the stats.jsonl
    records ([] when statistics were off)."""

    dir: Path
    config: dict[str, Any]
    status: dict[str, Any]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    stats: list[dict[str, Any]]

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """A config value by key path (``"train.early_stopping.patience"``), or ``default``."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def series(self, key: str) -> list[tuple[int, float]]:
        """``(epoch, value)`` of a history column, finite values only."""
        return [(int(h["epoch"]), float(h[key])) for h in self.history if finite(h.get(key))]

    @cached_property
    def class_names(self) -> list[str]:
        for split in ("test", "val", "train"):
            if split in self.metrics:
                return list(self.metrics[split]["class_names"])
        return []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def chance_loss(self) -> float | None:
        """The loss of a uniform prediction for this run's loss and K (None when K is unknown)."""
        k = self.num_classes
        if k < 2:
            return None
        loss = self.cfg("train.loss", {})
        loss = {"name": loss} if isinstance(loss, str) else dict(loss)
        return CHANCE_LOSS.get(loss.get("name", "cross_entropy"), CHANCE_LOSS["cross_entropy"])(k, loss)

    @cached_property
    def heldout(self) -> str | None:
        """The split whose predictions judge the model: test, else val."""
        return next((s for s in ("test", "val") if s in self.metrics), None)

    def predicted_counts(self, split: str) -> np.ndarray:
        """(K,) int64: how many images of ``split`` were predicted as each class, from the confusion
        matrix, or from predictions/<split>.npz where metrics.json does not store the matrix (many
        classes)."""
        cm = self.metrics[split].get("confusion_matrix")
        if cm is not None:
            return np.asarray(cm, dtype=np.int64).sum(axis=0)
        k = len(self.metrics[split]["class_names"])
        p = self.dir / rd.PREDICTIONS / rd.prediction_file(split)
        if rd.path_problem(p):
            raise rd.damaged(p, "it is missing or not a regular file, and metrics.json has no confusion matrix")
        with np.load(p, allow_pickle=False) as z:
            y_prob = z["y_prob"]
        if y_prob.ndim != 2 or y_prob.shape[1] != k:
            raise rd.damaged(p, f"y_prob is not (N, {k})")
        return np.bincount(y_prob.argmax(axis=1), minlength=k).astype(np.int64)


def load_context(run_dir: str | Path) -> RunContext:
    """Parse a run directory; a folder that is not a run, or an unreadable file, is a UserError."""
    d = rd.require_run_dir(run_dir)

    config = parse_toml(rd.text_file(d / rd.CONFIG), str(d / rd.CONFIG))
    return RunContext(dir=d, config=config, status=read_status(d, strict=True), history=rd.read_history(d),
                      metrics=rd.read_metrics(d), stats=read_stats(d))



# ------------------------------------------------------------------------------------ driver
def run_checks(ctx: RunContext) -> list[Finding]:
    """Every registered check on ``ctx``; findings sorted by severity (errors first), then check order."""
    findings: list[Finding] = []
    for entry in CHECKS:
        try:
            findings.extend(entry.obj(ctx))
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError) as e:
            # The run's files parse, but hold a value of the wrong kind where this check reads one.
            raise UserError(f"cannot diagnose {ctx.dir}: check {entry.name!r} found a value of the wrong kind in the "
                            f"run's files ({type(e).__name__}: {' '.join(str(e).split())[:160]}): config.toml, "
                            f"history.jsonl, metrics.json or stats.jsonl was changed by something other than "
                            f"cnnlab. Diagnose another run, or repair the file.") from None
    return sorted(findings, key=lambda f: SEVERITY_RANK[f.severity])


def report(run_dir: Path, findings: list[Finding]) -> dict[str, Any]:
    """The diagnostics.json content."""
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITY_RANK}
    return {"run": str(run_dir), "created": datetime.now().isoformat(timespec="seconds"), "counts": counts,
            "checks": [e.name for e in CHECKS], "findings": [f.to_dict() for f in findings]}


def diagnose(run_dir: str | Path, write: bool = True) -> list[Finding]:
    """Diagnose a run directory: the findings (errors first); writes ``diagnostics.json`` there
    (atomically) unless ``write`` is false. A folder that is not a run directory is a UserError."""
    ctx = load_context(run_dir)
    findings = run_checks(ctx)
    if write:
        rd.atomic_write_json(ctx.dir / rd.DIAGNOSTICS, report(ctx.dir, findings))
    return findings


def format_findings(findings: list[Finding], run_dir: str | Path, width: int = 100) -> str:
    """The findings as text: a rich table (severity, id, evidence), then why and remedies per finding."""
    console = Console(width=width, force_terminal=False, color_system=None)
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITY_RANK}
    head = f"diagnosis of {run_dir}: " + ", ".join(f"{n} {s}{'s' if n != 1 and s != 'info' else ''}"
                                                  for s, n in counts.items())
    with console.capture() as cap:
        console.print(head, highlight=False)
        if not findings:
            console.print("no findings: nothing in this run's history, statistics or metrics looks wrong.", highlight=False)
        else:
            table = Table(show_lines=True)
            table.add_column("severity")
            table.add_column("id")
            table.add_column("evidence", overflow="fold")
            for f in findings:
                table.add_row(f.severity, f.id, f.evidence)
            console.print(table)
    lines = [cap.get().rstrip("\n")]
    for f in findings:
        lines.append(f"\n[{f.severity}] {f.id}: {f.title}")
        for label, text in (("why", f.why), ("try", "; ".join(f.remedies))):
            lines.append(textwrap.fill(text, width, initial_indent=f"  {label}: ", subsequent_indent=" " * 7))
    return "\n".join(lines) + "\n"


def print_findings(findings: list[Finding], run_dir: str | Path) -> None:
    """Print :func:`format_findings` to stdout, as wide as the terminal (at least 100 columns)."""
    print(format_findings(findings, run_dir, max(100, shutil.get_terminal_size((100, 24)).columns)), end="")


def diagnose_after_run(run_dir: str | Path, quiet: bool = False) -> list[Finding]:
    """Called by the runner once metrics are written: writes diagnostics.json and prints the
    warnings and errors. A failure here is reported but never fails the (finished) training run."""
    try:
        findings = diagnose(run_dir)
    except Exception as e:  # a diagnosis bug must not turn a finished run into a failed one
        if not quiet:
            print(f"warning: diagnose failed on {run_dir}: {type(e).__name__}: {e}", flush=True)
        return []
    serious = [f for f in findings if f.severity != "info"]
    if serious and not quiet:
        print("\ndiagnosis:", flush=True)
        for f in serious:
            print(f"  [{f.severity}] {f.id}: {f.evidence}", flush=True)
        print(f"  why and remedies: cnnlab diagnose {run_dir}", flush=True)
    return findings
