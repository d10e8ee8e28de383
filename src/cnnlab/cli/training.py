"""``cnnlab run`` and ``cnnlab resume``."""

from __future__ import annotations

import argparse

from ..runner import resume, run


def cmd_run(a: argparse.Namespace) -> None:
    run(a.experiment, overrides=a.set, runs_dir=a.runs_dir, quiet=a.quiet, devices=a.devices)


def cmd_resume(a: argparse.Namespace) -> None:
    resume(a.run_dir, quiet=a.quiet, devices=a.devices, epochs=a.epochs)
