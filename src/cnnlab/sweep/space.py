"""What a sweep searches and how: the sweep file (``SweepConfig``), the searched keys (``Param``),
the strategies that turn a file into stages of planned or adaptive trials (``STRATEGIES``), the
Optuna samplers and pruners by name, the metric a sweep ranks by, and ``load_sweep``, which
validates a sweep file against its base experiment into the ``SweepContext`` every worker gets.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import rundir as rd
from .._toml import flatten, read_toml
from ..config import apply_overrides, check_name, check_path, parse_override, validation_message
from ..errors import RunFailure, UserError, shown
from ..experiment import load_config, validate_config
from ..registry import Registry
from ..report import fmt_param

if TYPE_CHECKING:
    import optuna

GRID_MAX = 10_000  # combinations a sweep plans at most (each is at least one training run)
VALUES_MAX = 1_000  # values one space key may list
STEPS_MAX = 1e15  # values one stepped range may hold (a finer step is a continuous range in all but name)
SWEEP_SEED_MAX = 2**31 - 1

# Metrics kept for every trial besides the sweep's own: the ranked table shows them.
SUMMARY_METRICS = ("val.accuracy", "val.loss", "test.accuracy", "test.loss")
# The per-epoch value (history.jsonl key) that pruning watches for a sweep metric.
EPOCH_KEYS = {"val.accuracy": "val_acc", "val.loss": "val_loss", "train.accuracy": "train_acc", "train.loss": "train_loss"}
METRIC_SPLITS = ("train", "val", "test")
METRIC_KEYS = ("accuracy", "loss", "macro", "weighted", "per_class")
# What metrics.json holds under <split>.macro / .weighted (numbers) and <split>.per_class (one list
# per metric, in class order): metrics.compute_metrics.
CLASS_METRICS = ("precision", "recall", "specificity", "f1", "auc")

HEARTBEAT_S = 5      # a running trial writes a heartbeat this often ...
GRACE_S = 60         # ... and counts as dead (on any machine) after this long without one
PLAN_WAIT_S = 120    # how long a worker waits for another worker to finish queueing a stage's plan


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    trials: int | None = Field(None, ge=1, le=1_000_000)
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
    trials: int | None = Field(None, ge=1, le=1_000_000)
    repeats: int = Field(1, ge=1, le=100, description="seeds per configuration (seed, seed+1, ...); ranked by the mean")
    seed: int = Field(0, ge=0, le=SWEEP_SEED_MAX, description="seed of the random plan and the sampler (0 to 2^31 - 1: "
                      "Optuna's samplers take 32-bit seeds, and each worker adds its number)")
    space: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageConfig] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("base")
    @classmethod
    def _check_base(cls, v: str) -> str:
        return check_path(v)


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

    def grid(self, where: str) -> Sequence:
        """The key's values in order, as a sequence computed on demand (a range of 10^9 values
        costs nothing until a value is asked for)."""
        if self.choices is not None:
            return list(self.choices)
        s = self.spec
        if s.step is None and not s.is_int:
            raise UserError(f"{where}: space key {self.key!r} is a continuous range; a grid needs a list of "
                            f"values or a range with a step ({{low, high, step}}).")
        ratio = (s.high - s.low) / (s.step or 1)
        if not math.isfinite(ratio) or ratio >= STEPS_MAX:
            raise UserError(f"{where}: space key {self.key!r}: the range from {s.low} to {s.high} in steps of "
                            f"{s.step or 1} has more than {STEPS_MAX:.0e} values; use a larger step.")
        if s.is_int:
            return range(int(s.low), int(s.high) + 1, int(s.step or 1))
        return _Steps(float(s.low), float(s.step), int(math.floor(ratio + 1e-9)) + 1)

    def decode(self, value: Any) -> Any:
        return json.loads(value) if self.encoded else value

    def check_values(self) -> list:
        """The values that must each validate against the experiment: every choice; for a range,
        both ends and a value inside, of the type the trials will get (a float range gives floats,
        so a step of 0.5 over an integer key is refused here, not in the middle of the sweep)."""
        if self.choices is not None:
            return [self.decode(c) for c in self.choices]
        s = self.spec
        if s.is_int:
            return [int(s.low), int(s.high)]
        inside = s.low + s.step if s.step is not None and s.low + s.step < s.high else (s.low + s.high) / 2
        return [float(s.low), float(inside), float(s.high)]




def parse_space(space: dict[str, Any], where: str) -> list[Param]:
    """``[space]`` -> Params. A leaf is a list of values or a ``{low, high, log, step}`` table."""
    params: list[Param] = []

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, list):
                if not v:
                    raise UserError(f"{where}: space key {key!r} has an empty list of values.")
                if len(v) > VALUES_MAX:
                    raise UserError(f"{where}: space key {key!r} lists {len(v):,} values; at most {VALUES_MAX:,} (give a "
                                    f"range {{low, high, step}} for many evenly spaced values).")
                if all(isinstance(c, _SCALARS) for c in v):
                    params.append(Param(key, tuple(v)))
                else:  # lists or tables as values: stored as JSON text
                    params.append(Param(key, tuple(json.dumps(c) for c in v), encoded=True))
            elif isinstance(v, dict) and ({"low", "high"} & set(v)):
                try:
                    params.append(Param(key, spec=RangeSpec.model_validate(v)))
                except ValidationError as e:
                    raise UserError(validation_message(e, where, f"space.{key}").replace(
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


class _Steps(Sequence):
    """``low + i * step`` for i in 0..n-1 (rounded to 12 decimals), without a list."""

    def __init__(self, low: float, step: float, n: int):
        self.low, self.step, self.n = low, step, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return round(self.low + (i % self.n) * self.step, 12)


def grid_size(params: list[Param], where: str) -> int:
    """How many combinations the grid of ``params`` has (computed, not enumerated)."""
    return math.prod(len(p.grid(where)) for p in params)


def _combination(params: list[Param], grids: list[Sequence], index: int) -> dict:
    """The ``index``-th combination in file order (the last key varies fastest)."""
    values = []
    for g in reversed(grids):
        index, r = divmod(index, len(g))
        values.append(g[r])
    return dict(zip([p.key for p in params], reversed(values)))


def plan_grid(params: list[Param], trials: int | None, seed: int, where: str) -> list[dict]:
    """Every combination in file order (the first ``trials`` when that is smaller). A grid of more
    than GRID_MAX combinations without ``trials`` is refused before any is built."""
    grids = [p.grid(where) for p in params]
    total = math.prod(len(g) for g in grids)
    if total > GRID_MAX and not (trials and trials <= GRID_MAX):
        sizes = " x ".join(f"{p.key} {len(g):,}" for p, g in zip(params, grids))
        raise UserError(f"{where}: the grid has {total:,} combinations ({sizes}); a sweep plans at most "
                        f"{GRID_MAX:,}. List fewer values or a coarser step, set trials = N (the first N), or use "
                        f"strategy = \"random\" with trials = N.")
    n = min(total, trials) if trials else total
    return [_combination(params, grids, i) for i in range(n)]


def plan_random(params: list[Param], trials: int | None, seed: int, where: str) -> list[dict]:
    """``trials`` random configurations, planned up front (random search does not adapt) so that any
    number of workers run exactly these. A finite space is sampled without replacement."""
    import optuna

    if not trials:
        raise UserError(f"{where}: random search needs trials = N (how many configurations to draw).")
    if all(p.choices is not None or p.spec.is_int or p.spec.step is not None for p in params):
        # A finite space: indices drawn without replacement (random.sample picks the same ones from a
        # range as from the list of every combination), so no combination is built unless drawn.
        grids = [p.grid(where) for p in params]
        total = math.prod(len(g) for g in grids)
        rng = random.Random(seed)
        if total <= sys.maxsize:
            picks = rng.sample(range(total), min(trials, total))
        else:  # too many to count with a range: draw indices, skipping repeats
            picked: dict[int, None] = {}
            while len(picked) < trials:
                picked[rng.randrange(total)] = None
            picks = list(picked)
        return [_combination(params, grids, i) for i in picks]
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
    """Check a sweep's ``metric`` against what metrics.json holds: ``<split>.accuracy``,
    ``<split>.loss``, ``<split>.macro.<m>``, ``<split>.weighted.<m>`` or
    ``<split>.per_class.<class>.<m>`` (a class name or index; ``m`` one of CLASS_METRICS). A
    metric that can never be found is refused here, before any trial trains."""
    parts = metric.split(".")
    split, key = (parts + ["", ""])[:2]
    rest = parts[2:]
    ok = split in METRIC_SPLITS and all(parts) and (
        (key in ("accuracy", "loss") and not rest)
        or (key in ("macro", "weighted") and len(rest) == 1 and rest[0] in CLASS_METRICS)
        or (key == "per_class" and len(rest) >= 2 and rest[-1] in CLASS_METRICS))
    if not ok:
        raise UserError(f"{where}: metric = {shown(metric)} is not a metric; use <split>.accuracy, <split>.loss, "
                        f"<split>.macro.<m>, <split>.weighted.<m> or <split>.per_class.<class name or index>.<m>, "
                        f"with split one of {', '.join(METRIC_SPLITS)} and m one of {', '.join(CLASS_METRICS)}: "
                        f"for example val.accuracy, val.loss, val.macro.f1, val.per_class.cat.recall.")
    return parts


def metric_value(metrics: dict[str, Any], metric: str) -> float:
    """The value of a checked ``metric`` (parse_metric) in a run's metrics.json."""
    split, key, *rest = metric.split(".")
    node: Any = metrics.get(split)
    if not isinstance(node, dict):
        raise RunFailure(f"metric {metric!r}: metrics.json has no {split!r} split (it has: {', '.join(sorted(metrics))}).")
    if key == "per_class":
        names = node.get("class_names") or []
        cls, name = ".".join(rest[:-1]), rest[-1]
        if cls in names:  # a name first: a class may be called "3"
            index = names.index(cls)
        elif cls.isdigit() and int(cls) < len(names):
            index = int(cls)
        else:
            raise RunFailure(f"metric {metric!r}: this run has no class {cls!r} (its classes: "
                             f"{', '.join(map(str, names[:30]))}{', ...' if len(names) > 30 else ''}).")
        values = (node.get("per_class") or {}).get(name)
        node = values[index] if isinstance(values, list) and index < len(values) else None
    else:
        for p in [key, *rest]:
            node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, (int, float)) or isinstance(node, bool):
        raise RunFailure(f"metric {metric!r} is not a number in metrics.json.")
    return float(node)


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
        raise UserError(validation_message(e, where).replace("invalid configuration", "invalid sweep file")) from None
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
    if problem := rd.path_problem(base):
        raise UserError(f"{where}: base = {cfg.base!r}: {base} {problem} (the path is relative to the sweep file; "
                        f"give the experiment .toml file).")

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
    ctx.fingerprint = fingerprint_of(cfg, fixed, trials or cfg.trials, base_raw)
    # A report per trial can cost more than a short trial's training; the sweep gets its own
    # report and `cnnlab report TRIAL_DIR` draws any trial's on demand. Trials keep their reports
    # when the experiment or the sweep sets [report] explicitly. (Set after the fingerprint: it is
    # derived from the files, so it must not change which sweep directory a rerun finds.)
    if "report" not in read_toml(base) and not any(k.split(".")[0] == "report" for k in fixed):
        ctx.overrides["report.enabled"] = False
    return ctx


def fingerprint_of(cfg: SweepConfig, fixed: dict[str, Any], trials: int | None, base_raw: dict) -> str:
    # What defines the plan: the same command on the same files gives the same fingerprint, so a
    # rerun finds its sweep directory and study; any change to them starts a new sweep.
    blob = json.dumps({"sweep": cfg.model_dump(mode="json", exclude={"trials"}), "trials": trials,
                       "fixed": fixed, "base": base_raw}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def say(ctx: SweepContext, msg: str) -> None:
    if not ctx.quiet:
        print(msg, flush=True)


def fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_param(v)}" for k, v in params.items())


def pm(mean: float | None, std: float | None, repeats: int) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if repeats > 1 and std is not None else f"{mean:.4f}"
