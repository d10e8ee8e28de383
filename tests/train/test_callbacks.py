"""The epoch display's time estimates: RunEta's arithmetic on a fake clock, early stopping included,
and the epoch line that carries it."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from cnnlab.lifecycle import Stop, StopReason
from cnnlab.train.callbacks import EarlyStopping, Eta, Progress, RunEta, epoch_line


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_epochs(eta: RunEta, clock: FakeClock, n: int, seconds: float, steps: int = 0, after_steps: float = 0.0) -> None:
    """``n`` epochs of ``seconds`` each; with ``steps``, the steps take all but ``after_steps`` of it."""
    for _ in range(n):
        eta.epoch_started()
        if steps:
            for i in range(steps):
                clock.now += (seconds - after_steps) / steps
                eta.step(i + 1, steps)
            clock.now += after_steps
        else:
            clock.now += seconds
        eta.epoch_ended()


def test_between_epochs_the_run_has_the_mean_epoch_time_per_epoch_left():
    clock = FakeClock()
    eta = RunEta(10, clock)
    run_epochs(eta, clock, 3, 2.0)
    assert eta.estimate(done=3) == Eta(epoch_left=0.0, run_left=pytest.approx(14.0))
    run_epochs(eta, clock, 1, 6.0)  # the mean follows: (2 + 2 + 2 + 6) / 4 = 3 s, 6 epochs to go
    assert eta.estimate(done=4).run_left == pytest.approx(18.0)


def test_within_an_epoch_the_steps_left_go_at_this_epochs_rate_plus_the_evaluation_time():
    clock = FakeClock()
    eta = RunEta(5, clock)
    run_epochs(eta, clock, 2, 2.0, steps=10, after_steps=0.5)  # 1.5 s of steps + 0.5 s of evaluation
    eta.epoch_started()
    for i in range(4):  # this epoch is slower: 0.3 s a step
        clock.now += 0.3
        eta.step(i + 1, 10)
    est = eta.estimate(done=2)
    assert est.epoch_left == pytest.approx(6 * 0.3 + 0.5)  # 6 steps left + the evaluation
    assert est.run_left == pytest.approx(2.3 + 2 * 2.0)  # then epochs 4 and 5 at the mean 2 s


def test_the_first_epoch_projects_from_its_own_steps_and_nothing_is_known_before_a_step():
    clock = FakeClock()
    eta = RunEta(4, clock)
    eta.epoch_started()
    assert eta.estimate(done=0) == Eta(None, None) and eta.estimate(done=0).text() is None
    clock.now += 1.0
    eta.step(5, 20)  # 0.2 s a step, 20 steps an epoch: 4 s
    est = eta.estimate(done=0)
    assert est.epoch_left == pytest.approx(3.0) and est.run_left == pytest.approx(3.0 + 3 * 4.0)


def test_early_stopping_gives_the_epoch_it_would_end_after_and_the_time_to_it():
    """10 planned, 3 done at 2 s: 14 s left. Patience 3, 1 epoch since the best: without a new best
    the run ends after epoch 5, 4 s from now."""
    clock = FakeClock()
    eta = RunEta(10, clock)
    run_epochs(eta, clock, 3, 2.0)
    est = eta.estimate(done=3, stop_after=3 - 1)
    assert (est.run_left, est.early_epoch, est.early_left) == (pytest.approx(14.0), 5, pytest.approx(4.0))
    assert est.text() == "0:14 (0:04 if early stopping ends it after epoch 5)"
    # Within epoch 4 (half its steps done): epoch 5 is the only whole epoch after it.
    eta.epoch_started()
    clock.now += 1.0
    eta.step(5, 10)
    est = eta.estimate(done=3, stop_after=2)
    assert est.epoch_left == pytest.approx(1.0) and est.early_left == pytest.approx(1.0 + 2.0)
    # Patience reaching past the planned end says nothing more than the plan.
    assert eta.estimate(done=3, stop_after=8).early_epoch is None
    assert eta.estimate(done=3, stop_after=None).early_epoch is None


def test_epochs_to_stop_counts_down_with_the_epochs_without_a_new_best():
    es = EarlyStopping("val_loss", "min", patience=3)
    trainer = SimpleNamespace(stop=None, request_stop=lambda stop: setattr(trainer, "stop", stop))
    assert es.epochs_to_stop() == 3
    for epoch, loss, left in ((1, 1.0, 3), (2, 1.1, 2), (3, 1.2, 1), (4, 0.5, 3)):
        es.on_epoch_end(trainer, {"epoch": epoch, "val_loss": loss})
        assert es.epochs_to_stop() == left
    assert EarlyStopping("val_loss", "min", patience=0).epochs_to_stop() is None  # off


def test_the_epoch_line_ends_with_the_runs_eta_and_keeps_its_format():
    logs = {"epoch": 3, "train_loss": 0.5, "train_acc": 0.8, "val_loss": None, "val_acc": None, "lr": 1e-3,
            "images_per_s": 1234.0, "seconds": 2.0}
    plain = "epoch   3/10  train loss 0.5000 acc 0.8000 | val loss - acc - | lr 1.00e-03 | 1,234 img/s | 2.0s"
    assert epoch_line(logs, 10) == plain
    assert epoch_line(logs, 10, "0:14") == plain + " | eta 0:14"


def test_progress_prints_the_eta_from_the_early_stopping_callback_it_was_given():
    """Plain lines (not a terminal): each epoch line but the last carries the run's time left."""
    clock, out = FakeClock(), io.StringIO()
    es = EarlyStopping("val_loss", "min", patience=2)
    progress = Progress(4, stream=out, early_stopping=es, clock=clock)
    trainer = SimpleNamespace(epoch=0, stop=None, request_stop=lambda stop: setattr(trainer, "stop", stop))
    for loss in (1.0, 0.9, 0.95, 0.97):
        progress.on_epoch_start(trainer)
        clock.now += 3.0
        trainer.epoch += 1
        logs = {"epoch": trainer.epoch, "train_loss": loss, "train_acc": 0.5, "val_loss": loss, "val_acc": 0.5,
                "lr": 0.1, "images_per_s": 10.0, "seconds": 3.0}
        es.on_epoch_end(trainer, logs)  # before Progress, as in the runner's callback list
        progress.on_epoch_end(trainer, logs)
        if trainer.stop is not None:
            break
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("| eta 0:09 (0:06 if early stopping ends it after epoch 3)")
    assert lines[1].endswith("| eta 0:06")  # ending after epoch 4 is the plan itself
    assert lines[2].endswith("| eta 0:03")  # one epoch without a new best: early stopping ends it after epoch 4
    assert trainer.stop is not None and trainer.stop.reason is StopReason.EARLY_STOPPING
    assert len(lines) == 4 and "eta" not in lines[3]


def test_no_eta_after_the_epoch_a_stop_was_requested_in():
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(10, stream=out, clock=clock)
    trainer = SimpleNamespace(epoch=0, stop=None)
    logs = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 0.1,
            "images_per_s": 10.0, "seconds": 1.0}
    progress.on_epoch_start(trainer)
    clock.now += 1.0
    trainer.epoch, trainer.stop = 1, Stop(StopReason.CALLBACK)
    progress.on_epoch_end(trainer, logs)
    assert "eta" not in out.getvalue()
