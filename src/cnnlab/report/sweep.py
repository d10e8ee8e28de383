"""The sweep report: ``report.html`` in a sweep directory, ranking its trials (results.csv) with
links to each trial's run, the objective per trial with the best so far, the objective against each
parameter, and the sweep's own figures (parameter importance). Its sections are the macros of
``templates/sweep.html``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable

from markupsafe import Markup

from .. import rundir as rd
from ..errors import UserError
from ._page import Page
from ._style import fmt_param
from .charts import objective_chart, params_chart
from .html import Hint, Lines, Link, Section, fmt, fmt_seconds, href, page_template, png_figure
from .plots import sweep_history_figure, sweep_params_figure


def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / rd.SWEEP_JSON).is_file()


_SWEEP_FIXED_COLUMNS = {"stage", "trial", "state", "seconds", "repeats", "run_dir", "error"}
# Up to this many searched parameters get a column each; more share one "parameters" cell (a line
# each), so the ranked table fits a laptop's page with its metrics and times in view.
PARAM_COLUMNS_MAX = 3


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
    head, body, wide = _ranking_table(ranked, keys, metric, summaries, sweep_dir)
    states: dict[str, int] = {}
    for r in rows:
        states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
    template = page_template("sweep")
    best_command = f"cnnlab run {sweep_dir / rd.SWEEP_BEST}" if (sweep_dir / rd.SWEEP_BEST).exists() else None
    sections = [Section("ranking", "Ranked trials", template.ranking(
        len(done), len(rows), ", ".join(f"{v} {k}" for k, v in sorted(states.items())), metric, direction,
        cfg.get("strategy", "-"), meta.get("study", "-"), meta.get("storage", "-"), head, body, wide, best_command))]
    objective = params = objective_live = params_live = None
    if done:
        # The sweep draws these two itself when it finishes (with its ranges' log scales and listed
        # values' order); the page shows those files, and draws them only where they are missing.
        # Trials in the order the sweep draws them; x is the trial number the table shows. The
        # interactive charts show the same trials, to hover over: a trial's parameters and value.
        in_order = sorted(done, key=lambda r: (str(r.get("stage") or ""), r["trial"]))
        values = [float(r[metric]) for r in in_order]
        caption = f"{metric} of each completed trial in trial order (numbered as in the table), and the best so far."
        objective = _figure(page, "sweep_objective", lambda: sweep_history_figure(
            values, direction, metric, f"{name}: {metric} per trial", [r["trial"] for r in in_order]), caption)
        objective_live = page.chart(objective_chart(in_order, metric, direction, keys, chart_id="chart-sweep-objective"),
                                    caption)
        if keys:
            caption = f"{metric} against each searched parameter, one panel each."
            params = _figure(page, "sweep_params", lambda: sweep_params_figure(
                {k: [r.get(k) for r in in_order] for k in keys}, values, metric), caption)
            log, order = _space_axes(cfg)
            params_live = page.chart(params_chart(in_order, keys, metric, log, order, chart_id="chart-sweep-params"),
                                     caption)
    importance = [png_figure(p.read_bytes(), f"parameter importance (Optuna fANOVA): {p.name}", p.name)
                  for p in sorted((sweep_dir / rd.FIGURES).glob("importance*.png"))]  # drawn by the sweep (fANOVA)
    failed = [[str(r["trial"]), str(r["error"])[:500]] for r in rows if r.get("state") == "fail" and r.get("error")]
    sections.append(Section("figures", "Figures", template.figures(objective, params, importance, failed[:50],
                                                                   objective_live, params_live)))
    out = sweep_dir / rd.REPORT
    rd.atomic_write_text(out, page.render(sections))
    if not quiet:
        print(f"report: {out}")
    return out


def _figure(page: Page, key: str, draw: Callable[[], Any], caption: str) -> Markup:
    """figures/<key>.png inlined as it is when the sweep drew it, else ``draw()`` saved there."""
    png = page.fig_dir / f"{key}.png"
    return png_figure(png.read_bytes(), caption, key) if png.is_file() else page.figure(key, draw(), caption)


def _ranking_table(ranked: list[dict[str, Any]], keys: list[str], metric: str, summaries: list[str],
                  sweep_dir: Path) -> tuple[list[Any], list[list[Any]], tuple[int, ...]]:
    """(header, rows, the indices of the columns whose cells wrap) of the ranked trials: rank,
    [stage], trial, the parameters (a column each up to PARAM_COLUMNS_MAX, else one cell with a
    line per parameter), the metric (mean ± std with repeats), the other summary metrics, the time
    and links to each trial's run (its report where it has one)."""
    staged = any(r.get("stage") for r in ranked)
    repeats = any((r.get("repeats") or 1) > 1 for r in ranked)
    own = len(keys) <= PARAM_COLUMNS_MAX
    labels = _short_keys(keys)
    head: list[Any] = ["rank", *(["stage"] if staged else []), "trial"]
    head += keys if own else [Hint("parameters", ", ".join(keys))] if keys else []
    wide = () if own or not keys else (len(head) - 1,)
    head += [metric + (" (mean ± std)" if repeats else ""), *summaries, "time", "run"]
    body = []
    for i, r in enumerate(ranked, 1):
        std = r.get(metric + ".std")
        val = fmt(r[metric]) + (f" ± {fmt(std)}" if (r.get("repeats") or 1) > 1 and std is not None else "")
        params = [fmt_param(r.get(k)) for k in keys]
        body.append([str(i), *([r.get("stage") or "-"] if staged else []), str(r["trial"]),
                     *(params if own else [Lines(tuple(f"{labels[k]} = {v}" for k, v in zip(keys, params)))] if keys
                       else []),
                     val, *[fmt(r.get(k)) for k in summaries], fmt_seconds(r.get("seconds")), _run_links(r, sweep_dir)])
    return head, body, wide


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Each config key by its shortest tail of dotted parts that no other key ends with
    (``train.lr`` -> ``lr``, but ``model.dropout`` and ``head.dropout`` keep their prefix)."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != k and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        out[k] = tail
    return out


def _run_links(row: dict[str, Any], sweep_dir: Path) -> list[Link] | str:
    """A link to each run directory of a trial (one per repeat): its report when it has one."""
    dirs = [trial_dir(Path(d), sweep_dir) for d in str(row.get("run_dir") or "").split(";") if d]
    links = []
    for i, p in enumerate(dirs, 1):
        has_report = (p / rd.REPORT).exists()
        text = ("report" if has_report else "run") + (f" {i}" if len(dirs) > 1 else "")  # repeats: one per seed
        links.append(Link(text, href(p / rd.REPORT if has_report else p, sweep_dir)))
    return links or "-"


def trial_dir(p: Path, sweep_dir: Path) -> Path:
    """A trial's run directory as results.csv names it, or, where that path does not lead to it
    (written relative to another working directory, or the sweep folder was moved), the same
    trials/<name>/<timestamp> inside this sweep directory."""
    if p.is_dir():
        return p
    here = sweep_dir / rd.SWEEP_TRIALS / p.parent.name / p.name
    return here if here.is_dir() else p


def _space_axes(cfg: dict[str, Any]) -> tuple[set[str], dict[str, list[str]]]:
    """From the sweep file (sweep.json's ``config``): the keys searched over a log range, and the
    listed values of keys that are not all numbers, as labels in the file's order (a chart's
    category axis then reads as the file does, not in order of first appearance)."""
    log: set[str] = set()
    order: dict[str, list[str]] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, list):
                if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                    order[key] = [fmt_param(x) for x in v]
            elif isinstance(v, dict) and "low" in v:
                if v.get("log"):
                    log.add(key)
            elif isinstance(v, dict):
                walk(v, key + ".")  # TOML dotted keys: [space] train.lr = ... is {"train": {"lr": ...}}

    stages = cfg.get("stages") if isinstance(cfg.get("stages"), list) else []
    for space in [cfg.get("space"), *(s.get("space") for s in stages if isinstance(s, dict))]:
        if isinstance(space, dict):
            walk(space, "")
    return log, order
