"""The speed techniques of issue 3 through the public API, and the GPU recipes run tiny on the CPU.

The recipes' real figures need a GPU and the CIFAR-10 copy; here each example file is loaded as
written, overridden to a few epochs on a small synthetic image folder on the CPU, and must train,
evaluate and write its metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.train import load_checkpoint
from cnnlab.train.callbacks import Callback
from cnnlab.experiment import load_config

REPO = Path(__file__).resolve().parents[1]

FAST = {
    "name": "fast", "seed": 2, "deterministic": True,
    "data": {"dataset": "digits", "per_class": 30, "test_fraction": 0.2, "val_fraction": 0.2,
             "augment": {"crop_padding": 1, "padding_mode": "reflect", "hflip": "alternate"}},
    "model": {"name": "airbench", "widths": [8, 16], "whiten_bias_epochs": 3},
    "train": {"epochs": 4, "batch_size": 50, "drop_last": True, "optimizer": "sgd", "lr": 0.2, "momentum": 0.85,
              "nesterov": True, "device": "cpu", "label_smoothing": 0.2, "bn_bias_lr_scale": 16.0,
              "tta": "flip_translate", "scheduler": {"name": "linear", "interval": "step"},
              "ema": {"mode": "ema", "decay": 0.9, "every": 2, "ramp": "cubic"}},
    "diagnostics": {"stats_every": 0},
}


class Interrupt(Callback):
    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == 2:
            raise KeyboardInterrupt


def test_speed_options_run_resume_exactly_and_evaluate_with_the_ema_weights(tmp_path):
    ref = cnnlab.run(FAST, runs_dir=tmp_path / "ref", quiet=True)
    assert set(ref.metrics) == {"train", "val", "test"}
    with pytest.raises(KeyboardInterrupt):
        cnnlab.run(FAST, runs_dir=tmp_path / "cut", quiet=True, extra_callbacks=[Interrupt()])
    cut = next((tmp_path / "cut" / "fast").iterdir())
    resumed = cnnlab.resume(cut, quiet=True)
    assert resumed.metrics == ref.metrics
    a, b = load_checkpoint(ref.dir / "checkpoints" / "last.pt"), load_checkpoint(cut / "checkpoints" / "last.pt")
    for part in ("model", "ema"):
        sa = a["model"] if part == "model" else a["callbacks"]["WeightEMA"]["weights"]
        sb = b["model"] if part == "model" else b["callbacks"]["WeightEMA"]["weights"]
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (part, k)
    # Checkpoints hold both weight sets; a loaded run model carries the EMA weights it was evaluated with.
    best = load_checkpoint(ref.dir / "checkpoints" / "best.pt")
    model = ref.model
    for k, v in model.state_dict().items():
        assert torch.equal(v, best["callbacks"]["WeightEMA"]["weights"][k]), k
    # `cnnlab evaluate` reproduces the run's test metrics (EMA weights, TTA).
    again = cnnlab.evaluate(ref.dir, splits=["test"], quiet=True)
    assert again["test"]["accuracy"] == ref.metrics["test"]["accuracy"]
    assert again["test"]["loss"] == pytest.approx(ref.metrics["test"]["loss"], rel=1e-5)


class WhitenBias(Callback):
    def __init__(self):
        self.seen, self.batches = [], []

    def on_train_batch_end(self, trainer, step, steps):
        self.batches.append(trainer._running[2])  # images seen so far in this epoch

    def on_epoch_end(self, trainer, logs):
        self.seen.append(trainer.model.whiten.bias.detach().clone())


def test_whitening_bias_trains_for_its_epochs_then_freezes_and_last_batch_is_dropped(tmp_path):
    rec = WhitenBias()
    run = cnnlab.run(FAST, runs_dir=tmp_path, quiet=True, extra_callbacks=[rec])
    start = torch.zeros_like(rec.seen[0])
    b1, b2, b3, b4 = rec.seen
    # Trains in epochs 1-3 (airbench: whiten_bias_epochs), then stays as it was after epoch 3.
    assert not torch.equal(b1, start) and not torch.equal(b2, b1) and not torch.equal(b3, b2)
    assert torch.equal(b4, b3)
    # drop_last: 192 training images at batch 50 are 3 steps of 50 per epoch (42 wait for the next shuffle).
    assert run.metrics["train"]["n"] == 192
    assert rec.batches == [50, 100, 150] * 4


def test_bad_speed_options_are_refused(tmp_path):
    from cnnlab.errors import UserError

    for key, value, match in [("train.tta", "rotate", "train.tta"), ("data.augment.hflip", "sometimes", "hflip"),
                              ("train.ema.mode", "swa", "train.ema.mode"), ("train.bn_bias_lr_scale", 0, "bn_bias_lr_scale"),
                              ("train.threads", 0, "threads"), ("data.augment.padding_mode", "wrap", "padding_mode"),
                              ("data.augment.crop_padding", 8, "too large for padding_mode"),
                              ("train.scheduler.interval", "batch", "interval")]:
        with pytest.raises(UserError, match=match):
            cnnlab.run(FAST, overrides={key: value}, runs_dir=tmp_path, quiet=True)


# ------------------------------------------------------------------------------------ recipes
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """3 classes x 10 random 32x32 RGB PNGs, each class with its own mean colour (learnable)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "frog"]):
        (root / name).mkdir()
        for i in range(10):
            img = rng.integers(0, 120, (32, 32, 3)) + np.eye(3, dtype=np.int64)[c] * 120
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


RECIPES = ["speedrun_cifar10", "resnet18_cifar10", "seed001_cnn"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_tiny_on_the_cpu(name, tiny_folder, tmp_path):
    path = REPO / "examples" / f"{name}.toml"
    load_config(path)  # the file as written validates
    threads = torch.get_num_threads()  # train.threads sets a process-wide value: put it back afterwards
    try:
        run = _tiny_run(path, tiny_folder, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert run.status["status"] == "completed"
    assert [h["epoch"] for h in run.history] == [1, 2]
    test = run.metrics["test"]
    assert test["n"] == 6 and 0.0 <= test["accuracy"] <= 1.0 and np.isfinite(test["loss"])
    assert (run.dir / "predictions" / "test.npz").exists()


def _tiny_run(path, tiny_folder, tmp_path):
    return cnnlab.run(path, overrides={
        "data.dataset": "imagefolder", "data.path": str(tiny_folder), "data.test_fraction": 0.2,
        "train.epochs": 2, "train.batch_size": 8, "train.eval_batch_size": 64, "train.device": "cpu",
        "train.compile": False,  # compiling on a shared 2-core CPU takes minutes; tested in test_engine
        "train.threads": 1, "diagnostics.stats_every": 0,
    }, runs_dir=tmp_path, quiet=True)
