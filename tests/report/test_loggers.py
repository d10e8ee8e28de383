"""TensorBoard and MLflow loggers: what a real run writes equals history.jsonl and metrics.json, a
resumed run continues the same logs without gaps or repeats, a run always ends in MLflow, other
ranks log nothing, and a missing package is a UserError that says what to install."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import cnnlab
import cnnlab.runner
from cnnlab.report import loggers as lg
from cnnlab import rundir as rd
from cnnlab.lifecycle import RunStatus, Stop, StopReason, write_status
from cnnlab.train import Callback
from cnnlab.experiment import validate_config
from cnnlab.errors import UserError

HAS_TB = importlib.util.find_spec("tensorboard") is not None
HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_tb = pytest.mark.skipif(not HAS_TB, reason="tensorboard is not installed (pip install 'cnnlab[tensorboard]')")
needs_mlflow = pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install 'cnnlab[mlflow]')")
# MLflow 3's SQL store: deprecation noise from SQLAlchemy that says nothing about cnnlab.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

CFG = {
    "name": "logged", "seed": 0, "report": False,
    "data": {"dataset": "digits", "test_fraction": 0.2, "val_fraction": 0.1},
    "model": {"name": "mlp", "hidden_size": 32},
    "train": {"epochs": 3, "batch_size": 64, "lr": 1e-3, "device": "cpu"},
    "diagnostics": {"stats_every": 0},
}


def tb_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalars(ea, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in ea.Scalars(tag)]


# ------------------------------------------------------------------------- a real run, logged
class MLflowStatusAtFitEnd(Callback):
    """After the loggers' own on_fit_end (extra callbacks come last): the status of the run's MLflow
    run in the default store, before the runner calls log_final."""

    def __init__(self, runs: Path):
        self.runs, self.status = runs, None

    def on_fit_end(self, trainer):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{self.runs.resolve() / 'mlflow.db'}")
        (exp,) = [e for e in client.search_experiments() if e.name == "logged"]
        (r,) = client.search_runs([exp.experiment_id])
        self.status = r.info.status


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A 3-epoch digits run with the installed loggers on ([log]); the runner calls log_final on them
    after on_fit_end (the order in which the logger must reopen what it closed)."""
    runs = tmp_path_factory.mktemp("runs")
    log = {"tensorboard": HAS_TB, "histograms_every": 2, "mlflow": HAS_MLFLOW, "every_steps": 5}
    spy = MLflowStatusAtFitEnd(runs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store: RUNS_DIR/mlflow.db
        run = cnnlab.run({**CFG, "log": log}, runs_dir=runs, quiet=True, extra_callbacks=[spy] if HAS_MLFLOW else [])
    return run, runs, spy.status


@needs_tb
def test_tensorboard_scalars_histograms_and_confusion_matrix(logged_run):
    run, _, _ = logged_run
    history = run.history
    ea = tb_events(run.dir / "tensorboard")
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
        got = scalars(ea, key)
        assert [s for s, _ in got] == [1, 2, 3], key
        # Event files store float32.
        assert [v for _, v in got] == pytest.approx([h[key] for h in history], rel=1e-6), key
    names = [f"weights/{n}" for n, _ in run.model.named_parameters()]
    assert sorted(ea.Tags()["histograms"]) == sorted(names)
    for tag in names:
        assert [e.step for e in ea.Histograms(tag)] == [1, 2]  # every 2 epochs, and epoch 1; not 3
    assert scalars(ea, "final/test_accuracy") == [(3, pytest.approx(run.metrics["test"]["accuracy"], rel=1e-6))]
    assert scalars(ea, "final/val_macro_f1")[0][1] == pytest.approx(run.metrics["val"]["macro"]["f1"], rel=1e-6)
    images = ea.Images("final/test_confusion_matrix")
    assert len(images) == 1 and images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    assert images[0].width > 100 and images[0].height > 100


def step_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """steps.jsonl as the TensorBoard scalars step/loss and step/acc should hold them."""
    rows = rd.read_jsonl(run_dir / rd.STEPS)
    return {f"step/{k}": [(r["step"], pytest.approx(r[k], rel=1e-6)) for r in rows] for k in ("loss", "acc")}


@needs_tb
def test_tensorboard_per_step_scalars_are_those_of_steps_jsonl(logged_run):
    run, _, _ = logged_run
    want = step_points(run.dir)
    assert [s for s, _ in want["step/loss"]] == list(range(5, 5 * len(want["step/loss"]) + 1, 5))
    ea = tb_events(run.dir / "tensorboard")
    for tag, points in want.items():
        assert scalars(ea, tag) == points, tag


@needs_mlflow
def test_mlflow_params_metrics_and_artifacts(logged_run):
    run, runs, status_at_fit_end = logged_run
    assert status_at_fit_end == "FINISHED"  # on_fit_end ended it before log_final
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs.resolve() / 'mlflow.db'}")  # the default store
    (exp,) = [e for e in client.search_experiments() if e.name == "logged"]
    (r,) = client.search_runs([exp.experiment_id])
    run_id = r.info.run_id
    assert r.info.status == "FINISHED"
    assert r.data.tags["cnnlab.run_dir"] == str(run.dir.resolve())
    config = tomllib.loads((run.dir / "config.toml").read_text())
    assert r.data.params == lg.flatten_config(config)
    assert r.data.params["train.lr"] == "0.001" and r.data.params["data.dataset"] == "digits"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"):
        points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in points] == [(h["epoch"], h[key]) for h in run.history], key
    assert r.data.metrics["final/test_accuracy"] == run.metrics["test"]["accuracy"]
    assert r.data.metrics["final/test_weighted_f1"] == run.metrics["test"]["weighted"]["f1"]
    listed = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", "config.toml", "diagnostics.json", "confusion_matrix.png"} <= listed
    assert "report.html" not in listed  # report = false: not written, so not logged
    # Artifacts of the default store live next to the database, not in the working directory.
    assert (runs / "mlartifacts").is_dir() and not Path("mlartifacts").exists()


# -------------------------------------------------------------- resume, ranks, NaN: driven directly
class FakeTrainer:
    """What the loggers read from a Trainer: epoch, history, model, callbacks, stop."""

    def __init__(self, run_dir: Path, callbacks):
        self.callbacks = list(callbacks)
        self.epoch, self.history, self.stop = 0, [], None
        self.model = torch.nn.Linear(4, 2)

    def start(self):
        for cb in self.callbacks:
            cb.on_fit_start(self)

    def epoch_end(self, train_loss: float):
        self.epoch += 1
        with torch.no_grad():
            self.model.weight.add_(1.0)  # each epoch's weights differ
        logs = {"epoch": self.epoch, "train_loss": train_loss, "train_acc": 0.5, "val_loss": None,
                "lr": 0.1 / self.epoch, "seconds": 1.0, "images_per_s": 100.0}
        self.history.append(logs)
        return logs

    def log_epoch(self, logs):
        for cb in self.callbacks:
            cb.on_epoch_end(self, logs)

    def end(self):
        for cb in self.callbacks:
            cb.on_fit_end(self)


def fake_run_dir(root: Path, name: str = "fake") -> Path:
    d = root / name / "20260101-000000"
    d.mkdir(parents=True)
    (d / "config.toml").write_text(f'name = "{name}"\n[train]\nlr = 0.1\n')
    return d


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One SQLite store for the direct tests (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.mark.skipif(not (HAS_TB and HAS_MLFLOW), reason="needs tensorboard and mlflow (pip install 'cnnlab[tensorboard,mlflow]')")
def test_resume_continues_the_same_logs(tmp_path, mlflow_uri):
    run_dir = fake_run_dir(tmp_path)
    # First process: epochs 1-2 logged; epoch 3 checkpointed (state taken), then killed before the
    # loggers saw epoch 3. The process exit ends the open MLflow run as KILLED.
    t = FakeTrainer(run_dir, [lg.TensorBoardLogger(run_dir, histograms_every=1),
                              lg.MLflowLogger(run_dir, mlflow_uri, "resume")])
    t.start()
    for loss in (1.0, 0.8):
        t.log_epoch(t.epoch_end(loss))
    t.epoch_end(0.6)
    state = {type(cb).__name__: cb.state_dict() for cb in t.callbacks}
    tb1, ml1 = t.callbacks
    ml1._end_at_exit()
    tb1.writer.close()  # what the process exit does to the TensorBoard writer
    assert ml1.client.get_run(ml1.run_id).info.status == "KILLED"

    # Second process: a resume from the epoch-3 checkpoint runs epoch 4.
    # The tracking URI and the MLflow run id come from the checkpoint's state.
    t2 = FakeTrainer(run_dir, [lg.TensorBoardLogger(run_dir, histograms_every=1), lg.MLflowLogger(run_dir)])
    t2.model.load_state_dict(t.model.state_dict())
    t2.epoch, t2.history = 3, [dict(h) for h in t.history]
    for cb in t2.callbacks:
        cb.load_state_dict(state[type(cb).__name__])
    t2.start()
    t2.log_epoch(t2.epoch_end(0.5))
    t2.end()
    _, ml2 = t2.callbacks
    assert ml2.run_id == ml1.run_id and ml2.tracking_uri == mlflow_uri
    points = sorted(ml2.client.get_metric_history(ml2.run_id, "train_loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in points] == [(1, 1.0), (2, 0.8), (3, 0.6), (4, 0.5)]  # epoch 3 back-filled
    assert ml2.client.get_run(ml2.run_id).info.status == "FINISHED"
    ea = tb_events(run_dir / "tensorboard")
    assert scalars(ea, "train_loss") == [(1, 1.0), (2, pytest.approx(0.8)), (3, pytest.approx(0.6)), (4, 0.5)]
    assert [e.step for e in ea.Histograms("weights/weight")] == [1, 2, 3, 4]

    # Third process: resume from epoch 2 (last.pt older than the logs): epochs 3-4 are repeated
    # with new values; TensorBoard shows each epoch once, with the new values.
    t3 = FakeTrainer(run_dir, [lg.TensorBoardLogger(run_dir)])
    t3.epoch, t3.history = 2, [dict(h) for h in t.history[:2]]
    t3.start()
    for loss in (0.55, 0.45):
        t3.log_epoch(t3.epoch_end(loss))
    t3.end()
    ea = tb_events(run_dir / "tensorboard")
    assert [s for s, _ in scalars(ea, "train_loss")] == [1, 2, 3, 4]
    assert [v for _, v in scalars(ea, "train_loss")][2:] == pytest.approx([0.55, 0.45])


@needs_mlflow
def test_mlflow_run_ends_failed_after_nan_and_on_errors(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_uri)
    run_dir = fake_run_dir(tmp_path, "nan")
    t = FakeTrainer(run_dir, [lg.MLflowLogger(run_dir, mlflow_uri, "nan")])
    t.start()
    (cb,) = t.callbacks
    assert client.get_run(cb.run_id).info.status == "RUNNING"
    assert client.get_run(cb.run_id).data.params == {"name": "nan", "train.lr": "0.1"}  # logged at the start
    t.log_epoch(t.epoch_end(1.0))
    t.stop = Stop(StopReason.NON_FINITE_LOSS)
    t.end()
    assert client.get_run(cb.run_id).info.status == "FAILED"
    metrics = {"test": {"accuracy": 0.25, "loss": 2.0, "macro": {"f1": 0.2}, "weighted": {},
                        "confusion_matrix": [[1, 1], [2, 0]], "class_names": ["a", "b"]}}
    lg.log_final(t.callbacks, metrics, run_dir)  # the best checkpoint was still evaluated
    r = client.get_run(cb.run_id)
    assert r.info.status == "FAILED" and r.data.metrics["final/test_accuracy"] == 0.25
    lg.close_loggers(t.callbacks, "KILLED")  # after log_final: changes nothing
    assert client.get_run(cb.run_id).info.status == "FAILED"
    # Artifacts went next to the database (MLflow's own default: ./mlruns in the working directory).
    artifacts = Path(mlflow_uri[len("sqlite:///"):]).parent / "mlartifacts"
    assert {a.path for a in client.list_artifacts(cb.run_id)} == {"config.toml", "confusion_matrix.png"}
    assert any(artifacts.rglob("confusion_matrix.png"))

    # An error after on_fit_end but before log_final (the evaluation failed): close_loggers decides.
    run_dir2 = fake_run_dir(tmp_path, "evalfail")
    t2 = FakeTrainer(run_dir2, [lg.MLflowLogger(run_dir2, mlflow_uri, "nan")])
    t2.start()
    t2.log_epoch(t2.epoch_end(1.0))
    t2.end()
    assert client.get_run(t2.callbacks[0].run_id).info.status == "FINISHED"
    lg.close_loggers(t2.callbacks, "FAILED")
    assert client.get_run(t2.callbacks[0].run_id).info.status == "FAILED"


@pytest.mark.slow
@needs_mlflow
def test_a_crashed_process_leaves_no_mlflow_run_running(tmp_path, mlflow_uri):
    run_dir = fake_run_dir(tmp_path, "crash")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); from pathlib import Path; "
            f"from test_loggers import FakeTrainer; from cnnlab.report import loggers as lg; "
            f"t = FakeTrainer(Path({str(run_dir)!r}), [lg.MLflowLogger(Path({str(run_dir)!r}), {mlflow_uri!r}, 'crash')]); "
            f"t.start(); print(t.callbacks[0].run_id, flush=True); raise RuntimeError('boom')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and "boom" in out.stderr
    from mlflow.tracking import MlflowClient

    run_id = out.stdout.split()[-1]
    assert MlflowClient(tracking_uri=mlflow_uri).get_run(run_id).info.status == "KILLED"  # the atexit hook


def test_other_ranks_log_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(lg, "is_main_process", lambda: False)
    run_dir = fake_run_dir(tmp_path, "rank1")
    uri = f"sqlite:///{tmp_path / 'rank1.db'}"
    t = FakeTrainer(run_dir, [lg.TensorBoardLogger(run_dir), lg.MLflowLogger(run_dir, uri, "rank1")])
    t.start()
    t.log_epoch(t.epoch_end(1.0))
    t.end()
    lg.log_final(t.callbacks, {}, run_dir)
    assert not (run_dir / "tensorboard").exists() and not (tmp_path / "rank1.db").exists()
    assert t.callbacks[1].state_dict()["run_id"] is None


# ------------------------------------------------------------------------------ configuration
def test_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"pip install 'cnnlab\[mlflow\]'") as e:
        lg.build_loggers(validate_config({"log": {"mlflow": True}}, "<test>"), Path("runs/x/1"))
    assert "log.mlflow = false" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"log.tensorboard = true needs .*pip install 'cnnlab\[tensorboard\]'"):
        lg.build_loggers(validate_config({"log": {"tensorboard": True}}, "<test>"), Path("runs/x/1"))
    assert lg.build_loggers(validate_config({}, "<test>"), Path("runs/x/1")) == []  # nothing on: nothing needed


@pytest.mark.slow
def test_loggers_are_registered_and_imports_stay_lazy():
    from cnnlab.train.callbacks import CALLBACKS

    assert CALLBACKS.get("tensorboard") is lg.TensorBoardLogger and CALLBACKS.get("mlflow") is lg.MLflowLogger
    code = "import sys, cnnlab.report.loggers; print(json.dumps([m in sys.modules for m in ('mlflow', 'tensorboard')]))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [False, False]


def test_histogram_buckets():
    h = lg.histogram(torch.tensor([[0.0, 0.1, 1.0], [2.0, 2.0, 4.0]]), bins=4)  # edges 0, 1, 2, 3, 4
    assert h["bucket_counts"] == [2, 1, 2, 1] and h["bucket_limits"] == [1.0, 2.0, 3.0, 4.0]
    assert (h["min"], h["max"], h["num"]) == (0.0, 4.0, 6)
    assert h["sum"] == pytest.approx(9.1) and h["sum_squares"] == pytest.approx(25.01)
    flat = lg.histogram(torch.full((3,), 2.0), bins=2)  # constant: a unit-wide range around the value
    assert flat["bucket_counts"] == [0, 3] and (flat["min"], flat["max"]) == (1.5, 2.5)


def test_flatten_config_and_final_scalars():
    flat = lg.flatten_config({"name": "x", "train": {"lr": 0.01, "ema": {"mode": "off"}},
                              "model": {"channels": [32, 64]}, "deterministic": True})
    assert flat == {"name": "x", "train.lr": "0.01", "train.ema.mode": "off", "model.channels": "[32, 64]",
                    "deterministic": "true"}
    m = {"accuracy": 0.5, "loss": None, "macro": {"f1": 0.4, "auc": None}, "weighted": {"f1": 0.45}}
    assert lg.final_scalars({"test": m}) == {"final/test_accuracy": 0.5, "final/test_macro_f1": 0.4,
                                             "final/test_weighted_f1": 0.45}


# ------------------------------------------------------------------- through [log] (runner wired)
@pytest.mark.skipif(not (HAS_TB and HAS_MLFLOW), reason="needs tensorboard and mlflow")
@pytest.mark.skipif("build_loggers" not in inspect.getsource(cnnlab.runner),
                    reason="the runner does not call build_loggers yet (the lead wires [log] into runner.py)")
def test_log_section_through_run_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {**CFG, "log": {"tensorboard": True, "mlflow": True, "every_steps": 3}, "checkpoint": {"every": 1}}
    run = cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    ea = tb_events(run.dir / "tensorboard")
    assert [s for s, _ in scalars(ea, "val_acc")] == [1, 2, 3] and ea.Images("final/test_confusion_matrix")
    # Pretend the run was killed after epoch 2, as `cnnlab resume` would find it.
    ckpt = run.dir / "checkpoints"
    (ckpt / "last.pt").write_bytes((ckpt / "epoch-0002.pt").read_bytes())
    write_status(run.dir, RunStatus.RUNNING)  # as a SIGKILL leaves it: "running", its process gone
    cnnlab.resume(run.dir, quiet=True)
    history = rd.read_history(run.dir)
    ea = tb_events(run.dir / "tensorboard")
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in scalars(ea, "val_acc")] == \
        [(h["epoch"], h["val_acc"]) for h in history]
    # The per-step points: each step once (the purge at epoch 2 hid those from global step 2 on, and
    # the lines of epoch 3 were dropped and trained again), in order, equal to steps.jsonl.
    for tag, points in step_points(run.dir).items():
        assert scalars(ea, tag) == points, tag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "logged"]
    (r,) = client.search_runs([exp.experiment_id])  # the resume continued the same MLflow run
    assert r.info.status == "FINISHED" and r.data.metrics["final/test_accuracy"] == rd.read_json(
        run.dir / "metrics.json")["test"]["accuracy"]
