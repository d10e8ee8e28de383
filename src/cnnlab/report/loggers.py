"""Loggers users already use, switched on in the experiment file's ``[log]`` section.

``build_loggers(cfg, run_dir)`` returns the logger callbacks ``cfg.log`` asks for (registered in
``CALLBACKS`` as ``tensorboard`` and ``mlflow``); the runner adds them after the checkpoint
callback and calls ``log_final(callbacks, metrics, run_dir)`` once ``metrics.json`` is written.

Every epoch, each logger records every numeric value of the epoch's logs (the names of
``history.jsonl``: ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``lr``, ``seconds``,
``images_per_s``, ...) at step = epoch. At the end, the final metrics of each split go under
``final/<split>_<metric>`` (``final/test_accuracy``, ``final/test_macro_f1``, ...) at step = the
last epoch, with the test (else val) confusion matrix as a figure.

* TensorBoard: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs`` shows every
  run), weight histograms every ``log.histograms_every`` epochs (and at epoch 1), the resolved
  config as text; with ``log.every_steps`` on, also ``step/loss`` and ``step/acc`` at the global
  optimizer step, read from ``steps.jsonl`` (written by the ``steps`` callback) at each epoch's
  end: the logger has no per-step work of its own, and the values are those of the file. The
  writer is flushed after every epoch, so a killed run loses at most the epoch in progress.
* MLflow: one MLflow run per cnnlab run, in experiment ``log.mlflow_experiment`` (default: the
  run's name); params = the flattened resolved config (``train.lr``, ``model.channels``, ...),
  tags ``cnnlab.run_dir``, ``cnnlab.dataset``, ``cnnlab.model``; artifacts ``metrics.json``,
  ``config.toml``, ``diagnostics.json``, ``report.html`` (those present when ``log_final`` runs)
  and ``confusion_matrix.png``. Tracking URI: ``log.mlflow_tracking_uri``, else the environment's
  ``MLFLOW_TRACKING_URI``, else ``sqlite:///RUNS_DIR/mlflow.db`` (RUNS_DIR = the folder holding
  ``<name>/<timestamp>/``). This works offline: MLflow 3 refuses its old ``./mlruns`` file store
  unless told otherwise, and SQLAlchemy comes with optuna. A new experiment in any sqlite store
  keeps its artifacts in ``mlartifacts/`` next to the database file.

Resume: a resumed run appends to the same TensorBoard directory, purging from the checkpoint's
epoch on (``purge_step``) and writing that epoch again from the checkpoint, so no epoch is missing
or shown twice (the purge, by step across all tags, also hides the per-step points from global step
N on: they are written again from steps.jsonl); and it continues the same MLflow run (its id and tracking URI are in the
callback's ``state_dict``, which every checkpoint holds), first logging any epoch of the
checkpoint's history that MLflow has not seen. (MLflow cannot drop logged points: a resume from a
checkpoint older than the last logged epoch, such as a copied ``epoch-NNNN.pt``, logs the
repeated epochs a second time at the same steps.)

Ending: ``on_fit_end`` closes the writer and ends the MLflow run (FAILED after a NaN stop,
FINISHED otherwise); ``log_final`` reopens what it needs and closes again, so either order works.
``close_loggers`` ends them after an error, and an ``atexit`` hook ends an MLflow run still open
when the process exits (KILLED), so no MLflow run is left RUNNING by a crash or Ctrl-C.

Only the process that writes the run directory logs: under torch.distributed every rank other
than 0 does nothing. tensorboard and mlflow (optional extras) are imported only when a logger is
switched on.
"""

from __future__ import annotations

import atexit
import importlib
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as tdist
from matplotlib.figure import Figure

from .._toml import flatten
from ..config import ExperimentConfig
from ..errors import UserError
from ..lifecycle import StopReason
from ..rundir import CONFIG, DIAGNOSTICS, METRICS, REPORT, STEPS, TENSORBOARD, read_jsonl
from ..train import CALLBACKS, Callback
from . import plots

if TYPE_CHECKING:
    from ..train import Trainer

# What each logger needs importable, and what to install when it is missing.
_REQUIREMENTS = {
    "tensorboard": ("torch.utils.tensorboard", "pip install 'cnnlab[tensorboard]' (or: pip install tensorboard)"),
    "mlflow": ("mlflow", "pip install 'cnnlab[mlflow]' (or: pip install mlflow-skinny)"),
}
_FINAL_AVERAGED = ("precision", "recall", "specificity", "f1", "auc")  # metrics.json's macro / weighted keys
_MLFLOW_BATCH = 100  # MLflow accepts at most 100 params (and 1000 metrics) per log_batch call
_MLFLOW_PARAM_CHARS = 6000  # MLflow 3's longest param value
_RUN_ARTIFACTS = (METRICS, CONFIG, DIAGNOSTICS, REPORT)


# ---------------------------------------------------------------------------------- helpers
def _require(logger: str) -> None:
    """Import the logger's package now, so a missing or broken one fails before training."""
    module, install = _REQUIREMENTS[logger]
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"log.{logger} = true needs the {logger} package, which could not be imported ({e}). "
                        f"Install it with `{install}`, or set log.{logger} = false in the experiment file's "
                        f"[log] section.") from None


def is_main_process() -> bool:
    """False on every torch.distributed rank but 0 (only rank 0 writes the run directory)."""
    return not (tdist.is_available() and tdist.is_initialized() and tdist.get_rank() != 0)


def numeric_logs(logs: dict[str, Any]) -> dict[str, float]:
    """The epoch's finite numeric values by name, without ``epoch`` (it is the step)."""
    return {k: float(v) for k, v in logs.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def final_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json as flat scalars: ``final/<split>_accuracy``, ``_loss``, ``_macro_<m>``, ``_weighted_<m>``
    for m in precision, recall, specificity, f1, auc (undefined values left out)."""
    out: dict[str, float] = {}
    for split, m in metrics.items():
        if not isinstance(m, dict) or "accuracy" not in m:
            continue
        values = {"accuracy": m.get("accuracy"), "loss": m.get("loss")}
        for avg in ("macro", "weighted"):
            values.update({f"{avg}_{k}": m.get(avg, {}).get(k) for k in _FINAL_AVERAGED})
        out.update({f"final/{split}_{k}": float(v) for k, v in values.items()
                    if v is not None and math.isfinite(v)})
    return out


def flatten_config(d: dict[str, Any]) -> dict[str, str]:
    """A nested config dict as MLflow params: ``{"train.lr": "0.003", "model.channels": "[32, 64]", ...}``
    (strings as they are, everything else as JSON, so booleans read ``true`` as in the TOML file)."""
    return {k: (v if isinstance(v, str) else json.dumps(v))[:_MLFLOW_PARAM_CHARS] for k, v in flatten(d).items()}


def confusion_split(metrics: dict[str, Any]) -> str | None:
    """The split whose confusion matrix is shown: test, else val, else None."""
    return next((s for s in ("test", "val") if metrics.get(s, {}).get("confusion_matrix") is not None), None)


def confusion_figure(cm: Any, class_names: list[str], title: str = "") -> Figure:
    """The confusion matrix figure of report.html (``plots.confusion_figure``: counts and row-normalized)."""
    return plots.confusion_figure(cm, class_names, title)


def _read_config(run_dir: Path | None) -> dict[str, Any]:
    p = None if run_dir is None else run_dir / CONFIG
    return tomllib.loads(p.read_text()) if p is not None and p.is_file() else {}


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Logger(Callback):
    """Common ground of the loggers: the run directory they log, the rank check, the last epoch
    seen. Subclasses implement ``_start``, ``_epoch``, ``_final`` and ``close``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.active = False  # True between on_fit_start and close, on the main process only
        self.last_epoch = 0  # the step of the final values
        self.status = "FINISHED"  # how the run ends: FAILED after a NaN stop

    def on_fit_start(self, trainer: "Trainer") -> None:
        if not is_main_process():
            return
        self.last_epoch = trainer.epoch
        self.active = True
        try:
            self._start(trainer)
        except Exception as e:  # a logger that cannot start (a server unreachable) must not stop training
            _warn(f"{type(self).__name__} is off for this run: {e}")
            self.close("FAILED")

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if not self.active:
            return
        self.last_epoch = int(logs["epoch"])
        try:
            self._epoch(trainer, logs)
        except Exception as e:  # a logger's failure (a server gone, a full disk) must not stop training
            _warn(f"{type(self).__name__} stopped logging at epoch {logs['epoch']}: {type(e).__name__}: {e}")
            self.close("FAILED")

    def on_fit_end(self, trainer: "Trainer") -> None:
        if trainer.stop is not None and trainer.stop.reason is StopReason.NON_FINITE_LOSS:
            self.status = "FAILED"
        self.close()

    def log_final(self, metrics: dict[str, Any], run_dir: Path) -> None:
        """Final metrics and the confusion matrix, then close. A failure is a warning: the run's own
        files are already written."""
        if not is_main_process():
            return
        try:
            self._final(metrics, Path(run_dir))
        except Exception as e:
            _warn(f"{type(self).__name__} could not log the final metrics: {type(e).__name__}: {e}")
        finally:
            self.close()

    def _start(self, trainer: "Trainer") -> None: ...
    def _epoch(self, trainer: "Trainer", logs: dict[str, Any]) -> None: ...
    def _final(self, metrics: dict[str, Any], run_dir: Path) -> None: ...

    def close(self, status: str | None = None) -> None:
        """Flush and release; ``status`` (FINISHED, FAILED, KILLED) overrides how the run ends. Idempotent."""
        self.active = False


# ------------------------------------------------------------------------------- TensorBoard
HISTOGRAM_BINS = 64


def histogram(t: torch.Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """A tensor's histogram in TensorBoard's raw form (``SummaryWriter.add_histogram_raw`` keywords):
    ``bins`` equal-width buckets from its min to its max, computed where the tensor lives with one
    device sync (``add_histogram`` copies every weight to numpy first). bincount without weights,
    unlike histc, has a deterministic CUDA kernel, so ``deterministic = true`` runs accept it."""
    x = t.detach().flatten().float()  # (N,)
    lo, hi = torch.aminmax(x)
    lo, hi, total, squares = torch.stack([lo, hi, x.sum(), torch.dot(x, x)]).tolist()
    if not hi > lo:  # a constant tensor (a fresh BatchNorm bias): one unit-wide range around it
        lo, hi = lo - 0.5, hi + 0.5
    # Bucket i holds edges[i] <= x < edges[i + 1]; the maximum joins the last bucket.
    index = ((x - lo) * (bins / (hi - lo))).long().clamp_(0, bins - 1)  # (N,) in [0, bins)
    counts = torch.bincount(index, minlength=bins)  # (bins,)
    limits = [lo + (hi - lo) * (i + 1) / bins for i in range(bins)]  # right edges, the last = hi
    return {"min": lo, "max": hi, "num": x.numel(), "sum": total, "sum_squares": squares,
            "bucket_limits": limits, "bucket_counts": counts.tolist()}


@CALLBACKS.register("tensorboard")
class TensorBoardLogger(Logger):
    """TensorBoard event files in ``RUN_DIR/tensorboard``: every numeric epoch value, weight
    histograms every ``histograms_every`` epochs (0 = off), final metrics and the confusion matrix.
    ``steps``: also the per-step loss and accuracy of steps.jsonl (``log.every_steps`` > 0)."""

    def __init__(self, run_dir: str | Path, histograms_every: int = 1, steps: bool = False):
        super().__init__(run_dir)
        self.histograms_every = histograms_every
        self.steps = steps
        self.writer = None

    @property
    def log_dir(self) -> Path:
        return self.run_dir / TENSORBOARD

    def _open(self, purge_step: int | None = None):
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        return self.writer

    def _start(self, trainer: "Trainer") -> None:
        if trainer.epoch == 0:
            w = self._open()
            text = (self.run_dir / CONFIG).read_text() if (self.run_dir / CONFIG).is_file() else ""
            if text:  # markdown: indented lines are a code block
                w.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)
            w.flush()
            return
        # Resumed after epoch N: hide whatever was written at steps >= N (epoch N may or may not have
        # reached the file before the kill, later epochs did and are being repeated) and write epoch N
        # again from the checkpoint, whose weights are those of the end of epoch N.
        self._open(purge_step=trainer.epoch)
        if self.steps:  # the purge hid earlier epochs' steps from global step N on: those come back first
            self._log_steps(lambda r: r["epoch"] < trainer.epoch <= r["step"])
        if trainer.history:
            self._epoch(trainer, trainer.history[-1])

    def _epoch(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        w = self._open()
        epoch = int(logs["epoch"])
        for k, v in numeric_logs(logs).items():
            w.add_scalar(k, v, epoch)
        every = self.histograms_every
        if every and (epoch % every == 0 or epoch == 1):
            for name, p in trainer.model.named_parameters():
                w.add_histogram_raw(f"weights/{name}", global_step=epoch, **histogram(p))
        if self.steps:
            self._log_steps(lambda r: r["epoch"] == epoch)
        w.flush()  # a killed run keeps every finished epoch (the writer's own flush is every 120 s)

    def _log_steps(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """``step/loss`` and ``step/acc`` of the steps.jsonl lines that ``keep`` selects, at their
        global step (a damaged file raises: the caller's warning names it and the logger stops)."""
        w = self._open()
        for r in read_jsonl(self.run_dir / STEPS, ("step", "epoch")):
            if keep(r):
                for k, v in numeric_logs({"loss": r.get("loss"), "acc": r.get("acc")}).items():
                    w.add_scalar(f"step/{k}", v, int(r["step"]))

    def _final(self, metrics: dict[str, Any], run_dir: Path) -> None:
        w = self._open()
        for k, v in final_scalars(metrics).items():
            w.add_scalar(k, v, self.last_epoch)
        split = confusion_split(metrics)
        if split:
            m = metrics[split]
            fig = confusion_figure(m["confusion_matrix"], m["class_names"], f"{split} confusion matrix")
            with plots.style():
                w.add_figure(f"final/{split}_confusion_matrix", fig, self.last_epoch, close=False)

    def close(self, status: str | None = None) -> None:
        super().close(status)
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ------------------------------------------------------------------------------------ MLflow
def default_tracking_uri(run_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///RUNS_DIR/mlflow.db`` next to the run directories."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{_runs_dir(run_dir) / 'mlflow.db'}"


def _runs_dir(run_dir: Path) -> Path:
    return Path(run_dir).resolve().parent.parent  # RUNS_DIR/<name>/<timestamp>


@CALLBACKS.register("mlflow")
class MLflowLogger(Logger):
    """One MLflow run per cnnlab run: params (the flattened resolved config), every numeric epoch
    value as a metric at step = epoch, final metrics, the confusion matrix and the run's files as
    artifacts. The MLflow run id is part of ``state_dict``: a resumed run continues the same MLflow run."""

    def __init__(self, run_dir: str | Path, tracking_uri: str | None = None,
                 experiment: str | None = None, run_name: str | None = None, tags: dict[str, str] | None = None):
        super().__init__(run_dir)
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.run_name, self.tags = run_name, dict(tags or {})
        self.run_id: str | None = None
        self.params_logged = False
        self.client = None
        self.artifact_location: str | None = None  # for a new experiment in a local (sqlite) store
        self._open_run = False  # we set the MLflow run RUNNING (or logged to it) and have not ended it since
        self._final_done = False

    # ---- state: which MLflow run this cnnlab run writes to
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "params_logged": self.params_logged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
        self.tracking_uri = state.get("tracking_uri") or self.tracking_uri
        self.params_logged = bool(state.get("params_logged", False))

    # ---- connection
    def _connect(self):
        if self.client is None:
            from mlflow.tracking import MlflowClient

            self.tracking_uri = self.tracking_uri or default_tracking_uri(self.run_dir)
            if self.tracking_uri.startswith("sqlite:///"):
                # A local store keeps a new experiment's artifacts next to its database: MLflow's own
                # default is ./mlruns in whatever the working directory happens to be.
                db = Path(self.tracking_uri[len("sqlite:///"):])
                self.artifact_location = (db.resolve().parent / "mlartifacts").as_uri()
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
        return self.client

    def _experiment_id(self) -> str:
        client, name = self.client, self.experiment or self.run_dir.parent.name
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=self.artifact_location)
        except Exception:  # created meanwhile by another process of a sweep
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _start(self, trainer: "Trainer") -> None:
        try:
            client = self._connect()
            if self.run_id is not None:
                try:
                    client.update_run(self.run_id, status="RUNNING")
                except Exception as e:
                    _warn(f"MLflow run {self.run_id} could not be continued ({type(e).__name__}: {e}); "
                          f"logging to a new MLflow run")
                    self.run_id, self.params_logged = None, False
            if self.run_id is None:
                tags = {"cnnlab.run_dir": str(self.run_dir.resolve()), **self.tags}
                run = client.create_run(self._experiment_id(), run_name=self.run_name or
                                        f"{self.run_dir.parent.name}/{self.run_dir.name}", tags=tags)
                self.run_id = run.info.run_id
        except Exception as e:
            raise RuntimeError(f"MLflow logging (log.mlflow = true) could not start a run at tracking URI "
                               f"{self.tracking_uri!r}: {type(e).__name__}: {e}. Set log.mlflow_tracking_uri (or "
                               f"MLFLOW_TRACKING_URI) to a reachable server or a local store such as "
                               f"'sqlite:///runs/mlflow.db', or set log.mlflow = false.") from None
        self._open_run = True
        atexit.register(self._end_at_exit)
        if not self.params_logged and (self.run_dir / CONFIG).is_file():
            self._log_params()
        if trainer.epoch:
            self._backfill(trainer.history)

    def _log_params(self) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten_config(_read_config(self.run_dir)).items()]
        for i in range(0, len(params), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _MLFLOW_BATCH])
        self.params_logged = True

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # ms since the epoch, MLflow's timestamp unit
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), _MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _MLFLOW_BATCH])

    def _backfill(self, history: list[dict[str, Any]]) -> None:
        # Epochs of the checkpoint's history that MLflow has not seen (a kill between the checkpoint
        # and this callback's epoch end). lr is numeric in every epoch, so its steps say what was logged.
        seen = max((m.step for m in self.client.get_metric_history(self.run_id, "lr")), default=0)
        for logs in history:
            if int(logs["epoch"]) > seen:
                self._log_metrics(numeric_logs(logs), int(logs["epoch"]))

    def _epoch(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        self._log_metrics(numeric_logs(logs), int(logs["epoch"]))

    def _final(self, metrics: dict[str, Any], run_dir: Path) -> None:
        client = self._connect()
        if self.run_id is None:
            return  # never started (another rank, or fit never ran)
        self._open_run, self._final_done = True, True  # close() ends it again, with the final end time
        if not self.params_logged:
            self._log_params()
        self._log_metrics(final_scalars(metrics), self.last_epoch)
        split = confusion_split(metrics)
        if split:
            m = metrics[split]
            fig = confusion_figure(m["confusion_matrix"], m["class_names"], f"{split} confusion matrix")
            client.log_figure(self.run_id, fig, "confusion_matrix.png")
        for name in _RUN_ARTIFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(self.run_id, str(run_dir / name))

    def close(self, status: str | None = None) -> None:
        super().close(status)
        # An explicit status (close_loggers after an error) overrides the end on_fit_end gave the run,
        # but never the end that log_final gave it.
        end = self._open_run or (status is not None and not self._final_done)
        if self.run_id is not None and self.client is not None and end:
            try:
                self.client.set_terminated(self.run_id, status=status or self.status)
            except Exception as e:
                _warn(f"MLflow run {self.run_id} could not be ended: {type(e).__name__}: {e}")
        self._open_run = False
        atexit.unregister(self._end_at_exit)

    def _end_at_exit(self) -> None:
        if self._open_run:
            self.close("KILLED")


# --------------------------------------------------------------------------------- public API
def check_loggers(cfg: ExperimentConfig) -> None:
    """Raise the UserError of ``build_loggers`` for a missing package, without building anything (for
    the runner to call before it creates the run directory)."""
    for name in _REQUIREMENTS:
        if getattr(cfg.log, name):
            _require(name)


def build_loggers(cfg: ExperimentConfig, run_dir: str | Path) -> list[Callback]:
    """The logger callbacks ``cfg.log`` asks for (empty when none is on) for the run in ``run_dir``;
    a UserError says what to install when a logger's package is missing."""
    log = cfg.log
    check_loggers(cfg)
    out: list[Callback] = []
    if log.tensorboard:
        out.append(CALLBACKS.get("tensorboard")(run_dir, log.histograms_every, log.every_steps > 0))
    if log.mlflow:
        tags = {"cnnlab.dataset": cfg.data.dataset, "cnnlab.model": cfg.model.name}
        out.append(CALLBACKS.get("mlflow")(run_dir, log.mlflow_tracking_uri, log.mlflow_experiment or cfg.name,
                                           tags=tags))
    return out


def log_final(callbacks: list[Callback], metrics: dict[str, Any], run_dir: str | Path) -> None:
    """After ``metrics.json`` is written: each logger among ``callbacks`` logs the final metrics, the
    test (else val) confusion matrix and (MLflow) params and the run's files, then closes. Other
    callbacks are ignored; a logger's failure is a warning, never an exception."""
    for cb in callbacks:
        if isinstance(cb, Logger):
            cb.log_final(metrics, Path(run_dir))


def close_loggers(callbacks: list[Callback], status: str = "FAILED") -> None:
    """End every logger among ``callbacks`` without logging more (after an error or an interrupt:
    ``status`` is FAILED or KILLED). Safe to call more than once and after ``log_final``."""
    for cb in callbacks:
        if isinstance(cb, Logger):
            cb.close(status)
