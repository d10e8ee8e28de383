"""``cnnlab sweep``."""

from __future__ import annotations

import argparse

from ..errors import RunFailure
from ..sweep import sweep


def cmd_sweep(a: argparse.Namespace) -> None:
    result = sweep(a.sweep_file, workers=a.workers, storage=a.storage, trials=a.trials, runs_dir=a.runs_dir,
                   overrides=a.set, new=a.new, quiet=a.quiet)
    if result.rows and result.best is None:  # exit status 1: a script must not take this for a result
        failed = [r for r in result.rows if r.get("error")]
        first = f" The first error: {failed[0]['error'][:300]}" if failed else ""
        raise RunFailure(f"no trial of the sweep completed ({len(result.rows)} tried; results.csv in {result.dir} "
                         f"says how each ended).{first}")
