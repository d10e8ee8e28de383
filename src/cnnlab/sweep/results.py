"""A sweep's results: results.csv (one row per trial), ranking.md, best.toml (the best trial's
resolved experiment), the printed table, the figures and the sweep report.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console
from rich.table import Table

from .. import rundir as rd
from ..report import fmt_param, plots, reports_enabled, trial_dir, write_report, write_sweep_report
from .space import SUMMARY_METRICS, SweepContext, pm, say
from .storage import REQUEUED, open_storage, was_requeued

# The best trials get report.html at the sweep's end; the others are linked to their run directory
# (`cnnlab report TRIAL_DIR` draws one on demand). A report can cost more than a short trial's
# training (10 s on CIFAR-10 against 3 s), so a report per trial would slow a 50-trial sweep by minutes.
TRIAL_REPORTS = 3
# Paths in best.toml are written absolute: a relative one is relative to wherever the sweep was
# started, so `cnnlab run .../best.toml` from anywhere else would not find the data or the weights.
_PATH_KEYS = (("data", "root"), ("data", "path"), ("transfer", "weights_path"))
# A path when something exists there, else a pretrained model's name (as transfer.load_source reads it).
_PATH_OR_NAME_KEYS = (("transfer", "init_from"),)


@dataclass
class SweepResult:
    """What a sweep produced: ``dir``, one dict per trial in ``rows`` (as in results.csv), the ranked
    complete trials in ``ranked`` and the ``best`` row (None when no trial completed)."""

    dir: Path
    rows: list[dict[str, Any]]
    ranked: list[dict[str, Any]]
    best: dict[str, Any] | None

    @property
    def best_toml(self) -> Path:
        return self.dir / rd.SWEEP_BEST


def _collect(ctx: SweepContext) -> tuple[list[dict[str, Any]], dict[str, list], list]:
    import optuna

    storage = open_storage(ctx.storage_url)
    rows, studies, keys = [], {}, []
    for stage in ctx.stages:
        keys += [p.key for p in stage.params]
    for stage in ctx.stages:
        try:
            study = optuna.load_study(study_name=ctx.stage_study(stage), storage=storage)
        except KeyError:
            continue  # a later stage never started
        studies[stage.label] = study
        fixed = study.user_attrs.get("fixed", {})
        for t in study.get_trials(deepcopy=False):
            if t.state.name == "WAITING":
                continue
            a = t.user_attrs
            res = a.get("result", {})
            m, s = res.get("metrics", {}), res.get("metrics_std", {})
            params = ctx.decode({**fixed, **t.params})
            row: dict[str, Any] = {"stage": stage.label, "trial": t.number, "state": t.state.name.lower()}
            row.update({k: params.get(k) for k in keys})
            row[ctx.cfg.metric] = t.value if t.value is not None else m.get(ctx.cfg.metric)
            row[ctx.cfg.metric + ".std"] = s.get(ctx.cfg.metric)
            for name in SUMMARY_METRICS:
                if name != ctx.cfg.metric:
                    row[name] = m.get(name)
            row["seconds"] = res.get("seconds")
            row["repeats"] = len(res.get("values", [])) or None
            row["run_dir"] = ";".join(res.get("run_dirs", []))
            row["error"] = a.get("error", "" if t.state.name != "FAIL" else REQUEUED)
            row["_config"] = a.get("config")
            rows.append(row)
    if not any(s.label for s in ctx.stages):
        for r in rows:
            r.pop("stage")
    return rows, studies, keys


def finalize(ctx: SweepContext) -> SweepResult:
    """Write results.csv, ranking.md, best.toml and the figures from the study; print the table."""
    rows, studies, keys = _collect(ctx)
    metric, sign = ctx.cfg.metric, (-1 if ctx.cfg.direction == "maximize" else 1)
    done = [r for r in rows if r["state"] == "complete" and r[metric] is not None]
    order = {s.label: i for i, s in enumerate(ctx.stages)}
    ranked = sorted(done, key=lambda r: (sign * r[metric], order.get(r.get("stage", ""), 0), r["trial"]))
    # A chain's answer is the best of its last stage (every earlier best is fixed in it).
    last = ctx.stages[-1].label
    pool = [r for r in ranked if r.get("stage", "") == last] if last else ranked
    best = pool[0] if pool else None

    out = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    if out:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(out[0]))
        w.writeheader()
        for r in out:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v) for k, v in r.items()})
        rd.atomic_write_text(ctx.dir / rd.SWEEP_RESULTS, buf.getvalue())
    if best is not None and best.get("_config"):
        cfg = tomllib.loads(best["_config"])
        cfg["name"] = f"{ctx.cfg.name}_best"
        absolute_paths(cfg)
        if ctx.overrides.get("report.enabled") is False:  # the sweep's own speed-up, not the experiment's choice
            cfg.setdefault("report", {})["enabled"] = True  # the default the experiment left as it was
        header = (f"# Best trial of sweep {ctx.cfg.name!r} ({ctx.dir}): trial {best.get('stage', '')}"
                  f"{'/' if best.get('stage') else ''}{best['trial']}, {metric} {best[metric]:.4f}.\n"
                  f"#   cnnlab run {(ctx.dir / rd.SWEEP_BEST).resolve()}\n"
                  f"# Data and weight paths are absolute (resolved where the sweep ran).\n")
        rd.atomic_write_text(ctx.dir / rd.SWEEP_BEST, header + tomli_w.dumps(cfg))
    table = _ranking_markdown(ctx, ranked, keys, len(rows))
    rd.atomic_write_text(ctx.dir / rd.SWEEP_RANKING, table)
    if not ctx.quiet:
        _print_ranking(ctx, ranked, keys, rows, best)
    try:
        _figures(ctx, rows, ranked, studies, keys)
    except Exception as e:  # figures are a bonus: never lose a finished sweep over one
        say(ctx, f"warning: figures not written: {type(e).__name__}: {e}")
    if reports_enabled():
        _trial_reports(ctx, ranked)
        try:  # the ranked table and the figures above as one page (docs/report.md)
            say(ctx, f"report: {write_sweep_report(ctx.dir)}")
        except Exception as e:  # like the figures: never lose a finished sweep over its page
            say(ctx, f"warning: sweep report not written: {type(e).__name__}: {e}")
    return SweepResult(ctx.dir, out, [{k: v for k, v in r.items() if not k.startswith("_")} for r in ranked],
                       {k: v for k, v in best.items() if not k.startswith("_")} if best else None)


def absolute_paths(cfg: dict[str, Any]) -> None:
    """Make the paths of a resolved experiment (a dict, changed in place) absolute, resolved in the
    current folder; a ``transfer.init_from`` that names no existing path (``torchvision:resnet18``)
    is a name and stays as it is."""
    for keys, only_existing in ((_PATH_KEYS, False), (_PATH_OR_NAME_KEYS, True)):
        for table, key in keys:
            section = cfg.get(table, {})
            value = section.get(key)
            if isinstance(value, str) and value and (not only_existing or Path(value).expanduser().exists()):
                section[key] = str(Path(value).expanduser().resolve())


def _trial_reports(ctx: SweepContext, ranked: list[dict[str, Any]]) -> None:
    """report.html for the best ``TRIAL_REPORTS`` trials (each repeat's run directory) that have
    none, when the sweep turned trial reports off for speed (its default); an experiment that sets
    ``[report] enabled = false`` itself gets none. Never raises: a finished sweep stays finished."""
    if ctx.overrides.get("report.enabled") is not False:
        return
    # results.csv's paths are relative to where each session of the sweep ran: trial_dir finds them here.
    dirs = [trial_dir(Path(d), ctx.dir) for r in ranked[:TRIAL_REPORTS] for d in str(r.get("run_dir") or "").split(";") if d]
    todo = [d for d in dirs if rd.is_run_dir(d) and not (d / rd.REPORT).exists()]  # another machine's: skipped
    if todo:
        say(ctx, f"writing the reports of the best {min(TRIAL_REPORTS, len(ranked))} trials ({len(todo)} run directories) …")
    for d in todo:
        try:
            write_report(d)
        except Exception as e:  # like the figures: a page is never worth a finished sweep
            say(ctx, f"warning: report not written for {d}: {type(e).__name__}: {e}")


def _table_rows(ctx: SweepContext, ranked: list[dict], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    metric, rep = ctx.cfg.metric, ctx.cfg.repeats
    staged = any(s.label for s in ctx.stages)
    head = ["rank", *(["stage"] if staged else []), "trial", *keys,
            metric + (" (mean ± std)" if rep > 1 else ""), *[m for m in SUMMARY_METRICS if m != metric], "seconds"]
    body = []
    for i, r in enumerate(ranked, 1):
        body.append([str(i), *([r["stage"]] if staged else []), str(r["trial"]), *[fmt_param(r[k]) for k in keys],
                     pm(r[metric], r.get(metric + ".std"), rep),
                     *[pm(r.get(m), None, 1) for m in SUMMARY_METRICS if m != metric],
                     f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"])
    return head, body


def _ranking_markdown(ctx: SweepContext, ranked: list[dict], keys: list[str], n: int) -> str:
    head, body = _table_rows(ctx, ranked, keys)
    lines = [f"Sweep `{ctx.cfg.name}`: {len(ranked)} of {n} trials complete, ranked by {ctx.cfg.metric} "
             f"({ctx.cfg.direction}){', mean ± std over %d seeds' % ctx.cfg.repeats if ctx.cfg.repeats > 1 else ''}.",
             "", "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _print_ranking(ctx: SweepContext, ranked: list[dict], keys: list[str], rows: list[dict], best: dict | None) -> None:
    head, body = _table_rows(ctx, ranked, keys)
    show = 10
    states = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    table = Table(title=f"sweep {ctx.cfg.name}: top {min(show, len(body))} of {len(rows)} trials "
                        f"({', '.join(f'{v} {k}' for k, v in sorted(states.items()))})")
    for h in head:
        table.add_column(h, overflow="fold")
    for row in body[:show]:
        table.add_row(*row)
    # Not a terminal (a log, a pipe): rich would wrap at 80 columns; a wide table reads better there.
    console = Console() if sys.stdout.isatty() else Console(width=220)
    console.print(table)
    print(f"sweep directory: {ctx.dir}")
    print(f"results: {ctx.dir / rd.SWEEP_RESULTS}")
    if best is not None:
        print(f"best: {ctx.dir / rd.SWEEP_BEST}  (cnnlab run {ctx.dir / rd.SWEEP_BEST})")
    failed = [r for r in rows if r["state"] == "fail" and not was_requeued(r.get("error"))]
    for r in failed[:5]:
        print(f"failed trial {r['trial']}: {r['error'][:200]}")


def _figures(ctx: SweepContext, rows: list[dict], ranked: list[dict], studies: dict, keys: list[str]) -> None:
    """The sweep's figures in figures/: the objective per trial with the best so far
    (sweep_objective.png), the objective against each parameter (sweep_params.png; the sweep
    report shows these two files) and, per study, Optuna's parameter importance."""
    metric = ctx.cfg.metric
    figdir = ctx.dir / rd.FIGURES
    figdir.mkdir(exist_ok=True)
    done = sorted((r for r in rows if r["state"] == "complete" and r[metric] is not None),
                  key=lambda r: (str(r.get("stage") or ""), r["trial"]))  # the report's trial order
    if not done:
        return

    def save(fig, name: str) -> None:
        plots.save_png(fig, figdir / name)
        fig.clear()

    values = [float(r[metric]) for r in done]
    save(plots.sweep_history_figure(values, ctx.cfg.direction, metric, f"{ctx.cfg.name}: {metric} per trial",
                                    [r["trial"] for r in done]), "sweep_objective.png")
    # Ranges on a numeric axis (log where the range is log-uniform); listed values as labels in the
    # sweep file's order.
    ranges = {p.key: p for s in ctx.stages for p in s.params}
    log = {k for k in keys if ranges[k].spec is not None and ranges[k].spec.log}
    order = {k: list(dict.fromkeys(fmt_param(ranges[k].decode(c)) for c in ranges[k].choices))
             for k in keys if ranges[k].spec is None}
    params = {k: [fmt_param(r[k]) if k in order else r[k] for r in done] for k in keys}
    save(plots.sweep_params_figure(params, values, metric, log, order), "sweep_params.png")

    # Parameter importance (Optuna's fANOVA) for every study that searches two or more keys.
    import optuna

    for label, study in studies.items():
        stage = next(s for s in ctx.stages if s.label == label)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if len(stage.params) < 2 or len(complete) < 3:
            continue
        try:
            imp = optuna.importance.get_param_importances(study)
        except Exception:
            continue  # e.g. every trial has the same value
        with plots.style():
            ax = (fig := plots.figure(6, 0.5 + 0.45 * len(imp))).subplots()
        names = list(imp)[::-1]
        ax.barh(names, [imp[k] for k in names])
        ax.set_xlabel("importance (fANOVA)")
        ax.set_title(f"{ctx.cfg.name}{' stage ' + label if label else ''}: parameter importance for {metric}")
        save(fig, f"importance{'-' + label if label else ''}.png")
