"""Data-parallel training (cnnlab.train.distributed): 2 CPU processes with gloo on digits.

A 2-process run must train the same weights as one process with the same global batch, write
exactly one run directory, and report metrics equal to a single-process evaluation of its
checkpoint; killing one process must make the job exit with an error, never hang; a run resumes
with another number of processes. Every subprocess has a timeout: a hang fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import rundir as rd
from cnnlab.train import load_checkpoint
from cnnlab.lifecycle import RunStatus, read_status, write_status
from cnnlab.train.callbacks import Callback
from cnnlab.train.distributed import World
from cnnlab.errors import UserError
from cnnlab.train.stats import read_stats

pytestmark = pytest.mark.slow  # several processes

# A model without randomness in its forward (no dropout, no BatchNorm) and no augmentation: one
# process and two compute the same updates. batch 100 leaves a short last batch (digits' 1,294
# training images = 12 x 100 + 94), so the loss scaling of uneven shares is tested too.
EXP = """\
name = "{name}"
seed = 3
[data]
dataset = "digits"
test_fraction = 0.2
val_fraction = 0.1
[model]
name = "{model}"
{model_keys}
[train]
epochs = {epochs}
batch_size = 100
optimizer = "adam"
lr = 3e-3
scheduler = "cosine"
device = "cpu"
threads = 1
[diagnostics]
stats_every = 1
"""
MLP = 'hidden_size = 64\nhidden_layers = 2'
CNN = 'channels = [8, 16]\nhidden = [32]\nbatchnorm = false'

# Each test's whole budget: process start-up (importing torch) dominates on a busy 2-core machine.
TIMEOUT = 400


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    # The experiments set train.threads = 1 (torch.set_num_threads) in this process: undo it after.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_exp(tmp_path: Path, name: str, model: str = "mlp", epochs: int = 3) -> Path:
    keys = MLP if model == "mlp" else CNN
    p = tmp_path / f"{name}.toml"
    p.write_text(EXP.format(name=name, model=model, model_keys=keys, epochs=epochs))
    return p


def cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, **kw)


def weights(run_dir: Path, which: str = "last.pt") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / which)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (k, (a[k] - b[k]).abs().max())


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def pair(request, tmp_path_factory):
    """The same experiment trained by 2 processes (`cnnlab run --devices 2`) and by one."""
    tmp = tmp_path_factory.mktemp(f"pair-{request.param}")
    exp = write_exp(tmp, "pair", request.param)
    res = cli(["run", str(exp), "--devices", "2", "--runs-dir", str(tmp / "two"), "-q"])
    assert res.returncode == 0, res.stderr
    one = cnnlab.run(exp, runs_dir=tmp / "one", quiet=True)
    return tmp, next((tmp / "two" / "pair").iterdir()), one.dir


def test_two_processes_train_the_same_weights_as_one(pair):
    _, two, one = pair
    assert_same_weights(weights(two), weights(one))
    h2, h1 = rd.read_history(two), rd.read_history(one)
    assert [h["epoch"] for h in h2] == [1, 2, 3]
    for a, b in zip(h2, h1):  # all-reduced running metrics: the global epoch loss and accuracy
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1e-9)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-9)
    env = rd.read_json(two / "env.json")
    assert env["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert "--devices" in env["command"]  # the user's command, not the worker's


def test_only_rank_zero_writes_one_run_directory(pair):
    tmp, two, _ = pair
    assert [p.name for p in (tmp / "two").iterdir()] == ["pair"]
    assert list((tmp / "two" / "pair").iterdir()) == [two]
    for name in ("config.toml", "env.json", "splits.npz", "history.jsonl", "metrics.json", "stats.jsonl",
                 "diagnostics.json", "checkpoints/best.pt", "checkpoints/last.pt", "predictions/test.npz"):
        assert (two / name).is_file(), name
    assert read_status(two)["status"] == "completed"
    # Each epoch recorded once (stats run in rank 0 only, through the plain module).
    assert [r["epoch"] for r in rd.read_history(two)] == [1, 2, 3]
    assert [r["epoch"] for r in read_stats(two)] == [1, 2, 3]


def test_sharded_metrics_equal_a_single_process_evaluation_exactly(pair):
    _, two, _ = pair
    saved = rd.read_json(two / "metrics.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers ran with one thread each
    try:
        again = cnnlab.evaluate(two, "best", quiet=True)
    finally:
        torch.set_num_threads(threads)
    for split in ("train", "val", "test"):
        assert saved[split]["confusion_matrix"] == again[split]["confusion_matrix"], split
    assert saved == again  # every number: accuracy, per-class metrics, AUC, loss
    pred = np.load(two / "predictions" / "test.npz")
    assert len(pred["y_true"]) == saved["test"]["n"] and pred["y_prob"].shape == (saved["test"]["n"], 10)


def _wait_for_history(runs: Path, name: str, epochs: int, deadline: float) -> Path | None:
    while time.time() < deadline:
        dirs = list((runs / name).glob("*")) if (runs / name).exists() else []
        if dirs and len(rd.read_history(dirs[0])) >= epochs:
            return dirs[0]
        time.sleep(0.05)
    return None


def _worker_pids(root: int, rank: int) -> list[int]:
    """PIDs of descendants of ``root`` whose environment has RANK=rank (the training processes)."""
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            kids = [int(c) for t in os.listdir(f"/proc/{pid}/task")
                    for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        except OSError:
            continue
        for k in kids:
            try:
                env = Path(f"/proc/{k}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and any(e.startswith(b"MASTER_PORT=") for e in env):
                found.append(k)
            todo.append(k)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker processes through /proc")
@pytest.mark.parametrize("launcher", ["devices", "torchrun"])
def test_killing_one_process_stops_the_job_with_an_error_and_it_resumes_alone(launcher, tmp_path):
    exp = write_exp(tmp_path, "kill", epochs=40)
    runs = tmp_path / "runs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if launcher == "devices":
        cmd = [sys.executable, "-m", "cnnlab", "run", str(exp), "--devices", "2", "--runs-dir", str(runs), "-q"]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
        if torchrun is None:
            pytest.skip("torchrun is not installed")
        cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "cnnlab", "run", str(exp),
               "--runs-dir", str(runs), "-q"]
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_dir = _wait_for_history(runs, "kill", 1, start + TIMEOUT / 2)
        assert run_dir is not None, "the run never finished its first epoch"
        victims = _worker_pids(proc.pid, 1)
        assert len(victims) == 1, victims
        os.kill(victims[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=120)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert not (run_dir / "metrics.json").exists(), "the run finished before it was killed"
    if launcher == "devices":
        assert proc.returncode == 1
        assert "process 1 of 2 was killed by SIGKILL" in err, err
        assert "lost contact with the other processes" in err, err  # rank 0's own message
        assert read_status(run_dir)["status"] == "failed"
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"]
    assert 1 <= last < 40

    # Continue the 2-process run with one process: it ends like an uninterrupted one-process run.
    resumed = cnnlab.resume(run_dir, quiet=True, devices=1)
    assert resumed.status["status"] == "completed"
    assert [h["epoch"] for h in resumed.history] == list(range(1, 41))
    ref = cnnlab.run(exp, runs_dir=tmp_path / "ref", quiet=True)
    assert_same_weights(weights(run_dir), weights(ref.dir))


class _InterruptAfter(Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_one_process_run_resumes_with_two_processes(tmp_path):
    exp = write_exp(tmp_path, "grow", epochs=4)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.run(exp, runs_dir=tmp_path / "runs", quiet=True, extra_callbacks=[_InterruptAfter(2)])
    run_dir = next((tmp_path / "runs" / "grow").iterdir())
    assert read_status(run_dir)["status"] == "interrupted"
    res = cli(["resume", str(run_dir), "--devices", "2", "-q"])
    assert res.returncode == 0, res.stderr
    assert read_status(run_dir)["status"] == "completed"
    assert [h["epoch"] for h in rd.read_history(run_dir)] == [1, 2, 3, 4]
    ref = cnnlab.run(exp, runs_dir=tmp_path / "ref", quiet=True)
    assert_same_weights(weights(run_dir), weights(ref.dir))


def test_a_stale_run_resumes_with_two_processes(tmp_path):
    """Killed without a word (run.json still says running, its process gone): only rank 0 decides
    whether the run is live, so rank 1 does not mistake rank 0's own lock for another trainer."""
    exp = write_exp(tmp_path, "stale", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        cnnlab.run(exp, runs_dir=tmp_path / "runs", quiet=True, extra_callbacks=[_InterruptAfter(1)])
    run_dir = next((tmp_path / "runs" / "stale").iterdir())
    write_status(run_dir, RunStatus.RUNNING, pid=2**22 + 12345)  # as a SIGKILL leaves it: no such process
    res = cli(["resume", str(run_dir), "--devices", "2", "-q"])
    assert res.returncode == 0, res.stderr
    assert read_status(run_dir)["status"] == "completed"
    assert [h["epoch"] for h in rd.read_history(run_dir)] == [1, 2, 3]


def test_bad_input_in_the_workers_exits_2_once(tmp_path):
    # sync_batchnorm needs GPUs: every worker refuses it; the launcher reports bad input (exit 2).
    exp = write_exp(tmp_path, "bad")
    res = cli(["run", str(exp), "--devices", "2", "--set", "distributed.sync_batchnorm=true",
               "--runs-dir", str(tmp_path / "runs")])
    assert res.returncode == 2, res.stderr
    # one paragraph, rank 0's own: the launcher does not repeat it
    assert res.stderr.count("sync_batchnorm") == 1 and "Traceback" not in res.stderr, res.stderr
    assert "exited with status 2" not in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists()  # refused before any file was written


def test_a_diverged_run_stops_every_process_and_the_job_fails(tmp_path):
    exp = write_exp(tmp_path, "nan", epochs=6)
    res = cli(["run", str(exp), "--devices", "2", "--set", "train.lr=1e6", "--set", "train.optimizer='sgd'",
               "--set", "train.early_stopping.patience=1", "--runs-dir", str(tmp_path / "runs")])
    assert res.returncode == 1, res.stderr
    assert re.search("NaN|not finite", res.stderr) and "Traceback" not in res.stderr, res.stderr
    run_dir = next((tmp_path / "runs" / "nan").iterdir())
    assert read_status(run_dir)["status"] == "failed"
    assert len(rd.read_history(run_dir)) < 6  # both processes left the loop after the same epoch


def test_world_shares_and_loss_scale_reproduce_the_global_mean():
    # 94 images over 3 processes: shares 32, 31, 31 in order, covering the batch once.
    shares = [World(r, 3).bounds(94) for r in range(3)]
    assert shares == [(0, 32), (32, 63), (63, 94)]
    # sum_r scale_r * mean_r / P = the global (weighted) mean, for equal and class weights.
    g = torch.Generator().manual_seed(0)
    losses, w = torch.rand(94, generator=g), torch.rand(94, generator=g) + 0.5
    for weights_ in (torch.ones(94), w):
        total = sum(World(r, 3).loss_scale(weights_, lo, hi) * (losses[lo:hi] * weights_[lo:hi]).sum()
                    / weights_[lo:hi].sum() for r, (lo, hi) in enumerate(shares)) / 3
        assert float(total) == pytest.approx(float((losses * weights_).sum() / weights_.sum()), rel=1e-6)
    assert World().loss_scale(torch.ones(4), 0, 4) == 1.0 and not World().enabled


def test_devices_option_is_validated_before_any_process_starts(tmp_path):
    exp = write_exp(tmp_path, "zero")
    with pytest.raises(UserError, match="distributed.devices"):
        cnnlab.run(exp, runs_dir=tmp_path, devices=0, quiet=True)
    with pytest.raises(UserError, match="callbacks"):
        cnnlab.run(exp, runs_dir=tmp_path, devices=2, quiet=True, extra_callbacks=[Callback()])
    assert not (tmp_path / "zero").exists()
