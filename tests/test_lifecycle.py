"""The life of a run: every way out of a run whose directory exists is recorded in run.json, and
`cnnlab resume` continues (or refuses, or extends) each kind of run as documented.

The slow tests signal or kill a real `python -m cnnlab` process; the others drive the Python API."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cnnlab
from cnnlab import rundir as rd
from cnnlab.cli import main
from cnnlab.errors import UserError
from cnnlab.lifecycle import (Interrupted, Liveness, RunLock, RunStatus, StopReason, liveness, read_status,
                              shown_status, stop_reason_of, write_status)
from cnnlab.train import Callback, load_checkpoint

# Deterministic and small: a few hundredths of a second per epoch on 2 CPU cores, so a signal sent
# after epoch 2 lands in the middle of a later epoch's training.
EXP = """name = "life"
seed = 5
deterministic = true
[data]
dataset = "digits"
[data.augment]
crop_padding = 1
[model]
name = "cnn"
channels = [8, 16]
hidden = [32]
dropout = 0.2
[train]
epochs = 40
batch_size = 32
lr = 2e-3
device = "cpu"
threads = 1
scheduler = "cosine"
[train.early_stopping]
patience = 0
"""

SMALL = {"name": "small", "seed": 1, "deterministic": True,
         "data": {"dataset": "digits", "per_class": 40},
         "model": {"name": "cnn", "channels": [4, 8], "hidden": [16]},
         "train": {"epochs": 3, "batch_size": 32, "lr": 3e-3, "device": "cpu", "scheduler": {"name": "step", "step_size": 2, "gamma": 0.5},
                   "early_stopping": {"patience": 0, "restore_best": False}}}


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout)


def _start(exp: Path, runs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnlab", "run", str(exp), "--runs-dir", str(runs), "-q"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(runs: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> Path:
    """The run directory once its history holds ``n`` epochs (the process still running)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        dirs = list((runs / "life").glob("*")) if (runs / "life").exists() else []
        if dirs and len(rd.read_history(dirs[0])) >= n:
            return dirs[0]
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"the run never reached epoch {n}")


def _files(d: Path) -> dict[str, str]:
    """Every file under ``d`` with a hash of its bytes."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("exp") / "life.toml"
    p.write_text(EXP)
    return p


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory) -> Path:
    """The same experiment run without interruption."""
    runs = tmp_path_factory.mktemp("ref")
    r = _cli("run", str(experiment), "--runs-dir", str(runs), "-q")
    assert r.returncode == 0, r.stderr
    return next((runs / "life").iterdir())


# ------------------------------------------------------------------------------- signals
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_mid_epoch_records_interrupted_and_resume_ends_like_an_uninterrupted_run(
        sig, code, experiment, reference, tmp_path):
    proc = _start(experiment, tmp_path)
    run_dir = _wait_for_epochs(tmp_path, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"cnnlab resume {run_dir}" in err and signal.Signals(sig).name in err
    st = read_status(run_dir)
    assert st["status"] == "interrupted" and st["signal"] == signal.Signals(sig).name
    assert stop_reason_of(st) is StopReason.INTERRUPTED
    assert st["epoch"] == len(rd.read_history(run_dir)) >= 3
    assert not (run_dir / rd.METRICS).exists()

    res = _cli("resume", str(run_dir), "-q")
    assert res.returncode == 0, res.stderr
    assert read_status(run_dir)["status"] == "completed"
    assert rd.read_json(run_dir / rd.METRICS) == rd.read_json(reference / rd.METRICS)
    assert [h["train_loss"] for h in rd.read_history(run_dir)] == [h["train_loss"] for h in rd.read_history(reference)]


@pytest.mark.slow
def test_sigkill_leaves_a_stale_run_that_is_listed_as_such_and_resumes(experiment, reference, tmp_path):
    proc = _start(experiment, tmp_path)
    run_dir = _wait_for_epochs(tmp_path, 2, proc)
    proc.send_signal(signal.SIGSTOP)  # frozen mid-run, still holding its lock, while we look
    assert liveness(run_dir) is Liveness.LIVE
    live = _cli("resume", str(run_dir), "-q")  # nobody else may take a live run over
    assert live.returncode == 2 and "being trained right now" in live.stderr and "Traceback" not in live.stderr
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = read_status(run_dir)
    assert st["status"] == "running" and st["pid"] == proc.pid  # nothing could record the kill ...
    assert liveness(run_dir) is Liveness.STALE  # ... but the lock says the process is gone
    listed = _cli("runs", "--runs-dir", str(tmp_path))
    assert listed.returncode == 0 and "stale" in listed.stdout, listed.stdout

    res = _cli("resume", str(run_dir), "-q")
    assert res.returncode == 0, res.stderr
    assert read_status(run_dir)["status"] == "completed"
    assert rd.read_json(run_dir / rd.METRICS) == rd.read_json(reference / rd.METRICS)


# ------------------------------------------------------------------------------- disk full
DISK_FULL = """
import errno, sys
from cnnlab.train import checkpoints
real, calls = checkpoints.atomic_write_bytes, []
def full(path, data):
    calls.append(path)
    if len(calls) > 2:  # epoch 1's last.pt and best.pt fit; then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return real(path, data)
checkpoints.atomic_write_bytes = full
from cnnlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_full_disk_fails_the_run_with_its_reason_and_no_traceback(experiment, tmp_path):
    r = subprocess.run([sys.executable, "-c", DISK_FULL, "run", str(experiment), "--runs-dir", str(tmp_path), "-q",
                        "--set", "train.epochs=5"], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "disk is full" in r.stderr and "cnnlab resume" in r.stderr
    run_dir = next((tmp_path / "life").iterdir())
    st = read_status(run_dir)
    assert st["status"] == "failed" and st["error"] == "disk_full" and "No space left" in st["message"]
    # Epoch 2 trained, but its checkpoint could not be written: the record says what last.pt holds.
    assert st["epoch"] == 1 == load_checkpoint(run_dir / rd.CHECKPOINTS / rd.LAST)["epoch"]
    # With space again, the run continues from its last checkpoint.
    res = _cli("resume", str(run_dir), "-q")
    assert res.returncode == 0, res.stderr
    assert read_status(run_dir)["status"] == "completed" and len(rd.read_history(run_dir)) == 5


# ------------------------------------------------------------------ no exit 2 once the directory exists
LATE_CHECKS = {
    "transfer source that does not exist": {"transfer": {"init_from": "runs/nowhere/20260101-000000"}},
    "crop padding too large for a mirrored border": {"data": {"augment": {"crop_padding": 9, "padding_mode": "reflect"}}},
    "plateau on val_loss without a validation split": {"data": {"val_fraction": 0.0},
                                                        "train": {"scheduler": {"name": "plateau", "monitor": "val_loss"}}},
    "conv blocks too deep for the images": {"model": {"name": "cnn", "channels": [4, 4, 4, 4, 4], "padding": "valid"}},
    "one class weight too few": {"train": {"class_weights": [1.0] * 9}},
}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


@pytest.mark.parametrize("case", list(LATE_CHECKS))
def test_bad_input_is_refused_before_the_run_directory_exists(case, tmp_path):
    with pytest.raises(UserError):
        cnnlab.run(_merge(SMALL, LATE_CHECKS[case]), runs_dir=tmp_path, quiet=True)
    assert not (tmp_path / "small").exists() or not any((tmp_path / "small").iterdir())


def test_a_runs_directory_that_is_a_file_is_bad_input(tmp_path, capsys):
    (tmp_path / "runs").write_text("not a folder")
    exp = tmp_path / "e.toml"
    exp.write_text('name = "x"\n[data]\ndataset = "digits"\nper_class = 20\n[train]\nepochs = 1\n')
    assert main(["run", str(exp), "--runs-dir", str(tmp_path / "runs"), "-q"]) == 2
    assert "--runs-dir" in capsys.readouterr().err


class LateUserError(Callback):
    def on_fit_start(self, trainer):
        raise UserError("a check that should have run earlier")


def test_a_user_error_after_the_directory_exists_is_still_recorded(tmp_path):
    with pytest.raises(UserError):
        cnnlab.run(SMALL, runs_dir=tmp_path, quiet=True, extra_callbacks=[LateUserError()])
    st = read_status(next((tmp_path / "small").iterdir()))
    assert st["status"] == "failed" and st["error"] == "exception" and "should have run earlier" in st["message"]


# ------------------------------------------------------------------------------ resume
def test_resume_of_a_completed_run_changes_nothing(tmp_path, capsys):
    run = cnnlab.run(SMALL, runs_dir=tmp_path, quiet=True)
    before = _files(run.dir)
    assert main(["resume", str(run.dir)]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and f"cnnlab resume {run.dir} --epochs N" in out
    assert _files(run.dir) == before


def test_resume_epochs_extends_a_completed_run_like_a_run_planned_that_long(tmp_path):
    short = cnnlab.run(SMALL, runs_dir=tmp_path / "a", quiet=True)
    long = cnnlab.run(_merge(SMALL, {"train": {"epochs": 5}}), runs_dir=tmp_path / "b", quiet=True)
    cnnlab.resume(short.dir, quiet=True, epochs=5)
    hist, ref = rd.read_history(short.dir), rd.read_history(long.dir)
    for key in ("train_loss", "val_loss", "lr"):
        assert [h[key] for h in hist] == [h[key] for h in ref], key
    assert short.metrics == long.metrics
    st = read_status(short.dir)
    assert st["status"] == "completed" and st["epoch"] == 5
    assert [(e["from_epoch"], e["to_epochs"]) for e in st["extensions"]] == [(3, 5)]
    assert short.config.train.epochs == 5  # config.toml says how far the run now goes
    with pytest.raises(UserError, match="already trained 5 epochs"):
        cnnlab.resume(short.dir, quiet=True, epochs=4)


def test_an_extended_schedule_follows_the_longer_plan(tmp_path):
    """cosine over 2 epochs, extended to 4: epochs 3 and 4 take the lr of a 4-epoch cosine."""
    cos = {"train": {"scheduler": "cosine", "epochs": 2}}
    short = cnnlab.run(_merge(SMALL, cos), runs_dir=tmp_path / "a", quiet=True)
    plan = cnnlab.run(_merge(SMALL, _merge(cos, {"train": {"epochs": 4}})), runs_dir=tmp_path / "b", quiet=True)
    cnnlab.resume(short.dir, quiet=True, epochs=4)
    assert [h["lr"] for h in short.history][2:] == [h["lr"] for h in plan.history][2:]


def test_a_run_stopped_early_stays_stopped_unless_extended(tmp_path, capsys):
    cfg = _merge(SMALL, {"train": {"epochs": 30, "lr": 0.2, "optimizer": "sgd",
                                   "early_stopping": {"patience": 2, "monitor": "val_acc", "mode": "max", "min_delta": 1.0}}})
    run = cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    assert len(run.history) == 3 and stop_reason_of(run.status) is StopReason.EARLY_STOPPING
    assert main(["resume", str(run.dir)]) == 0 and "nothing to train" in capsys.readouterr().out
    assert len(run.history) == 3
    cnnlab.resume(run.dir, quiet=True, epochs=30)  # trains on; the patience counts afresh
    assert len(run.history) == 5 and stop_reason_of(run.status) is StopReason.EARLY_STOPPING


def test_resume_refuses_a_live_run_and_removes_stray_temp_files(tmp_path):
    run = cnnlab.run(SMALL, runs_dir=tmp_path, quiet=True)
    write_status(run.dir, RunStatus.RUNNING)  # as a kill leaves it
    stray = run.dir / rd.CHECKPOINTS / ".last.pt.0a1b2c3d.tmp"
    stray.write_bytes(b"half a checkpoint")
    lock = RunLock().acquire(run.dir)  # another process trains it
    try:
        assert liveness(run.dir) is Liveness.LIVE
        with pytest.raises(UserError, match="being trained right now"):
            cnnlab.resume(run.dir, quiet=True)
        # Recorded as interrupted (so the check of run.json lets it through): the lock itself refuses.
        write_status(run.dir, RunStatus.INTERRUPTED)
        with pytest.raises(UserError, match="being trained right now"):
            cnnlab.resume(run.dir, quiet=True)
        write_status(run.dir, RunStatus.RUNNING)
    finally:
        lock.release()
    assert liveness(run.dir) is Liveness.STALE and shown_status(run.dir, read_status(run.dir)) == "stale"
    for pid in (-1, 0):  # process groups for os.kill, never a training process: stale, not alive forever
        write_status(run.dir, RunStatus.RUNNING, pid=pid)
        (run.dir / rd.LOCK).unlink(missing_ok=True)
        assert liveness(run.dir) is Liveness.STALE
    cnnlab.resume(run.dir, quiet=True)
    assert not stray.exists() and read_status(run.dir)["status"] == "completed"


def test_stop_reasons_of_older_run_files_still_read():
    assert stop_reason_of({"stop_reason": "early stopping: val_loss has not improved"}) is StopReason.EARLY_STOPPING
    assert stop_reason_of({"stop_reason": "pruned by the sweep at epoch 3"}) is StopReason.PRUNED
    assert stop_reason_of({"stop_reason": "max_epochs"}) is StopReason.MAX_EPOCHS
    assert stop_reason_of({"stop_reason": "something else"}) is None and stop_reason_of({}) is None


def test_disk_full_is_recognised_through_wrapping_errors():
    from cnnlab.lifecycle import is_disk_full

    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("torch.save failed") from e
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_a_signal_after_the_run_is_recorded_changes_nothing_recorded(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the completed run draws its report: the run stays completed."""
    def interrupted_report(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("cnnlab.runner.report_after_run", interrupted_report)
    with pytest.raises(Interrupted, match="recorded as completed"):
        cnnlab.run(SMALL, runs_dir=tmp_path, quiet=True)
    run_dir = next((tmp_path / "small").iterdir())
    st = read_status(run_dir)
    assert st["status"] == "completed" and stop_reason_of(st) is StopReason.MAX_EPOCHS


@pytest.mark.slow
def test_signals_a_process_was_told_to_ignore_stay_ignored(experiment, tmp_path):
    """nohup: SIGHUP is ignored before cnnlab starts, and a closed terminal must not stop the run."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "run", str(experiment), "--runs-dir", str(tmp_path), "-q",
                             "--set", "train.epochs=8"], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    run_dir = _wait_for_epochs(tmp_path, 2, proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert read_status(run_dir)["status"] == "completed"


@pytest.mark.parametrize("scheduler", [
    {"name": "onecycle"},
    {"name": "cosine", "interval": "step"},
    {"name": "linear", "warmup_epochs": 1},
    {"name": "plateau", "patience": 0, "factor": 0.5},
], ids=["onecycle", "cosine-per-step", "linear-with-warmup", "plateau"])
def test_extended_schedules_follow_the_longer_plan(tmp_path, scheduler):
    """Whatever the schedule, the epochs after the extension take the learning rates of a run planned
    that long (plateau: its state carries on, the planned run's lrs are the same up to there)."""
    base = _merge(SMALL, {"train": {"epochs": 2}})
    base["train"]["scheduler"] = scheduler
    short = cnnlab.run(base, runs_dir=tmp_path / "a", quiet=True)
    plan = cnnlab.run(_merge(base, {"train": {"epochs": 4}}), runs_dir=tmp_path / "b", quiet=True)
    cnnlab.resume(short.dir, quiet=True, epochs=4)
    got, want = [h["lr"] for h in short.history], [h["lr"] for h in plan.history]
    assert len(got) == 4
    assert got[2:] == pytest.approx(want[2:], rel=1e-9) if scheduler["name"] != "plateau" else got[:2] == want[:2]


def test_the_run_and_resume_modules_import_without_fcntl():
    """Windows has no fcntl: the run lock is skipped there, and only `cnnlab sweep` may need more."""
    code = ("import sys; sys.modules['fcntl'] = None; import cnnlab.cli.training, cnnlab.cli.inspection, "
            "cnnlab.cli.listing, cnnlab.sweep; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
