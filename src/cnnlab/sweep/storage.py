"""Where a sweep lives: its directory (found again by the sweep's fingerprint) and its Optuna study
in an RDB storage (SQLite in the sweep directory, or a shared PostgreSQL). Workers claim queued
trials atomically, record heartbeats, and requeue the trials of workers that died.
"""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import rundir as rd
from ..errors import RunFailure, UserError
from .space import PRUNERS, SAMPLERS, SweepContext

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import optuna

HEARTBEAT_S = 5      # a running trial writes a heartbeat this often ...
GRACE_S = 60         # ... and counts as dead (on any machine) after this long without one
PLAN_WAIT_S = 120    # how long a worker waits for another worker to finish queueing a stage's plan

# The error of a trial whose configuration was queued again (its worker died or was interrupted): a
# failed trial whose error starts with it, or that has no error (Optuna failed it for a stopped
# heartbeat), does not count toward the trial budget, and is not listed among the failures.
REQUEUED = "interrupted"


def was_requeued(error: str | None) -> bool:
    return not error or error.startswith(REQUEUED)


def open_storage(url: str) -> "optuna.storages.RDBStorage":
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Heartbeats are recorded by our own thread (Heartbeat) since workers use ask/tell, not optimize().
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    url = _driver_url(url)
    # SQLite: several local workers write to one file; wait for its lock instead of failing.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=_requeue_stale)
        except ImportError as e:
            raise UserError(f"--storage {safe_url(url)}: the database driver is not installed ({e.__cause__ or e}); "
                            f"for PostgreSQL: pip install 'cnnlab[postgres]' (psycopg2-binary).") from None
        except Exception as e:
            # Workers that start together on a fresh database race to create Optuna's tables; the
            # loser's CREATE fails on a unique constraint, and a second try finds the tables there.
            if attempt < 4:
                time.sleep(0.5 + random.random())
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot open the study storage {safe_url(url)}: {first[:300]}") from None
    raise AssertionError("unreachable")


def _driver_url(url: str) -> str:
    """A plain ``postgresql://`` URL with the driver that is installed: SQLAlchemy 2.1 means psycopg
    (3) by it, while the ``postgres`` extra installs psycopg2-binary."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def safe_url(url: str) -> str:
    """The URL without its password, for messages and sweep.json."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


# ------------------------------------------------------------------------------ sweep directory
def sweep_dir(runs_dir: Path, name: str, fingerprint: str, new: bool) -> Path:
    """``runs_dir/name/<timestamp>``: the latest one with this fingerprint, else a new one. A file
    lock makes workers started together on one machine agree on one directory."""
    root = rd.writable_dir(runs_dir / name, "--runs-dir")
    with open(root / rd.LOCK, "a+") as lock:
        if fcntl is not None:  # elsewhere (Windows) workers started at once may make two directories
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not new:
            for d in sorted((p for p in root.iterdir() if (p / rd.SWEEP_JSON).is_file()), reverse=True):
                try:
                    if rd.read_json(d / rd.SWEEP_JSON).get("fingerprint") == fingerprint:
                        return d
                except UserError:  # a damaged sweep.json: that folder is not this sweep
                    continue
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            d = root / (stamp if i == 0 else f"{stamp}-{i}")
            if not d.exists():
                d.mkdir()
                rd.atomic_write_json(d / rd.SWEEP_JSON, {"fingerprint": fingerprint, "created": stamp})
                return d
    raise UserError(f"cannot create a new sweep directory under {root}.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
    """Queue a dead trial's configuration again (the one it was planned with, when it was)."""
    params = trial.system_attrs.get("fixed_params") or trial.params
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("plan_index",)}
    if params:
        study.enqueue_trial(params, user_attrs={**attrs, "retry_of": trial.number})


def _requeue_stale(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
    # Optuna calls this after marking a trial whose heartbeat stopped as failed.
    requeue(study, trial)


def reap(study: "optuna.Study") -> None:
    """Fail and requeue running trials whose worker is gone: on this host when its pid is dead, on any
    host when its heartbeat stopped more than GRACE_S ago (or it never got going)."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host, storage = socket.gethostname(), study._storage
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        a = t.user_attrs
        owner = a.get("owner", {})
        mine = owner.get("host") == host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"])
        never = not owner and t.datetime_start and (now - t.datetime_start).total_seconds() > GRACE_S
        if not (mine or never):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "error", f"{REQUEUED}: its worker died; the configuration was queued again")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker reaped it first
        requeue(study, t)
    optuna.storages.fail_stale_trials(study)


def claim(study: "optuna.Study") -> "optuna.Trial | None":
    """Atomically take a queued trial: the RUNNING update succeeds for exactly one worker."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, t._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def counts_toward_budget(t: "optuna.trial.FrozenTrial") -> bool:
    from optuna.trial import TrialState

    # Trials whose worker died were queued again: the retry counts, not them.
    return not (t.state == TrialState.FAIL and was_requeued(t.user_attrs.get("error")))


def open_stage(ctx: SweepContext, storage, index: int, worker: int) -> tuple["optuna.Study", dict[str, Any]]:
    """Create the stage's study and queue its plan (the one worker whose create succeeds), or load it
    and wait until the plan is queued."""
    import optuna

    stage = ctx.stages[index]
    name = ctx.stage_study(stage)
    seed = ctx.cfg.seed + worker + (os.getpid() if not ctx.storage_url.startswith("sqlite") else 0)
    sampler = SAMPLERS.get(ctx.cfg.sampler)(seed) if stage.plan is None else optuna.samplers.RandomSampler(seed)
    pruner = PRUNERS.get(ctx.cfg.pruner)()
    try:
        study = optuna.create_study(study_name=name, storage=storage, direction=ctx.cfg.direction,
                                    sampler=sampler, pruner=pruner)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if created:
        fixed = _best_of_previous(ctx, storage, index)
        study.set_user_attr("fixed", fixed)
        if stage.plan is not None:
            for i, params in enumerate(stage.plan(stage.params, stage.trials, ctx.cfg.seed + index, ctx.source)):
                study.enqueue_trial(params, user_attrs={"plan_index": i})
        study.set_user_attr("planned", True)
    t0 = time.time()
    while "planned" not in study.user_attrs:
        if time.time() - t0 > PLAN_WAIT_S:
            raise RunFailure(f"study {name!r} exists but its plan was never queued (the worker that created it "
                             f"died while queueing); start a new sweep with --new.")
        time.sleep(1)
    return study, study.user_attrs.get("fixed", {})


def _best_of_previous(ctx: SweepContext, storage, index: int) -> dict[str, Any]:
    """The fixed values for stage ``index``: the best trial of the stage before, with its own fixed ones."""
    import optuna

    if index == 0:
        return {}
    prev = ctx.stages[index - 1]
    study = optuna.load_study(study_name=ctx.stage_study(prev), storage=storage)
    best = rank_trials(study.get_trials(deepcopy=False), ctx.cfg.direction)
    if not best:
        raise RunFailure(f"stage {prev.label!r} has no complete trial, so stage {ctx.stages[index].label!r} has "
                         f"no best values to start from; see {ctx.dir / rd.SWEEP_RESULTS} for the errors.")
    return {**study.user_attrs.get("fixed", {}), **best[0].params}


def rank_trials(trials: list, direction: str) -> list:
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    sign = -1 if direction == "maximize" else 1
    return sorted(done, key=lambda t: (sign * t.value, t.number))


class Heartbeat:
    """Records the trial's heartbeat in a thread, so that a worker dying on another machine is noticed."""

    def __init__(self, study: "optuna.Study", trial: "optuna.Trial"):
        self.storage, self.tid = study._storage, trial._trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.is_set():
            try:
                self.storage.record_heartbeat(self.tid)
            except Exception:
                pass  # a missed beat is harmless; GRACE_S covers many
            self.stop.wait(HEARTBEAT_S)

    def __enter__(self) -> "Heartbeat":
        self.storage.record_heartbeat(self.tid)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
