"""Callbacks: everything optional in training lives here, behind five hooks.

Hooks: ``on_fit_start(trainer)``, ``on_epoch_start(trainer)``, ``on_train_batch_end(trainer,
step, steps)``, ``on_epoch_end(trainer, logs)``, ``on_fit_end(trainer)``. In
``on_train_batch_end``, ``trainer.last_batch`` holds that batch's loss and correct count as device
tensors (reading them is a host sync: do it only on the steps that need it). A callback with state
implements ``state_dict`` / ``load_state_dict``; the trainer stores those in every checkpoint, so a
resumed run continues exactly. The trainer itself never mentions early stopping: the callback
calls ``trainer.request_stop`` with a :class:`~cnnlab.lifecycle.Stop`.

Every callback class is registered in ``CALLBACKS``: those of this module here, the training
statistics in :mod:`cnnlab.train.stats`, the unfreeze schedule in :mod:`cnnlab.train.transfer` and the
loggers in :mod:`cnnlab.report.loggers`.
"""

from __future__ import annotations

import copy
import json
import math
import operator
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from .._progress import fmt_duration, is_terminal
from ..errors import UserError
from ..lifecycle import Stop, StopReason
from ..registry import Registry
from ..rundir import (BEST, LAST, STEPS, atomic_write_text, damaged, epoch_checkpoint, parse_json, text_file,
                      write_history)
from .checkpoints import save_checkpoint

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from .trainer import Trainer

CALLBACKS: Registry = Registry("callback")

# The comparison that counts as an improvement, by mode (Lightning's lookup-dict pattern).
_BETTER = {"min": operator.lt, "max": operator.gt}


class Callback:
    """Base class with no-op hooks. ``holds_weights``: the callback's state includes model weights
    that restoring the best epoch must load too (the EMA average)."""

    holds_weights: bool = False

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer") -> None: ...
    def on_train_batch_end(self, trainer: "Trainer", step: int, steps: int) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Monitor:
    """Tracks the best value of one logged metric; ``min_delta`` is the smallest change that counts."""

    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        if mode not in _BETTER:
            raise UserError(f"mode {mode!r} is not valid; use one of {', '.join(_BETTER)}.")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best: float | None = None
        self.best_epoch = 0

    def update(self, logs: dict[str, Any]) -> bool:
        """True when this epoch's value improves on the best so far (and records it)."""
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(value):
            return False
        delta = -self.min_delta if self.mode == "min" else self.min_delta
        if self.best is None or _BETTER[self.mode](value, self.best + delta):
            self.best, self.best_epoch = float(value), int(logs["epoch"])
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


@CALLBACKS.register("early_stopping")
class EarlyStopping(Callback):
    """Stop when the monitored metric has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0):
        self.tracker = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0
        self.stopped_epoch = 0

    def epochs_to_stop(self) -> int | None:
        """The epochs from the last completed one to the end of the one after which this callback
        stops the run if the monitored metric does not improve again (at least 1); None when it is
        off (``patience = 0``)."""
        return max(1, self.patience - self.wait) if self.patience else None

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.stopped_epoch and trainer.stop is None:
            # A run this callback had stopped trains on: the user extended it (cnnlab resume --epochs N).
            # Count afresh, so it stops again after `patience` epochs without a new best.
            self.wait, self.stopped_epoch = 0, 0

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if self.tracker.update(logs):
            self.wait = 0
            return
        self.wait += 1
        if self.patience and self.wait >= self.patience:
            self.stopped_epoch = int(logs["epoch"])
            # No best yet when every value so far was missing or not finite (a NaN from epoch 1).
            best = "none yet" if self.tracker.best is None else \
                f"{self.tracker.best:.4g} at epoch {self.tracker.best_epoch}"
            trainer.request_stop(Stop(StopReason.EARLY_STOPPING, f"early stopping: {self.tracker.monitor} has not "
                                      f"improved for {self.patience} epochs (best {best})"))

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]


@CALLBACKS.register("checkpoint")
class ModelCheckpoint(Callback):
    """Writes ``best.pt`` when the monitored metric improves, ``last.pt`` every epoch and
    ``epoch-NNNN.pt`` every ``every`` epochs, each atomically and each a full trainer state."""

    def __init__(self, directory, monitor: str, mode: str, every: int = 0, min_delta: float = 0.0):
        self.dir = directory
        self.tracker = Monitor(monitor, mode, min_delta)
        self.every = every

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if trainer.stop is not None and trainer.stop.reason is StopReason.NON_FINITE_LOSS:
            return  # never overwrite a good checkpoint with NaN weights
        improved = self.tracker.update(logs)  # update first: the saved state includes this epoch
        state = trainer.state_dict()
        save_checkpoint(self.dir / LAST, state)
        if improved:
            save_checkpoint(self.dir / BEST, state)
        if self.every and trainer.epoch % self.every == 0:
            save_checkpoint(self.dir / epoch_checkpoint(trainer.epoch), state)

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])


# How the decay grows over training, as a function of (decay, fraction of all steps done in [0, 1]).
# cubic is airbench's lookahead schedule: a small decay early, when the weights move fast.
EMA_RAMPS: dict[str, Callable[[float, float], float]] = {
    "none": lambda decay, frac: decay,
    "cubic": lambda decay, frac: decay * frac ** 3,
}


@CALLBACKS.register("ema")
class WeightEMA(Callback):
    """An exponential moving average of the model's floating-point state (weights and BatchNorm
    running statistics), updated every ``every`` optimizer steps as
    ``avg = decay * avg + (1 - decay) * current`` (integer buffers such as BatchNorm's step counter
    are copied). Evaluation uses the average: the callback sets ``trainer.eval_module`` to a copy of
    the model that holds it. ``lookahead`` also copies the average back into the trained model at
    each update (airbench's Lookahead). The average is part of ``state_dict``, so checkpoints hold
    both weight sets and a resumed run continues exactly."""

    holds_weights = True  # trainer.load_weights (restore the best epoch) loads this state too

    def __init__(self, model: torch.nn.Module, decay: float, every: int = 1, mode: str = "ema",
                 ramp: str = "none"):
        if mode not in ("ema", "lookahead"):
            raise UserError(f"train.ema.mode = {mode!r}: use off, ema or lookahead.")
        if ramp not in EMA_RAMPS:
            raise UserError(f"train.ema.ramp = {ramp!r}: use one of {', '.join(EMA_RAMPS)}.")
        self.model, self.decay, self.every, self.mode, self.ramp = model, decay, every, mode, ramp
        self.average = copy.deepcopy(model).eval()  # same layout (and memory format) as the model
        for p in self.average.parameters():
            p.requires_grad_(False)
        self.steps = 0  # optimizer steps seen since the start of the run (not reset by resume)
        self.total_steps = 1  # of the whole run, set in on_fit_start (the ramp's denominator)
        self._pair_tensors()

    def _pair_tensors(self) -> None:
        # state_dict() tensors share storage with the modules; load_state_dict copies in place, so
        # these lists stay valid for the whole run. avg (float), cur (float), and integer pairs.
        avg, cur = self.average.state_dict(keep_vars=False), self.model.state_dict(keep_vars=False)
        floats = [k for k, v in cur.items() if v.is_floating_point()]
        self._avg_f, self._cur_f = [avg[k] for k in floats], [cur[k] for k in floats]
        self._ints = [(avg[k], cur[k]) for k, v in cur.items() if not v.is_floating_point()]

    def on_fit_start(self, trainer: "Trainer") -> None:
        trainer.eval_module = self.average
        self.total_steps = max(1, trainer.steps_per_epoch * trainer.t.epochs)

    @torch.no_grad()
    def on_train_batch_end(self, trainer: "Trainer", step: int, steps: int) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        decay = EMA_RAMPS[self.ramp](self.decay, min(1.0, self.steps / self.total_steps))
        torch._foreach_lerp_(self._avg_f, self._cur_f, 1.0 - decay)  # avg += (1 - decay) * (cur - avg)
        for a, c in self._ints:
            a.copy_(c)
        if self.mode == "lookahead":
            torch._foreach_copy_(self._cur_f, self._avg_f)

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.average.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["weights"])
        self.steps = int(state["steps"])


def eval_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The weights a checkpoint's run evaluated with: the EMA average when the run kept one, else
    the model's own weights (``checkpoint["model"]``)."""
    ema = checkpoint.get("callbacks", {}).get(WeightEMA.__name__)
    return ema["weights"] if ema else checkpoint["model"]


@CALLBACKS.register("history")
class HistoryWriter(Callback):
    """Rewrites ``history.jsonl`` after each epoch (after the checkpoint, so that a kill between the
    two loses nothing: resume rewrites the file from the checkpoint's own copy)."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        write_history(self.run_dir, trainer.history)


@CALLBACKS.register("steps")
class StepWriter(Callback):
    """``[log] every_steps``: appends one line to ``steps.jsonl`` every ``every`` optimizer steps,
    ``{"step": global optimizer step (1-based, across epochs), "epoch": 1-based, "loss": the batch's
    mean training loss (null when not finite), "acc": the batch's accuracy (argmax vs label)}``.

    The other steps cost nothing: the trainer keeps the batch's loss and correct count on the device
    (``trainer.last_batch``) and only a logged step reads them, in one host sync. Each line is one
    append of a whole line. The global step is the callback's state, so a resumed run continues the
    count; on starting, the lines past it (written after the checkpoint by a run killed later) are
    dropped by an atomic rewrite, so no step is missing or written twice. With several processes
    (this callback runs in rank 0 only) the values are rank 0's share of the global batch."""

    def __init__(self, run_dir: str | Path, every: int):
        if every < 1:
            raise UserError(f"log.every_steps = {every}: give a number of steps of at least 1 (0 switches it off).")
        self.path = Path(run_dir) / STEPS
        self.every = every
        self.step: int | None = None  # optimizer steps taken in the run so far; None until known

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.step is None:  # a new run, or a checkpoint written without step logging
            self.step = trainer.epoch * trainer.steps_per_epoch
        drop_steps_after(self.path, self.step)

    def on_train_batch_end(self, trainer: "Trainer", step: int, steps: int) -> None:
        self.step += 1
        if self.step % self.every or trainer.last_batch is None:
            return
        b = trainer.last_batch
        loss, correct = torch.stack([b.loss, b.correct.to(b.loss.dtype)]).tolist()  # the one host sync
        row = {"step": self.step, "epoch": trainer.epoch + 1, "loss": loss if math.isfinite(loss) else None,
               "acc": correct / max(1, b.size)}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")  # one write of a whole line

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = None if state.get("step") is None else int(state["step"])


def drop_steps_after(path: Path, last_step: int) -> None:
    """Rewrite ``steps.jsonl`` at ``path`` atomically without its lines past optimizer step
    ``last_step`` (a resumed run trains those steps again) and without a last line cut short by a
    kill during its append. A missing file stays missing; one that is not what cnnlab writes is a
    UserError naming it."""
    if not path.exists():
        return
    text = text_file(path)
    whole = text[: text.rfind("\n") + 1]  # up to the last complete line
    keep = []
    for i, line in enumerate(whole.splitlines(), 1):
        if not line.strip():
            continue
        row = parse_json(line, path, f"line {i}: ")
        step = row.get("step") if isinstance(row, dict) else None
        if not isinstance(step, int) or isinstance(step, bool):
            raise damaged(path, f"line {i} is not an object with an integer step")
        if step <= last_step:
            keep.append(line + "\n")
    if "".join(keep) != text:
        atomic_write_text(path, "".join(keep))


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def epoch_line(logs: dict[str, Any], epochs: int, eta: str | None = None) -> str:
    """One summary line for an epoch; ``eta``: the run's time left (:meth:`Eta.text`), appended
    as ``| eta ...`` when given."""
    return (
        f"epoch {logs['epoch']:>3}/{epochs}  train loss {_fmt(logs['train_loss'], '.4f')} "
        f"acc {_fmt(logs['train_acc'], '.4f')} | val loss {_fmt(logs.get('val_loss'), '.4f')} "
        f"acc {_fmt(logs.get('val_acc'), '.4f')} | lr {logs['lr']:.2e} | "
        f"{logs['images_per_s']:,.0f} img/s | {logs['seconds']:.1f}s"
        + (f" | eta {eta}" if eta else "")
    )


@dataclass(frozen=True)
class Eta:
    """What :meth:`RunEta.estimate` says, in seconds (None: nothing measured yet)."""

    epoch_left: float | None  # to the end of the current epoch's training steps (0 between epochs)
    run_left: float | None  # to the end of the planned last epoch
    early_epoch: int | None = None  # the epoch early stopping ends the run after, if the metric does not improve
    early_left: float | None = None  # to the end of early_epoch

    def text(self, after_run: str = "") -> str | None:
        """The run's time left: ``1:23`` or ``1:23 (0:20 if early stopping ends it after epoch 5)``,
        ``after_run`` following the first time; ASCII (log files). None before anything is measured."""
        if self.run_left is None:
            return None
        out = fmt_duration(self.run_left) + after_run
        if self.early_epoch is not None and self.early_left is not None:
            out += f" ({fmt_duration(self.early_left)} if early stopping ends it after epoch {self.early_epoch})"
        return out


class RunEta:
    """Time left in the epoch and in the run, from the times measured with ``clock`` (seconds;
    tests give a fake one). ``epochs``: the planned number of epochs.

    The caller reports :meth:`epoch_started`, :meth:`step` (steps done of the epoch's steps) and
    :meth:`epoch_ended`; :meth:`estimate` does the arithmetic:

    - an epoch's duration runs from ``epoch_started`` to ``epoch_ended`` (its steps, evaluation,
      checkpoints: all of it). The time per epoch ``T`` is the mean duration of the epochs measured
      so far (by this object: a resumed run starts measuring afresh); before any epoch has ended it
      is the current epoch's steps at their rate so far, and unknown before the first step;
    - the current epoch has left its remaining steps at this epoch's rate so far, plus the mean
      time the ended epochs spent outside their steps (evaluation, checkpoints); between epochs,
      nothing;
    - to the end of epoch ``K`` (``K`` > the ``done`` epochs): the current epoch's time left plus
      ``T`` for each epoch after it, up to ``K``: between epochs ``(K - done) * T``;
    - early stopping (``stop_after``, from :meth:`EarlyStopping.epochs_to_stop`: patience minus the
      epochs since the best) ends the run after epoch ``done + stop_after`` unless the metric
      improves first. When that is before the planned end, the estimate gives that epoch and the
      time to it as well: the run takes between that and ``run_left``.

    Example: 10 epochs planned, 3 ended at 2 s each: 14 s left; with patience 3 and 1 epoch since
    the best: early stopping would end it after epoch 5, 4 s from now.
    """

    def __init__(self, epochs: int, clock: Callable[[], float] = time.perf_counter):
        self.epochs, self.clock = epochs, clock
        self.durations: list[float] = []  # seconds of each ended epoch
        self.outside: list[float] = []  # seconds each ended epoch spent after its last step
        self._start: float | None = None  # when the current epoch started; None between epochs
        self._steps = (0, 0, 0.0)  # (steps done, steps of the epoch, when the last one ended)

    def epoch_started(self) -> None:
        self._start, self._steps = self.clock(), (0, 0, 0.0)

    def step(self, done: int, steps: int) -> None:
        """``done`` of the epoch's ``steps`` optimizer steps have ended."""
        self._steps = (done, steps, self.clock())

    def epoch_ended(self) -> None:
        if self._start is None:
            return
        now = self.clock()
        self.durations.append(now - self._start)
        done, _, last = self._steps
        self.outside.append(now - last if done else 0.0)
        self._start = None

    def estimate(self, done: int, stop_after: int | None = None) -> Eta:
        """The estimate after ``done`` completed epochs (see the class docstring); ``stop_after``:
        the early-stopping callback's ``epochs_to_stop()``, None when it cannot end the run."""
        in_epoch = self._start is not None
        current, per_epoch = 0.0, None
        if self.durations:
            per_epoch = sum(self.durations) / len(self.durations)
        if in_epoch:
            steps_done, steps, last = self._steps
            if steps_done:
                rate = (last - self._start) / steps_done  # seconds per step in this epoch
                overhead = sum(self.outside) / len(self.outside) if self.outside else 0.0
                current = (steps - steps_done) * rate + overhead
                per_epoch = per_epoch if per_epoch is not None else steps * rate
            elif per_epoch is not None:
                current = max(0.0, per_epoch - (self.clock() - self._start))
        if per_epoch is None:
            return Eta(None, None)

        def left(last_epoch: int) -> float:
            after = last_epoch - done - (1 if in_epoch else 0)  # whole epochs after the current one
            return current + max(0, after) * per_epoch

        run_left = left(self.epochs)
        early = done + stop_after if stop_after is not None else None
        if early is None or early >= self.epochs:
            return Eta(current, run_left)
        return Eta(current, run_left, early, left(early))


@CALLBACKS.register("progress")
class Progress(Callback):
    """A rich progress bar per epoch on a terminal (loss, accuracy, lr, images/s, the epoch's and
    the run's time left); one summary line per epoch otherwise, ending with the run's time left
    (``| eta M:SS``). The running loss is read at most ~20 times per epoch: each read is a device
    sync. ``early_stopping``: the run's early-stopping callback, whose patience can end the run
    before ``epochs`` (the estimate then says when at the earliest). ``clock``: seconds, for
    :class:`RunEta`."""

    def __init__(self, epochs: int, enabled: bool = True, stream=None, early_stopping: EarlyStopping | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.epochs = epochs
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = enabled and is_terminal(self.stream)
        self.early_stopping = early_stopping
        self.eta = RunEta(epochs, clock)
        self._bar = None
        self._task = None

    def _estimate(self, trainer: "Trainer") -> Eta:
        stop_after = self.early_stopping.epochs_to_stop() if self.early_stopping is not None else None
        return self.eta.estimate(trainer.epoch, stop_after)

    def _bar_eta(self, trainer: "Trainer") -> str:
        """The bar's last column: ``0:03 left · run ≈ 1:23 left`` (and when early stopping could end it)."""
        est = self._estimate(trainer)
        run = est.text(" left")
        return "" if run is None else f"{fmt_duration(est.epoch_left or 0.0)} left · run ≈ {run}"

    def on_epoch_start(self, trainer: "Trainer") -> None:
        self.eta.epoch_started()
        if not self.tty:
            return
        from rich.console import Console  # rich only where a terminal draws (it costs start-up time)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn

        self._bar = Bar(TextColumn(f"epoch {trainer.epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                        console=Console(file=self.stream), transient=True)
        self._task = self._bar.add_task("train", total=trainer.steps_per_epoch, info="", eta=self._bar_eta(trainer))
        self._bar.start()

    def on_train_batch_end(self, trainer: "Trainer", step: int, steps: int) -> None:
        if self._bar is None:
            return
        self.eta.step(step + 1, steps)
        every = max(1, steps // 20)
        fields = {}
        if (step + 1) % every == 0 or step + 1 == steps:
            loss, acc = trainer.running_metrics()
            fields["info"] = (f"loss {loss:.4f} acc {acc:.4f} lr {trainer.current_lr():.2e} "
                              f"{trainer.running_rate():,.0f} img/s")
            fields["eta"] = self._bar_eta(trainer)
        self._bar.update(self._task, completed=step + 1, **fields)

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        self.eta.epoch_ended()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.enabled:
            # No estimate for the last epoch, nor for one after which the run stops.
            last = trainer.stop is not None or trainer.epoch >= self.epochs
            eta = None if last else self._estimate(trainer).text()
            print(epoch_line(logs, self.epochs, eta), file=self.stream, flush=True)
