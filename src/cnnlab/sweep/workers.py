"""Running a sweep: workers (this process, local processes, or commands on other machines) take
trials from the study until the plan is done; each trial is one or more ``cnnlab run``s of the base
experiment with the trial's values, its result recorded in the study. ``sweep`` is the entry point.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import socket
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import rundir as rd
from ..errors import RunFailure, UserError
from ..lifecycle import Interrupted, Stop, StopReason, as_interrupted, interrupt_signals
from ..runner import run as run_experiment
from ..train import Callback
from ..train.distributed import die_with_parent
from .results import SweepResult, finalize
from .space import EPOCH_KEYS, SUMMARY_METRICS, Stage, SweepContext, fmt_params, load_sweep, metric_value, pm, say
from .storage import (REQUEUED, Heartbeat, claim, counts_toward_budget, open_stage, open_storage, reap, requeue, safe_url,
                      sweep_dir)

if TYPE_CHECKING:
    import optuna


class PruningCallback(Callback):
    """Reports the per-epoch validation value to the Optuna trial; when the pruner says so, stops
    training like early stopping does (the run is still evaluated and its directory complete)."""

    def __init__(self, trial: "optuna.Trial", key: str):
        self.trial, self.key = trial, key
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer, logs: dict[str, Any]) -> None:
        value = logs.get(self.key)
        if value is None or not math.isfinite(value) or trainer.should_stop:
            return
        self.trial.report(float(value), int(logs["epoch"]))
        if self.trial.should_prune():
            self.pruned_at = int(logs["epoch"])
            trainer.request_stop(Stop(StopReason.PRUNED, f"pruned by the sweep at epoch {self.pruned_at} "
                                                         f"({self.key} {value:.4g})"))


def _drain(ctx: SweepContext, study: "optuna.Study", stage: Stage, fixed: dict[str, Any], worker: int) -> None:
    """Run trials of one stage until its plan (or trial budget) is used up and none is running."""
    from optuna.trial import TrialState

    while True:
        reap(study)
        trial = claim(study)
        if trial is None and stage.plan is None:
            used = sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
            if used < (stage.trials or 0):
                trial = study.ask()  # the sampler proposes the next configuration
        if trial is not None:
            _run_trial(ctx, study, trial, stage, fixed, worker)
            continue
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            return
        time.sleep(1)  # other workers are finishing this stage's last trials


def _run_trial(ctx: SweepContext, study: "optuna.Study", trial: "optuna.Trial", stage: Stage,
               fixed: dict[str, Any], worker: int) -> None:
    from optuna.trial import TrialState

    with Heartbeat(study, trial):
        # One attribute per write: each is a database transaction (an fsync with SQLite).
        trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid(), "worker": worker})
        values = {p.key: p.suggest(trial) for p in stage.params}
        params = {p.key: p.decode(values[p.key]) for p in stage.params}
        label = f"{stage.label}-" if stage.label else ""
        t0 = time.perf_counter()
        per_metric: dict[str, list[float]] = {m: [] for m in (ctx.cfg.metric, *SUMMARY_METRICS)}
        dirs: list[str] = []
        pruned = None
        try:
            for r in range(ctx.cfg.repeats):
                over = {**ctx.overrides, **ctx.decode(fixed), **params, "name": f"{label}trial-{trial.number:04d}"}
                if ctx.cfg.repeats > 1:
                    over["seed"] = ctx.base_seed + r
                    over["name"] += f"-seed{ctx.base_seed + r}"
                # Pruning watches the first seed only: later seeds of a configuration are not compared.
                cb = PruningCallback(trial, EPOCH_KEYS[ctx.cfg.metric]) if ctx.cfg.pruner != "none" and r == 0 else None
                result = run_experiment(ctx.base, overrides=over, runs_dir=ctx.dir / rd.SWEEP_TRIALS, quiet=True,
                                        extra_callbacks=[cb] if cb else None)
                dirs.append(str(result.dir))
                if r == 0:
                    trial.set_user_attr("config", (result.dir / rd.CONFIG).read_text())
                metrics = result.metrics
                for m in per_metric:
                    try:
                        per_metric[m].append(metric_value(metrics, m))
                    except RunFailure:
                        if m == ctx.cfg.metric:
                            raise
                if cb is not None and cb.pruned_at is not None:
                    pruned = cb.pruned_at
                    break
        except KeyboardInterrupt:
            trial.set_user_attr("error", f"{REQUEUED}; the configuration was queued again")
            study.tell(trial, state=TrialState.FAIL)
            requeue(study, study._storage.get_trial(trial._trial_id))
            raise
        except Exception as e:  # a bad combination or a NaN: record it and go on with the sweep
            msg = str(e) if isinstance(e, (UserError, RunFailure)) else f"{type(e).__name__}: {e}"
            if not isinstance(e, (UserError, RunFailure)):
                trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            trial.set_user_attr("result", {"run_dirs": dirs, "seconds": round(time.perf_counter() - t0, 2)})
            trial.set_user_attr("error", msg[:2000])
            study.tell(trial, state=TrialState.FAIL)
            say(ctx, f"[w{worker}] trial {label}{trial.number} {fmt_params(params)}: failed: {msg[:300]}")
            return
        seconds = round(time.perf_counter() - t0, 2)
        means = {m: statistics.fmean(v) for m, v in per_metric.items() if v}
        stds = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in per_metric.items() if v}
        trial.set_user_attr("result", {"metrics": means, "metrics_std": stds, "values": per_metric[ctx.cfg.metric],
                                       "run_dirs": dirs, "seconds": seconds, "pruned_at_epoch": pruned})
        if pruned is not None:
            study.tell(trial, state=TrialState.PRUNED)
            say(ctx, f"[w{worker}] trial {label}{trial.number} {fmt_params(params)}: pruned at epoch {pruned}")
            return
        study.tell(trial, means[ctx.cfg.metric])
        say(ctx, f"[w{worker}] trial {label}{trial.number} {fmt_params(params)}: {ctx.cfg.metric} "
                  f"{pm(means[ctx.cfg.metric], stds[ctx.cfg.metric], ctx.cfg.repeats)} ({seconds:.1f} s)")


def _work(ctx: SweepContext, worker: int) -> None:
    """One worker: every stage in order, taking trials until each is done."""
    storage = open_storage(ctx.storage_url)
    for i, stage in enumerate(ctx.stages):
        study, fixed = open_stage(ctx, storage, i, worker)
        if stage.label:
            say(ctx, f"[w{worker}] stage {stage.label}: {', '.join(p.key for p in stage.params)}"
                      + (f" with {fmt_params(ctx.decode(fixed))}" if fixed else ""))
        _drain(ctx, study, stage, fixed, worker)


def _child(ctx: SweepContext, worker: int, threads: int, gpu: str | None) -> None:
    """Entry point of a spawned worker process."""
    die_with_parent(getattr(signal, "SIGKILL", signal.SIGTERM))  # die with the parent instead of running on as an orphan
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before torch initializes CUDA in this process (at its first use)
    torch.set_num_threads(threads)
    try:
        with interrupt_signals():  # a SIGTERM between trials unwinds too, requeueing nothing it has not claimed
            _work(ctx, worker)
    except UserError as e:
        print(f"error: worker {worker}: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        sys.exit(as_interrupted(e).exit_code)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def sweep(path: str | Path, *, workers: int = 1, storage: str | None = None, trials: int | None = None,
          runs_dir: str | Path = "sweeps", overrides: list[str] | dict[str, Any] | None = None,
          new: bool = False, quiet: bool = False) -> SweepResult:
    """Run (or continue) the sweep in ``path`` and return its results.

    ``workers``: trials at once on this machine, as processes with a fair share of the CPU threads
    each. ``storage``: an Optuna RDB URL shared by workers on many machines (default: SQLite in the
    sweep directory). ``trials``: overrides the file's ``trials`` (a grid: its first N; sequential:
    per stage). ``overrides``: ``--set`` strings or ``{"key.path": value}``, fixed for every trial.
    ``new``: start a new sweep directory even if one with the same plan exists. The same call again
    continues an interrupted sweep. Raises UserError on a bad sweep file, RunFailure when workers die.
    """
    if workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1.")
    if workers > 4 * _cores():
        raise UserError(f"--workers {workers}: this machine has {_cores()} CPU core(s); each worker is a training "
                        f"process, so use at most {4 * _cores()} (the same number as cores is usually fastest).")
    ctx = load_sweep(path, overrides, trials)
    ctx.workers, ctx.quiet = workers, quiet
    ctx.dir = sweep_dir(Path(runs_dir), ctx.cfg.name, ctx.fingerprint, new).resolve()
    ctx.storage_url = storage or f"sqlite:///{ctx.dir / rd.SWEEP_STUDY}"
    ctx.study_name = f"{ctx.cfg.name}-{ctx.fingerprint}"
    meta_path = ctx.dir / rd.SWEEP_JSON
    meta = rd.read_json(meta_path)
    meta.update({"fingerprint": ctx.fingerprint, "sweep_file": str(Path(path).resolve()), "base": str(ctx.base),
                 "study": ctx.study_name, "storage": safe_url(ctx.storage_url), "overrides": ctx.overrides,
                 "config": ctx.cfg.model_dump(mode="json"), "trials": trials or ctx.cfg.trials})
    rd.atomic_write_json(meta_path, meta)
    open_storage(ctx.storage_url)  # fail on a bad URL before starting workers
    say(ctx, f"sweep {ctx.cfg.name} ({ctx.cfg.strategy}) in {ctx.dir}, study {ctx.study_name} at "
              f"{safe_url(ctx.storage_url)}, {workers} worker{'s' if workers > 1 else ''}")
    try:
        with interrupt_signals():
            if workers == 1:
                _work(ctx, 0)
            else:
                _spawn(ctx, workers)
    except KeyboardInterrupt as e:
        intr = as_interrupted(e)
        raise Interrupted(intr.signum, f"sweep interrupted by {intr.signal_name}; a trial in progress was queued again. "
                                       f"Continue with the same command (cnnlab sweep {path}); finished trials are "
                                       f"kept.") from None
    return finalize(ctx)


def _spawn(ctx: SweepContext, workers: int) -> None:
    threads = max(1, _cores() // workers)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    spawn = mp.get_context("spawn")  # no fork: torch's threads and the DB connections do not survive it
    procs = [spawn.Process(target=_child, args=(ctx, i, threads, str(i % gpus) if gpus > 1 else None),
                           name=f"cnnlab-sweep-w{i}") for i in range(workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt as e:
        if as_interrupted(e).signum != signal.SIGINT:  # Ctrl-C reaches the whole process group; others not
            for p in procs:
                p.terminate()
        deadline = time.monotonic() + 30  # one wait for all: time to requeue their trials
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.is_alive():
                p.kill()
        raise
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    if any(code == 2 for _, code in bad):
        raise UserError("a sweep worker stopped on bad input (its message is above).")
    if bad:
        raise RunFailure(f"sweep worker(s) {', '.join(f'{i} (exit {c})' for i, c in bad)} died; run the same "
                         f"command again to continue the sweep in {ctx.dir}.")
