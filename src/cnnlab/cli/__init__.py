"""The ``cnnlab`` command line. Bad input exits 2 with one paragraph and no traceback; a failure
while running exits 1; a run stopped by SIGINT, SIGTERM or SIGHUP exits 128 + the signal number,
saying how to continue it.

Each command's code lives in one of the modules named in ``COMMANDS`` and is imported only when
that command runs: a command loads only what it needs (``cnnlab run`` no sweep machinery, ``cnnlab
resume`` no Optuna, ``cnnlab runs`` and ``cnnlab datasets`` no torch; tests/test_imports.py checks
each listing's modules).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .._version import __version__
from ..errors import ReportedUserError, RunFailure, UserError, printable
from ..lifecycle import Interrupted

# Command name -> (module under cnnlab.cli, function). A table instead of imports: a module is
# loaded when its command runs (importlib), so `cnnlab runs` does not pay for what `cnnlab run` needs.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("training", "cmd_run"),
    "resume": ("training", "cmd_resume"),
    "sweep": ("sweeping", "cmd_sweep"),
    "evaluate": ("inspection", "cmd_evaluate"),
    "predict": ("inspection", "cmd_predict"),
    "diagnose": ("inspection", "cmd_diagnose"),
    "report": ("inspection", "cmd_report"),
    "compare": ("inspection", "cmd_compare"),
    "runs": ("listing", "cmd_runs"),
    "models": ("models", "cmd_models"),
    "datasets": ("listing", "cmd_datasets"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnnlab", description="Image-classification experiments from one TOML file.")
    p.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help)

    sets = dict(action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config key (value parsed as TOML)")
    r = add("run", "train, evaluate and write a run directory")
    r.add_argument("experiment", help="experiment .toml file (or a run's config.toml)")
    r.add_argument("--set", **sets)
    r.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    devices = dict(type=_positive, metavar="N", help="train with N processes on this machine (data-parallel; one per GPU on "
                                               "CUDA); default: [distributed] devices; ignored under torchrun")
    r.add_argument("--devices", **devices)

    r = add("resume", "continue an interrupted run from its last checkpoint, or train a finished one further")
    r.add_argument("run_dir")
    r.add_argument("--epochs", type=_positive, metavar="N", help="train to N epochs in all (a completed run trains further "
                                                            "only when given this; the schedule is rebuilt for N)")
    r.add_argument("-q", "--quiet", action="store_true")
    r.add_argument("--devices", **devices)

    r = add("evaluate", "metrics of a run's checkpoint on any split or data set")
    r.add_argument("run_dir")
    r.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path")
    r.add_argument("--set", **sets)
    r.add_argument("--split", action="append", choices=["train", "val", "test"], help="splits to evaluate (default: all)")
    r.add_argument("--json", action="store_true", help="print the metrics as JSON")

    r = add("predict", "class and top-k probabilities per image")
    r.add_argument("run_dir")
    r.add_argument("images", nargs="+")
    r.add_argument("--checkpoint", default="best")
    r.add_argument("--top", type=_positive, default=3, help="how many classes to show per image (at least 1)")
    r.add_argument("--json", action="store_true")

    r = add("diagnose", "find what went wrong in a run's training: evidence and remedies")
    r.add_argument("run_dir")
    r.add_argument("--json", action="store_true", help="print the findings as JSON")

    r = add("sweep", "hyperparameter search: grid, random, Optuna or a sequential chain; resumable")
    r.add_argument("sweep_file", help="sweep .toml file (docs/sweeps.md)")
    r.add_argument("--workers", type=_positive, default=1, help="trials at once on this machine, as processes (default 1)")
    r.add_argument("--storage", help="Optuna storage URL shared by workers on many machines, e.g. postgresql://... "
                                     "(default: SQLite in the sweep directory)")
    r.add_argument("--trials", type=_positive, help="how many trials (overrides the file; sequential: per stage)")
    r.add_argument("--runs-dir", default="sweeps", help="where sweep directories go (default: sweeps)")
    r.add_argument("--set", **sets)
    r.add_argument("--new", action="store_true", help="start a new sweep instead of continuing the same one")
    r.add_argument("-q", "--quiet", action="store_true", help="no per-trial lines and no table")

    r = add("runs", "list runs (under --runs-dir at any depth): name, date, data set, model, best val and test accuracy")
    r.add_argument("--runs-dir", default="runs")
    r.add_argument("--group", action="store_true", help="one row per setting (the resolved config minus the seed): n and "
                                                        "mean ± std over its seeds, and the keys that differ between "
                                                        "groups of the same name")
    r.add_argument("--html", action="store_true", help="also write RUNS_DIR/index.html linking every run's report")

    r = add("report", "write report.html (and figures/) for a run or sweep directory")
    r.add_argument("dir", metavar="RUN_DIR", help="a run directory, or a sweep directory for the sweep report")

    r = add("compare", "runs side by side: a printed table and compare.html with overlaid curves")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    r.add_argument("--out", metavar="DIR", help="where compare.html goes (default: <runs root>/compare/<timestamp>)")
    r = add("models", "list the model registry with each model's keys")
    r.add_argument("--show", metavar="NAME", help="print the module names of model NAME (what [transfer] patterns match)")
    add("datasets", "list the data set registry")
    return p


def _positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is less than 1")
    return n


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {printable(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 itself on bad arguments
    warnings.showwarning = _warning_line
    module, name = COMMANDS[args.command]
    try:
        command = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        command(args)
    except ReportedUserError:
        return 2
    except UserError as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
    except RunFailure as e:
        print(f"failed: {printable(e)}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(printable(e.message or f"interrupted by {e.signal_name}"), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cnnlab models | head`): no traceback. Output goes to /dev/null from
        # here on, so the interpreter's last flush of stdout does not fail again; 141 = 128 + SIGPIPE,
        # as a program killed by the signal would exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
