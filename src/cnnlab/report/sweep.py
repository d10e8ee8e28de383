"""The sweep report: ``report.html`` in a sweep directory, ranking its trials (results.csv) with
links to each trial's run, the objective per trial with the best so far, the objective against each
parameter, and the sweep's own figures (parameter importance)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .. import rundir as rd
from ..errors import UserError
from .html import Page, fmt, href, join, note, table, tag
from .plots import sweep_history_figure, sweep_params_figure


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / rd.SWEEP_JSON).is_file()


_SWEEP_FIXED_COLUMNS = {"stage", "trial", "state", "seconds", "repeats", "run_dir", "error"}


def _cell(v: str) -> Any:
    """A results.csv cell as a value: "" -> None, numbers as numbers, JSON lists as lists."""
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        pass
    if v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
    return {"True": True, "False": False}.get(v, v)


def read_sweep(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(sweep.json, the rows of results.csv as typed values)."""
    meta = rd.read_json(sweep_dir / rd.SWEEP_JSON)
    p = sweep_dir / rd.SWEEP_RESULTS
    if not p.exists():
        return meta, []
    try:
        raw = list(csv.DictReader(io.StringIO(rd.text_file(p))))
    except csv.Error as e:
        raise rd.damaged(p, f"it is not CSV ({e})") from None
    for i, row in enumerate(raw, 2):  # line 1 is the header
        if None in row or any(v is None for v in row.values()):  # DictReader's marks of a ragged line
            raise rd.damaged(p, f"line {i} does not have as many cells as the header")
    rows = [{k: _cell(v) for k, v in row.items()} for row in raw]
    if rows and not {"trial", "state"} <= set(rows[0]):
        raise rd.damaged(p, "it has no trial and state columns")
    for i, row in enumerate(rows, 2):
        if not isinstance(row["trial"], int) or not isinstance(row["state"], str):
            raise rd.damaged(p, f"line {i}: trial {row['trial']!r} or state {row['state']!r} is not what a sweep writes")
        for key in ("seconds", "repeats"):
            if key in row and row[key] is not None and not isinstance(row[key], (int, float)):
                raise rd.damaged(p, f"line {i}: {key} {row[key]!r} is not a number")
    cfg = meta.get("config", {})
    if not isinstance(cfg, dict) or not isinstance(cfg.get("metric", ""), str) or \
            cfg.get("direction", "maximize") not in ("maximize", "minimize"):
        raise rd.damaged(sweep_dir / rd.SWEEP_JSON, "its config is not the sweep file's table")
    return meta, rows


def _sweep_columns(cols: list[str], metric: str) -> tuple[list[str], list[str]]:
    """(searched parameters, summary metrics) of results.csv, whose columns are
    [stage], trial, state, <parameters>, <metric>, <metric>.std, <summary metrics>, seconds, ..."""
    if "state" not in cols or metric not in cols:
        return [], []
    keys = cols[cols.index("state") + 1: cols.index(metric)]
    rest = [c for c in cols[cols.index(metric) + 1:] if c not in _SWEEP_FIXED_COLUMNS and c != metric + ".std"]
    return keys, rest


def write_sweep_report(sweep_dir: str | Path, quiet: bool = True) -> Path:
    """Write ``report.html`` in a sweep directory: the ranked trials (results.csv) with links to
    each trial's run report, the objective per trial with the best so far, the objective against
    each parameter, and the sweep's own figures (parameter importance). Returns the page's path."""
    sweep_dir = Path(sweep_dir)
    if not is_sweep_dir(sweep_dir):
        raise UserError(f"{str(sweep_dir)!r} is not a sweep directory (it has no {rd.SWEEP_JSON}); give a folder "
                        f"written by `cnnlab sweep`, for example sweeps/<name>/<timestamp>.")
    meta, rows = read_sweep(sweep_dir)
    cfg = meta.get("config", {})
    name = cfg.get("name", sweep_dir.parent.name)
    metric, direction = cfg.get("metric", "val.accuracy"), cfg.get("direction", "maximize")
    page = Page(f"{name}: cnnlab sweep report", sweep_dir, f"{sweep_dir.resolve()}")
    keys, summaries = _sweep_columns(list(rows[0]) if rows else [], metric)
    done = [r for r in rows if r.get("state") == "complete" and isinstance(r.get(metric), (int, float))]
    sign = -1 if direction == "maximize" else 1
    ranked = sorted(done, key=lambda r: (sign * r[metric], r["trial"]))

    def report_link(row: dict[str, Any]) -> Any:
        links = []
        for d in str(row.get("run_dir") or "").split(";"):
            if not d:
                continue
            p = Path(d)
            target = p / rd.REPORT if (p / rd.REPORT).exists() else p
            links.append(tag("a", "report" if (p / rd.REPORT).exists() else "run", href=href(target, sweep_dir)))
        return join(links, " ") if links else "-"

    staged = any(r.get("stage") for r in rows)
    head = ["rank", *(["stage"] if staged else []), "trial", *keys, metric, *summaries, "seconds", "run"]
    body = []
    for i, r in enumerate(ranked, 1):
        std = r.get(metric + ".std")
        val = fmt(r[metric]) + (f" ± {fmt(std)}" if (r.get("repeats") or 1) > 1 and std is not None else "")
        body.append([str(i), *([r.get("stage") or "-"] if staged else []), str(r["trial"]),
                     *[_param(r.get(k)) for k in keys], val, *[fmt(r.get(k)) for k in summaries],
                     fmt(r.get("seconds"), ".1f"), report_link(r)])
    states: dict[str, int] = {}
    for r in rows:
        states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
    intro = tag("p", f"{len(done)} of {len(rows)} trials complete ("
                     + ", ".join(f"{v} {k}" for k, v in sorted(states.items())) + f"), ranked by {metric} ({direction}). "
                     f"Strategy: {cfg.get('strategy', '-')}; study {meta.get('study', '-')} at {meta.get('storage', '-')}.")
    best = [tag("p", "Best configuration: ", tag("code", rd.SWEEP_BEST), " (", tag("code", f"cnnlab run {sweep_dir / rd.SWEEP_BEST}"),
                ").")] if (sweep_dir / rd.SWEEP_BEST).exists() else []
    sections = [("ranking", "Ranked trials", join([intro, table(head, body) if body else note("no trial has completed yet."),
                                                   *best]))]
    figs: list[Any] = []
    if done:
        # The sweep draws these two itself when it finishes (with its ranges' log scales and listed
        # values' order); the page shows those files, and draws them only where they are missing.
        in_order = sorted(done, key=lambda r: (str(r.get("stage") or ""), r["trial"]))
        values = [float(r[metric]) for r in in_order]
        drawn = {
            "sweep_objective": (lambda: sweep_history_figure(values, direction, metric, f"{name}: {metric} per trial",
                                                             [r["trial"] for r in in_order]),
                                f"{metric} of each completed trial in trial order, and the best so far."),
            "sweep_params": (lambda: sweep_params_figure({k: [r.get(k) for r in in_order] for k in keys}, values, metric),
                             f"{metric} against each searched parameter."),
        }
        for key, (draw, caption) in drawn.items():
            if key == "sweep_params" and not keys:
                continue
            png = sweep_dir / rd.FIGURES / f"{key}.png"
            figs.append(page.png(png.read_bytes(), caption, key) if png.is_file() else page.figure(key, draw(), caption))
    for p in sorted((sweep_dir / rd.FIGURES).glob("importance*.png")):  # drawn by the sweep itself (fANOVA)
        figs.append(page.png(p.read_bytes(), f"parameter importance (Optuna fANOVA): {p.name}", p.name))
    failed = [r for r in rows if r.get("state") == "fail" and r.get("error")]
    if failed:
        figs.append(tag("h3", "failed trials"))
        figs.append(table(["trial", "error"], [[str(r["trial"]), str(r["error"])[:500]] for r in failed[:50]]))
    sections.append(("figures", "Figures", join(figs) if figs else note("no trial has completed yet.")))
    out = sweep_dir / rd.REPORT
    rd.atomic_write_text(out, page.render(sections))
    if not quiet:
        print(f"report: {out}")
    return out


def _param(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)

