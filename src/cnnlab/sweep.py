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

    from cnnlab.sweep import sweep
    result = sweep("examples/seed001_grid.toml", workers=2, overrides={"data.per_class": 100})
    result.dir, result.best, result.rows
"""

from __future__ import annotations

import copy
import csv
import fcntl
import hashlib
import io
import itertools
import json
import math
import os
import random
import socket
import statistics
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import rundir as rd
from .callbacks import Callback
from .config import _validation_message, apply_overrides, flatten, load_config, parse_override, read_toml, validate_config
from .errors import RunFailure, UserError
from .registry import Registry

if TYPE_CHECKING:
    import optuna

SWEEP_JSON = "sweep.json"
RESULTS = "results.csv"
BEST = "best.toml"
RANKING = "ranking.md"

# Metrics kept for every trial besides the sweep's own: the ranked table shows them.
SUMMARY_METRICS = ("val.accuracy", "val.loss", "test.accuracy", "test.loss")
# The per-epoch value (history.jsonl key) that pruning watches for a sweep metric.
EPOCH_KEYS = {"val.accuracy": "val_acc", "val.loss": "val_loss", "train.accuracy": "train_acc", "train.loss": "train_loss"}
METRIC_SPLITS = ("train", "val", "test")
METRIC_KEYS = ("accuracy", "loss", "macro", "weighted", "per_class")

HEARTBEAT_S = 5      # a running trial writes a heartbeat this often ...
GRACE_S = 60         # ... and counts as dead (on any machine) after this long without one
PLAN_WAIT_S = 120    # how long a worker waits for another worker to finish queueing a stage's plan


# ------------------------------------------------------------------------------ sweep file
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RangeSpec(_Strict):
    """``{low, high, log, step}``: an int range when low, high (and step) are integers."""

    low: int | float
    high: int | float
    log: bool = False
    step: int | float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "RangeSpec":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        if self.log and self.step is not None and self.step != 1:
            raise ValueError("a range cannot have both log = true and a step")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step or 1))


class StageConfig(_Strict):
    """One stage of a ``sequential`` sweep: its own space, searched as a grid (or randomly)."""

    name: str | None = None
    strategy: str = "grid"
    trials: int | None = Field(None, ge=1)
    space: dict[str, Any] = Field(default_factory=dict)


class SweepConfig(_Strict):
    """The sweep file. Key paths (``train.lr``) may be written quoted or as TOML dotted keys."""

    name: str = Field(min_length=1)
    base: str = Field(description="the experiment file, relative to the sweep file")
    overrides: dict[str, Any] = Field(default_factory=dict)
    strategy: str = "grid"
    sampler: str = Field("tpe", description="the Optuna sampler of strategy = 'optuna'")
    pruner: str = "none"
    metric: str = "val.accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    trials: int | None = Field(None, ge=1)
    repeats: int = Field(1, ge=1, description="seeds per configuration (seed, seed+1, ...); ranked by the mean")
    seed: int = Field(0, description="seed of the random plan and the sampler")
    space: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_name(self) -> "SweepConfig":
        if "/" in self.name or "\\" in self.name or self.name in {".", ".."}:
            raise ValueError("name must not contain path separators (it names the sweep directory)")
        return self


# ------------------------------------------------------------------------------ parameters
_SCALARS = (bool, int, float, str)


@dataclass(frozen=True)
class Param:
    """One searched key. Choices that are not scalars (``[32, 64]``) are stored in the study as
    their JSON text, because Optuna's categorical values must be scalars."""

    key: str
    choices: tuple | None = None
    encoded: bool = False
    spec: RangeSpec | None = None

    def suggest(self, trial: "optuna.Trial") -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        s = self.spec
        if s.is_int:
            return trial.suggest_int(self.key, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        return trial.suggest_float(self.key, float(s.low), float(s.high), step=s.step, log=s.log)

    def distribution(self) -> "optuna.distributions.BaseDistribution":
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        s = self.spec
        if s.is_int:
            return IntDistribution(int(s.low), int(s.high), log=s.log, step=int(s.step or 1))
        return FloatDistribution(float(s.low), float(s.high), log=s.log, step=s.step)

    def grid(self, where: str) -> list:
        if self.choices is not None:
            return list(self.choices)
        s = self.spec
        if s.is_int:
            return list(range(int(s.low), int(s.high) + 1, int(s.step or 1)))
        if s.step is None:
            raise UserError(f"{where}: space key {self.key!r} is a continuous range; a grid needs a list of "
                            f"values or a range with a step ({{low, high, step}}).")
        n = int(math.floor((s.high - s.low) / s.step + 1e-9))
        return [round(s.low + i * s.step, 12) for i in range(n + 1)]

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded else value

    def check_values(self) -> list:
        """The values that must each validate against the experiment: every choice, both ends."""
        return [self.decode(c) for c in self.choices] if self.choices is not None else [self.spec.low, self.spec.high]




def parse_space(space: dict[str, Any], where: str) -> list[Param]:
    """``[space]`` -> Params. A leaf is a list of values or a ``{low, high, log, step}`` table."""
    params: list[Param] = []

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, list):
                if not v:
                    raise UserError(f"{where}: space key {key!r} has an empty list of values.")
                if all(isinstance(c, _SCALARS) for c in v):
                    params.append(Param(key, tuple(v)))
                else:  # lists or tables as values: stored as JSON text
                    params.append(Param(key, tuple(json.dumps(c) for c in v), encoded=True))
            elif isinstance(v, dict) and ({"low", "high"} & set(v)):
                try:
                    params.append(Param(key, spec=RangeSpec.model_validate(v)))
                except ValidationError as e:
                    raise UserError(_validation_message(e, where, f"space.{key}").replace(
                        "invalid configuration", "invalid range")) from None
            elif isinstance(v, dict):
                walk(v, key + ".")
            else:
                raise UserError(f"{where}: space key {key!r} = {v!r}: expected a list of values "
                                f"(\"{key}\" = [a, b]) or a range (\"{key}\" = {{low = 1e-4, high = 1e-1, log = true}}).")

    walk(space, "")
    if not params:
        raise UserError(f"{where}: the search space is empty; give at least one key, for example "
                        f"[space] \"train.lr\" = [1e-3, 1e-2].")
    return params


# ------------------------------------------------------------------------------ strategies
@dataclass
class Stage:
    """A part of a sweep searched by one study: a single stage, or one link of a sequential chain."""

    label: str                # "" for a single-stage sweep
    params: list[Param]
    plan: Callable[[list[Param], int | None, int, str], list[dict]] | None  # None: adaptive (Optuna sampler)
    trials: int | None


def plan_grid(params: list[Param], trials: int | None, seed: int, where: str) -> list[dict]:
    """Every combination in file order (the first ``trials`` when that is smaller)."""
    grids = [p.grid(where) for p in params]
    combos = [dict(zip([p.key for p in params], c)) for c in itertools.product(*grids)]
    return combos[:trials] if trials else combos


def plan_random(params: list[Param], trials: int | None, seed: int, where: str) -> list[dict]:
    """``trials`` random configurations, planned up front (random search does not adapt) so that any
    number of workers run exactly these. A finite space is sampled without replacement."""
    import optuna

    if not trials:
        raise UserError(f"{where}: random search needs trials = N (how many configurations to draw).")
    try:
        grid = plan_grid(params, None, seed, where)
    except UserError:
        grid = None  # a continuous range: sample freely
    if grid is not None:
        return random.Random(seed).sample(grid, min(trials, len(grid)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    dists = {p.key: p.distribution() for p in params}
    return [study.ask(dists).params for _ in range(trials)]


class Strategy:
    """A registry entry: how a sweep file becomes stages."""

    def stages(self, cfg: SweepConfig, trials: int | None, where: str) -> list[Stage]:
        raise NotImplementedError


class SingleStage(Strategy):
    def __init__(self, plan: Callable | None):
        self.plan = plan

    def stages(self, cfg: SweepConfig, trials: int | None, where: str) -> list[Stage]:
        if cfg.stages:
            raise UserError(f"{where}: [[stages]] belong to strategy = \"sequential\"; strategy = "
                            f"{cfg.strategy!r} searches [space].")
        params = parse_space(cfg.space, where)
        if self.plan is None and not trials:
            raise UserError(f"{where}: strategy = {cfg.strategy!r} needs trials = N (or --trials N).")
        stage = Stage("", params, self.plan, trials)
        if self.plan is not None:
            self.plan(params, trials, cfg.seed, where)  # fail now on a grid that cannot be enumerated
        return [stage]


class Sequential(Strategy):
    """Seed 000's scenario chain: stage k searches its own keys with the best values of stages
    1..k-1 fixed. ``--trials`` caps every stage."""

    def stages(self, cfg: SweepConfig, trials: int | None, where: str) -> list[Stage]:
        if not cfg.stages:
            raise UserError(f"{where}: strategy = \"sequential\" needs [[stages]], each with its own space.")
        if cfg.space:
            raise UserError(f"{where}: strategy = \"sequential\" searches the space of each [[stages]] "
                            f"entry; move the top-level [space] keys into a stage.")
        out, seen = [], set()
        for i, st in enumerate(cfg.stages):
            label = st.name or "abcdefghijklmnopqrstuvwxyz"[i % 26] + ("" if i < 26 else str(i))
            if label in seen:
                raise UserError(f"{where}: two stages are named {label!r}.")
            seen.add(label)
            strat = STRATEGIES.entry(st.strategy, f"{where} at stages[{i}].strategy").obj
            if not isinstance(strat, SingleStage) or strat.plan is None:
                raise UserError(f"{where}: stages[{i}].strategy must be grid or random (got {st.strategy!r}).")
            swhere = f"{where} stage {label!r}"
            params = parse_space(st.space, swhere)
            n = min(x for x in (st.trials, trials) if x) if (st.trials or trials) else None
            strat.plan(params, n, cfg.seed + i, swhere)
            out.append(Stage(label, params, strat.plan, n))
        keys = [p.key for s in out for p in s.params]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise UserError(f"{where}: {', '.join(dup)} searched in more than one stage.")
        return out


STRATEGIES: Registry = Registry("sweep strategy")
STRATEGIES.add("grid", SingleStage(plan_grid), summary="every combination of the listed values")
STRATEGIES.add("random", SingleStage(plan_random), summary="trials random configurations, planned up front")
STRATEGIES.add("optuna", SingleStage(None), summary="an adaptive Optuna sampler (sampler = tpe by default)")
STRATEGIES.add("sequential", Sequential(), summary="[[stages]] in order, each with the best of the ones before fixed")


def _sampler(name: str) -> Callable[[int], Any]:
    def build(seed: int):
        import optuna

        return getattr(optuna.samplers, name)(seed=seed)

    return build


def _cmaes(seed: int):
    import optuna

    try:
        import cmaes  # noqa: F401  (CmaEsSampler needs it)
    except ImportError:
        raise UserError("sampler = \"cmaes\" needs the cmaes package: pip install cmaes.") from None
    return optuna.samplers.CmaEsSampler(seed=seed)


SAMPLERS: Registry = Registry("Optuna sampler")
SAMPLERS.add("tpe", _sampler("TPESampler"), summary="Tree-structured Parzen Estimator (default)")
SAMPLERS.add("random", _sampler("RandomSampler"), summary="independent random sampling")
SAMPLERS.add("qmc", _sampler("QMCSampler"), summary="quasi-Monte Carlo (Sobol)")
SAMPLERS.add("gp", _sampler("GPSampler"), summary="Gaussian-process Bayesian optimization")
SAMPLERS.add("nsgaii", _sampler("NSGAIISampler"), summary="genetic algorithm")
SAMPLERS.add("cmaes", _cmaes, summary="CMA-ES (needs the cmaes package)")


def _pruner(name: str, **kw: Any) -> Callable[[], Any]:
    def build():
        import optuna

        return getattr(optuna.pruners, name)(**kw)

    return build


PRUNERS: Registry = Registry("pruner")
PRUNERS.add("none", _pruner("NopPruner"), summary="never prune")
# One epoch of warmup: the first epoch's validation value says little about the last one.
PRUNERS.add("median", _pruner("MedianPruner", n_startup_trials=3, n_warmup_steps=1),
            summary="stop a trial whose value is below the median of earlier trials at the same epoch")
PRUNERS.add("successive_halving", _pruner("SuccessiveHalvingPruner"), summary="asynchronous successive halving")
PRUNERS.add("hyperband", _pruner("HyperbandPruner"), summary="Hyperband (several successive-halving brackets)")


# ------------------------------------------------------------------------------ metrics
def parse_metric(metric: str, where: str) -> list[str]:
    parts = metric.split(".")
    if len(parts) < 2 or parts[0] not in METRIC_SPLITS or parts[1] not in METRIC_KEYS or not all(parts):
        raise UserError(f"{where}: metric = {metric!r} is not a metric; use <split>.<name> with split one of "
                        f"{', '.join(METRIC_SPLITS)} and name one of {', '.join(METRIC_KEYS)}, for example "
                        f"val.accuracy, val.loss, test.accuracy, val.macro.f1, val.per_class.<class>.f1.")
    return parts


def metric_value(metrics: dict[str, Any], metric: str) -> float:
    node: Any = metrics
    for p in metric.split("."):
        if not isinstance(node, dict) or p not in node:
            have = ", ".join(sorted(node)) if isinstance(node, dict) else "a value"
            raise RunFailure(f"metric {metric!r} is not in metrics.json (at {p!r} it has: {have}).")
        node = node[p]
    if not isinstance(node, (int, float)):
        raise RunFailure(f"metric {metric!r} is not a number in metrics.json.")
    return float(node)


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
            trainer.should_stop = True
            trainer.stop_reason = f"pruned by the sweep at epoch {self.pruned_at} ({self.key} {value:.4g})"


# ------------------------------------------------------------------------------ context
@dataclass
class SweepContext:
    """Everything a worker needs; plain data so that it pickles into spawned worker processes."""

    cfg: SweepConfig
    source: str                   # the sweep file, for messages
    base: Path                    # the experiment file, absolute
    overrides: dict[str, Any]     # sweep overrides + --set, as key paths
    base_seed: int
    stages: list[Stage] = field(repr=False, default_factory=list)
    fingerprint: str = ""
    dir: Path = Path(".")
    storage_url: str = ""
    study_name: str = ""
    workers: int = 1
    quiet: bool = False

    def stage_study(self, stage: Stage) -> str:
        return f"{self.study_name}.{stage.label}" if stage.label else self.study_name

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Study values (JSON text for list choices) -> the values the experiment takes."""
        params_by_key = {p.key: p for s in self.stages for p in s.params}
        return {k: params_by_key[k].decode(v) if k in params_by_key else v for k, v in params.items()}


def load_sweep(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
               trials: int | None = None) -> SweepContext:
    """Read and validate a sweep file against its base experiment. Raises UserError on bad input:
    unknown keys, unknown strategy/sampler/pruner, an empty space, a bad range, a space key the
    experiment does not have or a value it refuses, a bad metric."""
    path = Path(path)
    raw = read_toml(path)
    where = str(path)
    try:
        cfg = SweepConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(_validation_message(e, where).replace("invalid configuration", "invalid sweep file")) from None
    if trials is not None and trials < 1:
        raise UserError(f"--trials {trials}: must be at least 1.")
    strategy = STRATEGIES.entry(cfg.strategy, f"{where} at strategy").obj
    SAMPLERS.entry(cfg.sampler, f"{where} at sampler").obj(cfg.seed)  # builds it: fails early if unusable
    PRUNERS.entry(cfg.pruner, f"{where} at pruner")
    parse_metric(cfg.metric, where)
    if cfg.pruner != "none" and cfg.metric not in EPOCH_KEYS:
        raise UserError(f"{where}: pruner = {cfg.pruner!r} watches the metric epoch by epoch, which exists for "
                        f"{', '.join(EPOCH_KEYS)} only (metric = {cfg.metric!r}).")
    base = (path.parent / cfg.base).resolve()
    if not base.is_file():
        raise UserError(f"{where}: base = {cfg.base!r}: {base} does not exist (the path is relative to the sweep file).")

    fixed = flatten(cfg.overrides)
    if isinstance(overrides, dict):
        fixed.update(overrides)
    else:
        fixed.update({".".join(k): v for k, v in (parse_override(o) for o in overrides or [])})
    base_cfg = load_config(base, dict(fixed))  # the base with every fixed override must be valid
    stages = strategy.stages(cfg, trials or cfg.trials, where)

    # A space key must exist in the experiment and each of its values must be accepted there:
    # apply each value alone to the base and validate (catches typos like train.lrr at once).
    base_raw = apply_overrides(read_toml(base), dict(fixed))
    for stage in stages:
        for p in stage.params:
            for v in p.check_values():
                try:
                    validate_config(apply_overrides(copy.deepcopy(base_raw), {p.key: v}), "<space>")
                except UserError as e:
                    msg = str(e).replace("invalid configuration in <space>: ", "")
                    raise UserError(f"{where}: space key {p.key!r} = {v!r} does not fit the experiment "
                                    f"{cfg.base}: {msg}") from None
    ctx = SweepContext(cfg, where, base, fixed, base_cfg.seed, stages)
    ctx.fingerprint = _fingerprint(cfg, fixed, trials or cfg.trials, base_raw)
    # A report per trial costs seconds (more than a short trial's training); the sweep gets its own
    # report and `cnnlab report TRIAL_DIR` draws any trial's on demand. Trials keep their reports
    # when the experiment or the sweep sets [report] explicitly. (After the fingerprint, so sweeps
    # started before this default resume as the same sweep.)
    if "report" not in read_toml(base) and not any(k.split(".")[0] == "report" for k in fixed):
        ctx.overrides["report.enabled"] = False
    return ctx


def _fingerprint(cfg: SweepConfig, fixed: dict[str, Any], trials: int | None, base_raw: dict) -> str:
    # What defines the plan: the same command on the same files gives the same fingerprint, so a
    # rerun finds its sweep directory and study; any change to them starts a new sweep.
    blob = json.dumps({"sweep": cfg.model_dump(mode="json", exclude={"trials"}), "trials": trials,
                       "fixed": fixed, "base": base_raw}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------ storage
def _open_storage(url: str) -> "optuna.storages.RDBStorage":
    import optuna
    from optuna.storages import RDBStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Heartbeats are recorded by our own thread (_Heartbeat) since workers use ask/tell, not optimize().
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    url = _driver_url(url)
    # SQLite: several local workers write to one file; wait for its lock instead of failing.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=_requeue_stale)
        except ImportError as e:
            raise UserError(f"--storage {_safe_url(url)}: the database driver is not installed ({e.__cause__ or e}); "
                            f"for PostgreSQL: pip install 'cnnlab[postgres]' (psycopg2-binary).") from None
        except Exception as e:
            # Workers that start together on a fresh database race to create Optuna's tables; the
            # loser's CREATE fails on a unique constraint, and a second try finds the tables there.
            if attempt < 4:
                time.sleep(0.5 + random.random())
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot open the study storage {_safe_url(url)}: {first[:300]}") from None
    raise AssertionError("unreachable")


def _driver_url(url: str) -> str:
    """A plain ``postgresql://`` URL with the driver that is installed: SQLAlchemy 2.1 means psycopg
    (3) by it, while the ``postgres`` extra installs psycopg2-binary."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _safe_url(url: str) -> str:
    """The URL without its password, for messages and sweep.json."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


# ------------------------------------------------------------------------------ sweep directory
def _sweep_dir(runs_dir: Path, name: str, fingerprint: str, new: bool) -> Path:
    """``runs_dir/name/<timestamp>``: the latest one with this fingerprint, else a new one. A file
    lock makes workers started together on one machine agree on one directory."""
    root = runs_dir / name
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not new:
            for d in sorted((p for p in root.iterdir() if (p / SWEEP_JSON).is_file()), reverse=True):
                try:
                    if rd.read_json(d / SWEEP_JSON).get("fingerprint") == fingerprint:
                        return d
                except (OSError, json.JSONDecodeError):
                    continue
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            d = root / (stamp if i == 0 else f"{stamp}-{i}")
            if not d.exists():
                d.mkdir()
                rd.atomic_write_json(d / SWEEP_JSON, {"fingerprint": fingerprint, "created": stamp})
                return d
    raise UserError(f"cannot create a new sweep directory under {root}.")


# ------------------------------------------------------------------------------ workers
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
    """Queue a dead trial's configuration again (the one it was planned with, when it was)."""
    params = trial.system_attrs.get("fixed_params") or trial.params
    attrs = {k: v for k, v in trial.user_attrs.items() if k in ("plan_index",)}
    if params:
        study.enqueue_trial(params, user_attrs={**attrs, "retry_of": trial.number})


def _requeue_stale(study: "optuna.Study", trial: "optuna.trial.FrozenTrial") -> None:
    # Optuna calls this after marking a trial whose heartbeat stopped as failed.
    _requeue(study, trial)


def _reap(study: "optuna.Study") -> None:
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
            storage.set_trial_user_attr(t._trial_id, "error", "interrupted: its worker died; the configuration was queued again")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker reaped it first
        _requeue(study, t)
    optuna.storages.fail_stale_trials(study)


def _claim(study: "optuna.Study") -> "optuna.Trial | None":
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


def _counts_toward_budget(t: "optuna.trial.FrozenTrial") -> bool:
    from optuna.trial import TrialState

    # Trials whose worker died were queued again: the retry counts, not them.
    return not (t.state == TrialState.FAIL and str(t.user_attrs.get("error", "interrupted")).startswith("interrupted"))


def _open_stage(ctx: SweepContext, storage, index: int, worker: int) -> tuple["optuna.Study", dict[str, Any]]:
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
    best = _rank(study.get_trials(deepcopy=False), ctx.cfg.direction)
    if not best:
        raise RunFailure(f"stage {prev.label!r} has no complete trial, so stage {ctx.stages[index].label!r} has "
                         f"no best values to start from; see {ctx.dir / RESULTS} for the errors.")
    return {**study.user_attrs.get("fixed", {}), **best[0].params}


def _rank(trials: list, direction: str) -> list:
    from optuna.trial import TrialState

    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    sign = -1 if direction == "maximize" else 1
    return sorted(done, key=lambda t: (sign * t.value, t.number))


def _drain(ctx: SweepContext, study: "optuna.Study", stage: Stage, fixed: dict[str, Any], worker: int) -> None:
    """Run trials of one stage until its plan (or trial budget) is used up and none is running."""
    from optuna.trial import TrialState

    while True:
        _reap(study)
        trial = _claim(study)
        if trial is None and stage.plan is None:
            used = sum(_counts_toward_budget(t) for t in study.get_trials(deepcopy=False))
            if used < (stage.trials or 0):
                trial = study.ask()  # the sampler proposes the next configuration
        if trial is not None:
            _run_trial(ctx, study, trial, stage, fixed, worker)
            continue
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            return
        time.sleep(1)  # other workers are finishing this stage's last trials


class _Heartbeat:
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

    def __enter__(self) -> "_Heartbeat":
        self.storage.record_heartbeat(self.tid)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def _run_trial(ctx: SweepContext, study: "optuna.Study", trial: "optuna.Trial", stage: Stage,
               fixed: dict[str, Any], worker: int) -> None:
    from optuna.trial import TrialState

    from .runner import run as run_experiment

    with _Heartbeat(study, trial):
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
                result = run_experiment(ctx.base, overrides=over, runs_dir=ctx.dir / "trials", quiet=True,
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
            trial.set_user_attr("error", "interrupted; the configuration was queued again")
            study.tell(trial, state=TrialState.FAIL)
            _requeue(study, study._storage.get_trial(trial._trial_id))
            raise
        except Exception as e:  # a bad combination or a NaN: record it and go on with the sweep
            msg = str(e) if isinstance(e, (UserError, RunFailure)) else f"{type(e).__name__}: {e}"
            if not isinstance(e, (UserError, RunFailure)):
                trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            trial.set_user_attr("result", {"run_dirs": dirs, "seconds": round(time.perf_counter() - t0, 2)})
            trial.set_user_attr("error", msg[:2000])
            study.tell(trial, state=TrialState.FAIL)
            _say(ctx, f"[w{worker}] trial {label}{trial.number} {_fmt_params(params)}: failed: {msg[:300]}")
            return
        seconds = round(time.perf_counter() - t0, 2)
        means = {m: statistics.fmean(v) for m, v in per_metric.items() if v}
        stds = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in per_metric.items() if v}
        trial.set_user_attr("result", {"metrics": means, "metrics_std": stds, "values": per_metric[ctx.cfg.metric],
                                       "run_dirs": dirs, "seconds": seconds, "pruned_at_epoch": pruned})
        if pruned is not None:
            study.tell(trial, state=TrialState.PRUNED)
            _say(ctx, f"[w{worker}] trial {label}{trial.number} {_fmt_params(params)}: pruned at epoch {pruned}")
            return
        study.tell(trial, means[ctx.cfg.metric])
        _say(ctx, f"[w{worker}] trial {label}{trial.number} {_fmt_params(params)}: {ctx.cfg.metric} "
                  f"{_pm(means[ctx.cfg.metric], stds[ctx.cfg.metric], ctx.cfg.repeats)} ({seconds:.1f} s)")


def _say(ctx: SweepContext, msg: str) -> None:
    if not ctx.quiet:
        print(msg, flush=True)


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in params.items())


def _fmt_value(v: Any) -> str:
    if v is None:  # a key of a later stage: not searched yet, the experiment's own value applies
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _pm(mean: float | None, std: float | None, repeats: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if repeats > 1 and std is not None else f"{mean:.4f}"


def _work(ctx: SweepContext, worker: int) -> None:
    """One worker: every stage in order, taking trials until each is done."""
    storage = _open_storage(ctx.storage_url)
    for i, stage in enumerate(ctx.stages):
        study, fixed = _open_stage(ctx, storage, i, worker)
        if stage.label:
            _say(ctx, f"[w{worker}] stage {stage.label}: {', '.join(p.key for p in stage.params)}"
                      + (f" with {_fmt_params(ctx.decode(fixed))}" if fixed else ""))
        _drain(ctx, study, stage, fixed, worker)


def _child(ctx: SweepContext, worker: int, threads: int, gpu: str | None) -> None:
    """Entry point of a spawned worker process."""
    import signal

    from .distributed import die_with_parent

    die_with_parent(signal.SIGKILL)  # die with the parent (SIGKILL included) instead of running on as an orphan
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # before torch initializes CUDA in this process
    import torch

    torch.set_num_threads(threads)
    try:
        _work(ctx, worker)
    except UserError as e:
        print(f"error: worker {worker}: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------ results
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
        return self.dir / BEST


def _collect(ctx: SweepContext) -> tuple[list[dict[str, Any]], dict[str, list], list]:
    import optuna

    storage = _open_storage(ctx.storage_url)
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
            row["error"] = a.get("error", "" if t.state.name != "FAIL" else "interrupted")
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
        rd.atomic_write_text(ctx.dir / RESULTS, buf.getvalue())
    if best is not None and best.get("_config"):
        import tomllib

        import tomli_w

        cfg = tomllib.loads(best["_config"])
        cfg["name"] = f"{ctx.cfg.name}_best"
        header = (f"# Best trial of sweep {ctx.cfg.name!r} ({ctx.dir}): trial {best.get('stage', '')}"
                  f"{'/' if best.get('stage') else ''}{best['trial']}, {metric} {best[metric]:.4f}.\n"
                  f"#   cnnlab run {ctx.dir / BEST}\n")
        rd.atomic_write_text(ctx.dir / BEST, header + tomli_w.dumps(cfg))
    table = _ranking_markdown(ctx, ranked, keys, len(rows))
    rd.atomic_write_text(ctx.dir / RANKING, table)
    if not ctx.quiet:
        _print_ranking(ctx, ranked, keys, rows, best)
    try:
        _figures(ctx, rows, ranked, studies, keys)
    except Exception as e:  # figures are a bonus: never lose a finished sweep over one
        _say(ctx, f"warning: figures not written: {type(e).__name__}: {e}")
    from .report import reports_enabled, write_sweep_report

    if reports_enabled():
        try:  # the ranked table and the figures above as one page (docs/report.md)
            _say(ctx, f"report: {write_sweep_report(ctx.dir)}")
        except Exception as e:  # like the figures: never lose a finished sweep over its page
            _say(ctx, f"warning: sweep report not written: {type(e).__name__}: {e}")
    return SweepResult(ctx.dir, out, [{k: v for k, v in r.items() if not k.startswith("_")} for r in ranked],
                       {k: v for k, v in best.items() if not k.startswith("_")} if best else None)


def _table_rows(ctx: SweepContext, ranked: list[dict], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    metric, rep = ctx.cfg.metric, ctx.cfg.repeats
    staged = any(s.label for s in ctx.stages)
    head = ["rank", *(["stage"] if staged else []), "trial", *keys,
            metric + (" (mean ± std)" if rep > 1 else ""), *[m for m in SUMMARY_METRICS if m != metric], "seconds"]
    body = []
    for i, r in enumerate(ranked, 1):
        body.append([str(i), *([r["stage"]] if staged else []), str(r["trial"]), *[_fmt_value(r[k]) for k in keys],
                     _pm(r[metric], r.get(metric + ".std"), rep),
                     *[_pm(r.get(m), None, 1) for m in SUMMARY_METRICS if m != metric],
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
    from rich.console import Console
    from rich.table import Table

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
    print(f"results: {ctx.dir / RESULTS}")
    if best is not None:
        print(f"best: {ctx.dir / BEST}  (cnnlab run {ctx.dir / BEST})")
    failed = [r for r in rows if r["state"] == "fail" and r.get("error") and not r["error"].startswith("interrupted")]
    for r in failed[:5]:
        print(f"failed trial {r['trial']}: {r['error'][:200]}")


def _figures(ctx: SweepContext, rows: list[dict], ranked: list[dict], studies: dict, keys: list[str]) -> None:
    """The sweep's figures in figures/: the objective per trial with the best so far
    (sweep_objective.png), the objective against each parameter (sweep_params.png; the sweep
    report shows these two files) and, per study, Optuna's parameter importance."""
    from . import plots  # the report's colorblind-safe style; Figure objects, no pyplot state

    metric = ctx.cfg.metric
    figdir = ctx.dir / "figures"
    figdir.mkdir(exist_ok=True)
    done = sorted((r for r in rows if r["state"] == "complete" and r[metric] is not None),
                  key=lambda r: (str(r.get("stage") or ""), r["trial"]))  # the report's trial order
    if not done:
        return

    def save(fig, name: str) -> None:
        plots.save_png(fig, figdir / name)
        fig.clear()

    values = [float(r[metric]) for r in done]
    save(plots.sweep_history_figure(values, ctx.cfg.direction, metric, f"{ctx.cfg.name}: {metric} per trial"),
         "sweep_objective.png")
    # Ranges on a numeric axis (log where the range is log-uniform); listed values as labels in the
    # sweep file's order.
    ranges = {p.key: p for s in ctx.stages for p in s.params}
    log = {k for k in keys if ranges[k].spec is not None and ranges[k].spec.log}
    order = {k: list(dict.fromkeys(_fmt_value(ranges[k].decode(c)) for c in ranges[k].choices))
             for k in keys if ranges[k].spec is None}
    params = {k: [_fmt_value(r[k]) if k in order else r[k] for r in done] for k in keys}
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


# ------------------------------------------------------------------------------ entry point
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
    ctx = load_sweep(path, overrides, trials)
    ctx.workers, ctx.quiet = workers, quiet
    ctx.dir = _sweep_dir(Path(runs_dir), ctx.cfg.name, ctx.fingerprint, new).resolve()
    ctx.storage_url = storage or f"sqlite:///{ctx.dir / 'study.db'}"
    ctx.study_name = f"{ctx.cfg.name}-{ctx.fingerprint}"
    meta_path = ctx.dir / SWEEP_JSON
    meta = rd.read_json(meta_path)
    meta.update({"fingerprint": ctx.fingerprint, "sweep_file": str(Path(path).resolve()), "base": str(ctx.base),
                 "study": ctx.study_name, "storage": _safe_url(ctx.storage_url), "overrides": ctx.overrides,
                 "config": ctx.cfg.model_dump(mode="json"), "trials": trials or ctx.cfg.trials})
    rd.atomic_write_json(meta_path, meta)
    _open_storage(ctx.storage_url)  # fail on a bad URL before starting workers
    _say(ctx, f"sweep {ctx.cfg.name} ({ctx.cfg.strategy}) in {ctx.dir}, study {ctx.study_name} at "
              f"{_safe_url(ctx.storage_url)}, {workers} worker{'s' if workers > 1 else ''}")
    if workers == 1:
        _work(ctx, 0)
    else:
        _spawn(ctx, workers)
    return finalize(ctx)


def _spawn(ctx: SweepContext, workers: int) -> None:
    import multiprocessing as mp

    import torch

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
    except KeyboardInterrupt:
        for p in procs:  # they got the SIGINT too; give them time to requeue their trials
            p.join(timeout=30)
        raise
    bad = [(i, p.exitcode) for i, p in enumerate(procs) if p.exitcode != 0]
    if any(code == 2 for _, code in bad):
        raise UserError("a sweep worker stopped on bad input (its message is above).")
    if bad:
        raise RunFailure(f"sweep worker(s) {', '.join(f'{i} (exit {c})' for i, c in bad)} died; run the same "
                         f"command again to continue the sweep in {ctx.dir}.")
