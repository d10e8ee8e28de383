"""Hyperparameter sweeps: grids, random search, Optuna samplers and sequential stage chains.

A sweep file names a base experiment, the keys to search and how. Every sweep is an Optuna study
in an RDB storage (SQLite inside the sweep directory by default, PostgreSQL with ``--storage``);
workers, local processes or commands on other machines, take trials from that study until the
plan is done. Grid and random configurations are planned up front and put in the study's queue,
from which a worker claims each one atomically (a row update in the database), so N workers run
each configuration exactly once. Adaptive samplers (TPE, ...) ask the sampler for each new trial.

Resuming is the same command again: the sweep directory is found by the sweep's fingerprint, and
trials whose worker died (same host: its pid is gone; any host: its heartbeat stopped) are marked
failed and their configuration queued again. Finished trials are never run twice.

- ``space``: the sweep file, searched keys, strategies, samplers, pruners, ``load_sweep``;
- ``storage``: the sweep directory and the study storage, claiming and requeueing trials;
- ``workers``: trials and workers, and ``sweep`` (the entry point);
- ``results``: results.csv, ranking.md, best.toml, the figures and the report.

::

    from cnnlab.sweep import sweep
    result = sweep("examples/seed001_grid.toml", workers=2, overrides={"data.per_class": 100})
    result.dir, result.best, result.rows
"""

from .results import SweepResult, finalize
from .space import PRUNERS, SAMPLERS, STRATEGIES, Param, SweepConfig, SweepContext, load_sweep, parse_space
from .workers import PruningCallback, sweep

__all__ = [
    "sweep", "SweepResult", "finalize", "load_sweep", "SweepConfig", "SweepContext", "Param", "parse_space",
    "STRATEGIES", "SAMPLERS", "PRUNERS", "PruningCallback",
]
