"""``cnnlab sweep``."""

from __future__ import annotations

import argparse

from ..sweep import sweep


def cmd_sweep(a: argparse.Namespace) -> None:
    sweep(a.sweep_file, workers=a.workers, storage=a.storage, trials=a.trials, runs_dir=a.runs_dir,
          overrides=a.set, new=a.new, quiet=a.quiet)
