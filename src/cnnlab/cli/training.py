"""``cnnlab run``, ``cnnlab resume`` and ``cnnlab sweep``."""

from __future__ import annotations

import argparse

from ..runner import resume, run
from ..sweep import sweep


def cmd_run(a: argparse.Namespace) -> None:
    run(a.experiment, overrides=a.set, runs_dir=a.runs_dir, quiet=a.quiet, devices=a.devices)


def cmd_resume(a: argparse.Namespace) -> None:
    resume(a.run_dir, quiet=a.quiet, devices=a.devices, epochs=a.epochs)


def cmd_sweep(a: argparse.Namespace) -> None:
    sweep(a.sweep_file, workers=a.workers, storage=a.storage, trials=a.trials, runs_dir=a.runs_dir,
          overrides=a.set, new=a.new, quiet=a.quiet)
