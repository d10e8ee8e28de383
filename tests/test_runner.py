"""End to end on scikit-learn's digits: the run directory, metrics against scikit-learn, resume,
evaluate, predict and the notebook API."""

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import cnnlab
from cnnlab import rundir as rd
from cnnlab.train import Callback, epoch_steps, load_checkpoint
from cnnlab.lifecycle import Interrupted, read_status
from cnnlab.errors import RunFailure, UserError

from .data.writers import make_folder, tar_dir

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "examples" / "quickstart.toml"

SMALL = {
    "name": "small", "seed": 1,
    "data": {"dataset": "digits", "test_fraction": 0.2, "val_fraction": 0.1},
    "model": {"name": "cnn", "channels": [8, 16], "hidden": [32]},
    "train": {"epochs": 3, "batch_size": 64, "lr": 3e-3, "device": "cpu"},
}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The README's quickstart, run once for the module through the public API."""
    return cnnlab.run(QUICK, runs_dir=tmp_path_factory.mktemp("runs"), quiet=True)


def test_quickstart_reaches_95_percent_and_writes_the_run_directory(quickstart):
    d = quickstart.dir
    for name in ("config.toml", "env.json", "history.jsonl", "metrics.json", "run.json", "splits.npz",
                 "checkpoints/last.pt", "checkpoints/best.pt", "checkpoints/epoch-0010.pt",
                 "predictions/train.npz", "predictions/val.npz", "predictions/test.npz"):
        assert (d / name).is_file(), name
    assert quickstart.metrics["test"]["accuracy"] >= 0.95
    env = json.loads((d / "env.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and "device" in env
    hist = quickstart.history
    assert [h["epoch"] for h in hist] == list(range(1, len(hist) + 1))
    assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"} <= set(hist[0])
    assert quickstart.status["status"] == "completed"
    assert isinstance(quickstart.model, torch.nn.Module)


def test_metrics_json_agrees_with_sklearn_on_saved_predictions(quickstart):
    m = quickstart.metrics
    for split in ("train", "val", "test"):
        p = np.load(quickstart.dir / "predictions" / f"{split}.npz")
        y, prob = p["y_true"], p["y_prob"]
        pred = prob.argmax(1)
        s = m[split]
        assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
        pr, rc, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=range(10), zero_division=0)
        np.testing.assert_allclose(s["per_class"]["precision"], pr, atol=1e-6)
        np.testing.assert_allclose(s["per_class"]["recall"], rc, atol=1e-6)
        np.testing.assert_allclose(s["per_class"]["f1"], f1, atol=1e-6)
        np.testing.assert_array_equal(s["per_class"]["support"], sup)
        np.testing.assert_array_equal(s["confusion_matrix"], skm.confusion_matrix(y, pred, labels=range(10)))
        auc = [skm.roc_auc_score(y == k, prob[:, k]) for k in range(10)]
        np.testing.assert_allclose(s["per_class"]["auc"], auc, atol=1e-6)
        assert s["macro"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
        assert s["weighted"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"), abs=1e-6)
        assert s["class_names"] == [str(i) for i in range(10)]
        assert len(p["index"]) == len(y)


def test_saved_config_is_resolved_and_reruns(quickstart, tmp_path):
    raw = tomllib.loads((quickstart.dir / "config.toml").read_text())
    assert raw["train"]["early_stopping"]["patience"] == 10 and raw["model"]["activation"] == "relu"
    again = cnnlab.run(quickstart.dir / "config.toml", overrides={"train.epochs": 1}, runs_dir=tmp_path, quiet=True)
    assert again.history[0]["epoch"] == 1 and len(again.history) == 1


def test_same_seed_same_result_on_cpu(tmp_path):
    cfg = dict(SMALL, deterministic=True)
    a = cnnlab.run(cfg, runs_dir=tmp_path / "a", quiet=True)
    b = cnnlab.run(cfg, runs_dir=tmp_path / "b", quiet=True)
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(np.load(a.dir / "splits.npz")["test"], np.load(b.dir / "splits.npz")["test"])


def _run_cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_ends_like_an_uninterrupted_run(tmp_path):
    exp = tmp_path / "exp.toml"
    exp.write_text(
        'name = "killme"\nseed = 5\ndeterministic = true\n'
        '[data]\ndataset = "digits"\n'
        '[model]\nname = "cnn"\nchannels = [16, 32]\nhidden = [64]\ndropout = 0.3\n'
        '[data.augment]\ncrop_padding = 1\n'
        '[train]\nepochs = 8\nbatch_size = 32\nlr = 2e-3\ndevice = "cpu"\nscheduler = "cosine"\n'
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = _run_cli(["run", str(exp), "--runs-dir", str(tmp_path / "ref"), "-q"], env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr
    ref_dir = next((tmp_path / "ref" / "killme").iterdir())

    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "run", str(exp), "--runs-dir", str(tmp_path / "k"), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    run_dir = None
    while time.time() < deadline:
        dirs = list((tmp_path / "k" / "killme").glob("*")) if (tmp_path / "k" / "killme").exists() else []
        if dirs and len(rd.read_history(dirs[0])) >= 3:
            run_dir = dirs[0]
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, "the run never reached epoch 3"
    assert not (run_dir / "metrics.json").exists(), "the run finished before it was killed"

    res = _run_cli(["resume", str(run_dir), "-q"], env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    hist = rd.read_history(run_dir)
    assert [h["epoch"] for h in hist] == list(range(1, 9))
    a, b = rd.read_json(run_dir / "metrics.json"), rd.read_json(ref_dir / "metrics.json")
    assert a == b
    ref_hist = rd.read_history(ref_dir)
    assert [h["train_loss"] for h in hist] == [h["train_loss"] for h in ref_hist]


def test_early_stopping_and_checkpoint_interval(tmp_path):
    cfg = dict(SMALL, train=dict(SMALL["train"], epochs=40, lr=0.2, optimizer="sgd",
                                 early_stopping={"patience": 2, "monitor": "val_acc", "mode": "max", "min_delta": 1.0}),
               checkpoint={"every": 1})
    r = cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    # min_delta 1.0 means nothing after epoch 1 counts as improvement: stop after 1 + 2 epochs
    assert len(r.history) == 3
    assert sorted(p.name for p in (r.dir / "checkpoints").glob("epoch-*.pt")) == \
        ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]
    best = load_checkpoint(r.dir / "checkpoints" / "best.pt")
    assert best["epoch"] == 1


def test_nan_loss_stops_with_failure_and_keeps_best(tmp_path):
    cfg = dict(SMALL, train=dict(SMALL["train"], epochs=6, lr=1e6, optimizer="sgd"),
               model={"name": "mlp", "hidden_size": 64})
    with pytest.raises(RunFailure, match="NaN"):
        cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    d = next((tmp_path / "small").iterdir())
    assert read_status(d)["status"] == "failed"


def test_evaluate_and_predict(quickstart, tmp_path):
    out = cnnlab.evaluate(quickstart.dir, "best", splits=["test"], quiet=True)
    assert out["test"]["accuracy"] == pytest.approx(quickstart.metrics["test"]["accuracy"])
    assert list((quickstart.dir / "evaluations").glob("*.json"))
    # another data selection: only classes 0..4 of digits is a different number of classes -> clear error
    with pytest.raises(UserError, match="classes"):
        cnnlab.evaluate(quickstart.dir, overrides=["data.classes=[0, 1, 2]"], quiet=True)
    # predict on image files written from the digits test images
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(5):
        img = Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8), mode="L")
        p = tmp_path / f"d{i}.png"
        img.save(p)
        paths.append(str(p))
    res = cnnlab.predict(quickstart.dir, paths, k=3, quiet=True)
    assert [r["class"] for r in res] == [str(int(t)) for t in digits.target[:5]]
    assert all(len(r["top"]) == 3 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in res)


def test_evaluate_with_compile_gives_the_same_metrics(quickstart, monkeypatch):
    """`cnnlab evaluate --set train.compile=true` runs the compiled forward (dynamo with its light
    'eager' backend here: compiling for real takes minutes on 2 cores) and measures the same."""
    real = torch.compile
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(m) or real(m, backend="eager"))
    out = cnnlab.evaluate(quickstart.dir, "best", overrides=["train.compile=true"], splits=["test"], quiet=True)
    assert len(compiled) == 1
    assert out["test"]["accuracy"] == pytest.approx(quickstart.metrics["test"]["accuracy"])
    assert out["test"]["loss"] == pytest.approx(quickstart.metrics["test"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_truncated_checkpoint_is_a_clear_error(quickstart, tmp_path):
    bad = tmp_path / "bad.pt"
    data = (quickstart.dir / "checkpoints" / "best.pt").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(bad)
    r = _run_cli(["evaluate", str(quickstart.dir), "--checkpoint", str(bad)])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "truncated" in r.stderr


class Evil:
    """Stands for any arbitrary object a hostile checkpoint might unpickle."""


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Evil()}, p)
    with pytest.raises(UserError):
        load_checkpoint(p)


def test_overflowing_best_checkpoint_fails_cleanly(tmp_path):
    # lr 1e4: epoch 1 ends with a finite but astronomically large loss (its checkpoint is "best"),
    # epoch 2 goes NaN; the best weights overflow on evaluation.
    cfg = dict(SMALL, train=dict(SMALL["train"], epochs=4, lr=1e4, optimizer="sgd"),
               model={"name": "mlp", "hidden_size": 64})
    with pytest.raises(RunFailure):
        cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    d = next((tmp_path / "small").iterdir())
    assert read_status(d)["status"] == "failed"


def test_non_finite_outputs_with_a_finite_loss_are_recorded_as_such(tmp_path):
    from cnnlab.train.callbacks import Callback

    class Overflow(Callback):  # the weights overflow after training, with every loss finite
        def on_fit_end(self, trainer):
            for p in trainer.model.parameters():
                p.data.fill_(float("inf"))

    cfg = dict(SMALL, train=dict(SMALL["train"], epochs=1, early_stopping={"restore_best": False}))
    with pytest.raises(RunFailure, match="not finite"):
        cnnlab.run(cfg, runs_dir=tmp_path, quiet=True, extra_callbacks=[Overflow()])
    d = next((tmp_path / "small").iterdir())
    st = read_status(d)
    assert st["status"] == "failed" and st["error"] == "non_finite_outputs" and "not finite" in st["message"]
    found = {f["id"]: f for f in json.loads((d / "diagnostics.json").read_text())["findings"]}
    assert "outputs are NaN/inf" in found["divergence"]["evidence"]


class InterruptInEpoch2(Callback):
    """Ctrl-C at the 5th step of epoch 2: after the checkpoint of epoch 1, with steps.jsonl already
    holding lines past it."""

    def on_train_batch_end(self, trainer, step, steps):
        if trainer.epoch == 1 and step == 4:
            raise KeyboardInterrupt


def test_steps_jsonl_resumes_without_gaps_or_repeats(tmp_path):
    cfg = dict(SMALL, log={"every_steps": 2})
    with pytest.raises(Interrupted):
        cnnlab.run(cfg, runs_dir=tmp_path, quiet=True, extra_callbacks=[InterruptInEpoch2()])
    run_dir = next((tmp_path / "small").iterdir())
    per_epoch = epoch_steps(len(np.load(run_dir / rd.SPLITS)["train"]), SMALL["train"]["batch_size"])
    before = [r["step"] for r in rd.read_jsonl(run_dir / rd.STEPS)]
    assert before == list(range(2, per_epoch + 6, 2))  # epoch 1, and epoch 2 up to its 5th step
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["callbacks"]["StepWriter"] == {"step": per_epoch}
    cnnlab.resume(run_dir, quiet=True)
    rows = rd.read_jsonl(run_dir / rd.STEPS, ("step", "epoch", "loss", "acc"))
    total = 3 * per_epoch
    assert [r["step"] for r in rows] == list(range(2, total // 2 * 2 + 1, 2))
    assert [r["epoch"] for r in rows] == [(r["step"] - 1) // per_epoch + 1 for r in rows]
    assert all(isinstance(r["loss"], float) and 0.0 <= r["acc"] <= 1.0 for r in rows)


def test_run_writes_its_report_at_the_end_unless_switched_off(tmp_path, monkeypatch):
    """The end-of-run hook: report.html (and figures/) after `cnnlab run`; `report = false` skips it."""
    monkeypatch.delenv("CNNLAB_REPORT")
    base = {"name": "rep", "data": {"dataset": "digits", "per_class": 30}, "train": {"epochs": 1},
            "report": {"explain_images": 0}}
    on = cnnlab.run(base, runs_dir=tmp_path, quiet=True)
    html = (on.dir / "report.html").read_text()
    assert f"{on.metrics['test']['accuracy']:.4f}" in html and (on.dir / "figures" / "curves.png").is_file()
    off = cnnlab.run({**base, "report": False}, runs_dir=tmp_path, quiet=True)
    assert not (off.dir / "report.html").exists()


@pytest.mark.slow
def test_git_commit_says_when_the_code_differs_from_the_commit(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "a.py"], check=True)
    subprocess.run(git + ["commit", "-qm", "a"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "notes.txt").write_text("untracked files do not count\n")
    assert rd.git_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert rd.git_commit(tmp_path) == head + "+dirty"


MIX = {"name": "mix", "seed": 0, "data": {"dataset": "digits", "per_class": 40},
       "model": {"name": "cnn", "channels": [8], "hidden": [16]}, "train": {"epochs": 2, "device": "cpu"}}


@pytest.mark.parametrize("loss", ["cross_entropy", "focal"])
def test_a_run_with_every_augmentation_and_mixup_trains(tmp_path, loss):
    cfg = {**MIX, "train": {**MIX["train"], "loss": {"name": loss}},
           "data": {**MIX["data"], "augment": {
               "crop_padding": 1, "hflip": True, "rotation": 10, "translate": 0.1, "brightness": 0.2, "contrast": 0.2,
               "erasing": 0.25, "mixup": 0.2, "cutmix": 1.0, "per_class": {"3": {"rotation": 25}}}}}
    run = cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    assert run.status["status"] == "completed"
    assert all(np.isfinite(h["train_loss"]) for h in run.history)
    saved = tomllib.loads((run.dir / rd.CONFIG).read_text())
    assert saved["data"]["augment"]["per_class"] == {"3": {"rotation": 25.0}} and saved["data"]["augment"]["mixup"] == 0.2


def test_an_unknown_class_in_per_class_augmentation_is_refused_before_the_run(tmp_path):
    cfg = {**MIX, "data": {**MIX["data"], "augment": {"per_class": {"eleven": {"rotation": 10}}}}}
    with pytest.raises(UserError, match=r"data.augment.per_class.*eleven.*0, 1, 2"):
        cnnlab.run(cfg, runs_dir=tmp_path, quiet=True)
    assert not list(tmp_path.rglob("run.json"))


def test_a_quiet_run_prints_nothing_while_decoding_training_and_reporting(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CNNLAB_REPORT")
    archive = tar_dir(make_folder(tmp_path / "imgs", n=12), tmp_path / "set.tar.gz")
    cfg = {**MIX, "data": {"dataset": "imagefolder", "path": str(archive)}, "train": {**MIX["train"], "epochs": 1},
           "report": {"explain_images": 0}}
    run = cnnlab.run(cfg, runs_dir=tmp_path / "runs", quiet=True)
    assert (run.dir / rd.REPORT).exists() and capsys.readouterr().out == ""


def test_the_report_line_only_when_the_report_was_written(tmp_path, monkeypatch, capsys):
    """A report that fails warns (report_after_run) and leaves no "report:" line claiming a page."""
    monkeypatch.delenv("CNNLAB_REPORT")
    monkeypatch.setattr("cnnlab.runner.report_after_run", lambda run_dir, quiet, data=None, on_section=None: None)  # writes nothing
    cnnlab.run({**MIX, "train": {**MIX["train"], "epochs": 1}}, runs_dir=tmp_path, quiet=False)
    out = capsys.readouterr().out
    assert "writing report.html ..." in out and "report:" not in out
