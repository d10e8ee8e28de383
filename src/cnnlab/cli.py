"""The ``cnnlab`` command line. Bad input exits 2 with one paragraph and no traceback; a failure
while running exits 1."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .errors import RunFailure, UserError


def _cmd_run(a: argparse.Namespace) -> None:
    from .runner import run

    run(a.experiment, overrides=a.set, runs_dir=a.runs_dir, quiet=a.quiet, devices=a.devices)


def _cmd_resume(a: argparse.Namespace) -> None:
    from .runner import resume

    resume(a.run_dir, quiet=a.quiet, devices=a.devices)


def _cmd_evaluate(a: argparse.Namespace) -> None:
    from .runner import evaluate

    out = evaluate(a.run_dir, checkpoint=a.checkpoint, overrides=a.set, splits=a.split, quiet=a.json)
    if a.json:
        print(json.dumps(out, indent=2))


def _cmd_predict(a: argparse.Namespace) -> None:
    from .runner import predict

    out = predict(a.run_dir, a.images, checkpoint=a.checkpoint, k=a.top, quiet=a.json)
    if a.json:
        print(json.dumps(out, indent=2))


def _console():
    """A rich console; when output is not a terminal, wide enough that tables do not fold."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _cmd_runs(a: argparse.Namespace) -> None:
    from rich.table import Table

    from . import rundir as rd

    root = Path(a.runs_dir)
    rows = []
    for status_file in sorted(root.glob(f"*/*/{rd.STATUS}")):
        d = status_file.parent
        st = rd.read_status(d)
        hist = rd.read_history(d)
        vals = [h["val_acc"] for h in hist if h.get("val_acc") is not None]
        m = rd.read_json(d / rd.METRICS) if (d / rd.METRICS).exists() else {}
        test = m.get("test", {}).get("accuracy")
        rows.append((st.get("name", d.parent.name), st.get("started", d.name)[:19].replace("T", " "),
                     st.get("dataset", "?"), st.get("model", "?"), f"{max(vals):.4f}" if vals else "-",
                     f"{test:.4f}" if test is not None else "-", st.get("status", "?"), str(d)))
    if a.html:
        from .report import write_runs_index

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
        table.add_row(*r)
    _console().print(table)


def _print_groups(rows: list[tuple], root: Path) -> None:
    """Completed runs grouped by name: n and mean ± std (sample std) of best val and test accuracy."""
    import statistics

    from rich.table import Table

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
        table.add_row(name, str(len(rs)), stat([r[4] for r in rs]), stat([r[5] for r in rs]))
    _console().print(table)


def _cmd_diagnose(a: argparse.Namespace) -> None:
    from .diagnose import diagnose, print_findings, report
    from .rundir import require_run_dir

    findings = diagnose(a.run_dir)  # also writes diagnostics.json in the run directory
    if a.json:
        print(json.dumps(report(require_run_dir(a.run_dir), findings), indent=2))
    else:
        print_findings(findings, a.run_dir)


def _cmd_report(a: argparse.Namespace) -> None:
    from .report import write_report

    print(f"report: {write_report(a.dir, quiet=True)}")


def _cmd_compare(a: argparse.Namespace) -> None:
    from .compare import compare_rows, print_compare, write_compare

    rows = compare_rows(a.run_dirs)
    print_compare(rows)
    print(f"compare: {write_compare(a.run_dirs, a.out, rows=rows)}")


def _cmd_sweep(a: argparse.Namespace) -> None:
    from .sweep import sweep

    sweep(a.sweep_file, workers=a.workers, storage=a.storage, trials=a.trials, runs_dir=a.runs_dir,
          overrides=a.set, new=a.new, quiet=a.quiet)


def _cmd_models(a: argparse.Namespace) -> None:
    from .models import describe_models

    if a.show:
        _show_model(a.show)
        return
    for name, summary, keys in describe_models():
        print(f"{name}: {summary}")
        for key, (typ, default) in keys.items():
            print(f"    {key} = {default!r}  ({typ})")


def _show_model(name: str) -> None:
    """Module names of a model built for (3, 32, 32) images and 10 classes: what [transfer]
    freeze / unfreeze patterns match."""
    import warnings as _w

    from .models import build_model

    with _w.catch_warnings():
        _w.simplefilter("ignore")
        model = build_model({"name": name}, (3, 32, 32), 10)
    print(f"{name} (built for 3x32x32 images, 10 classes): module names for [transfer] freeze/unfreeze patterns")
    for mname, m in model.named_modules():
        if not mname:
            continue
        n = sum(p.numel() for p in m.parameters())
        print(f"  {mname:<40} {type(m).__name__:<20} {n:>10,} parameters")


def _cmd_datasets(a: argparse.Namespace) -> None:
    from .data import DATASETS

    for e in DATASETS:
        print(f"{e.name}: {e.summary}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnlab", description="Image-classification experiments from one TOML file.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sets = dict(action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config key (value parsed as TOML)")
    r = add("run", _cmd_run, "train, evaluate and write a run directory")
    r.add_argument("experiment", help="experiment .toml file (or a run's config.toml)")
    r.add_argument("--set", **sets)
    r.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    devices = dict(type=int, metavar="N", help="train with N processes on this machine (data-parallel; one per GPU on "
                                               "CUDA); default: [distributed] devices; ignored under torchrun")
    r.add_argument("--devices", **devices)

    r = add("resume", _cmd_resume, "continue an interrupted run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("-q", "--quiet", action="store_true")
    r.add_argument("--devices", **devices)

    r = add("evaluate", _cmd_evaluate, "metrics of a run's checkpoint on any split or data set")
    r.add_argument("run_dir")
    r.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path")
    r.add_argument("--set", **sets)
    r.add_argument("--split", action="append", choices=["train", "val", "test"], help="splits to evaluate (default: all)")
    r.add_argument("--json", action="store_true", help="print the metrics as JSON")

    r = add("predict", _cmd_predict, "class and top-k probabilities per image")
    r.add_argument("run_dir")
    r.add_argument("images", nargs="+")
    r.add_argument("--checkpoint", default="best")
    r.add_argument("--top", type=int, default=3, help="how many classes to show per image")
    r.add_argument("--json", action="store_true")

    r = add("diagnose", _cmd_diagnose, "find what went wrong in a run's training: evidence and remedies")
    r.add_argument("run_dir")
    r.add_argument("--json", action="store_true", help="print the findings as JSON")

    r = add("sweep", _cmd_sweep, "hyperparameter search: grid, random, Optuna or a sequential chain; resumable")
    r.add_argument("sweep_file", help="sweep .toml file (docs/sweeps.md)")
    r.add_argument("--workers", type=int, default=1, help="trials at once on this machine, as processes (default 1)")
    r.add_argument("--storage", help="Optuna storage URL shared by workers on many machines, e.g. postgresql://... "
                                     "(default: SQLite in the sweep directory)")
    r.add_argument("--trials", type=int, help="how many trials (overrides the file; sequential: per stage)")
    r.add_argument("--runs-dir", default="sweeps", help="where sweep directories go (default: sweeps)")
    r.add_argument("--set", **sets)
    r.add_argument("--new", action="store_true", help="start a new sweep instead of continuing the same one")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-trial lines and no table")

    r = add("runs", _cmd_runs, "list runs: name, date, data set, model, best val and test accuracy")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--group", action="store_true", help="one row per run name: n and mean ± std over its runs")
    r.add_argument("--html", action="store_true", help="also write RUNS_DIR/index.html linking every run's report")

    r = add("report", _cmd_report, "write report.html (and figures/) for a run or sweep directory")
    r.add_argument("dir", metavar="RUN_DIR", help="a run directory, or a sweep directory for the sweep report")

    r = add("compare", _cmd_compare, "runs side by side: a printed table and compare.html with overlaid curves")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", metavar="DIR", help="where compare.html goes (default: <runs root>/compare/<timestamp>)")
    r = add("models", _cmd_models, "list the model registry with each model's keys")
    r.add_argument("--show", metavar="NAME", help="print the module names of model NAME (what [transfer] patterns match)")
    add("datasets", _cmd_datasets, "list the data set registry")
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 itself on bad arguments
    warnings.showwarning = _warning_line
    try:
        args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailure as e:
        print(f"failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
