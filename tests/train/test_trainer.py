"""The speed path must not change what is learned: one trainer epoch equals a plain loop."""

import copy
import os
import platform
import subprocess
import sys
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnlab.data.augment import Normalizer, alternating_flip_mask
from cnnlab import rundir as rd
from cnnlab.train.callbacks import Callback, StepWriter, WeightEMA
from cnnlab.config import ExperimentConfig
from cnnlab.models import ImageClassifier
from cnnlab.train import CheckedForward, DeviceSplit, Inference, Trainer, epoch_steps, predict, resolve_device
from cnnlab.errors import UserError
from cnnlab.lifecycle import Stop, StopReason
from cnnlab.train.optim import build_optimizer, build_scheduler
from cnnlab.train.trainer import BatchResult


def small_model():
    torch.manual_seed(0)
    return ImageClassifier(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                         nn.MaxPool2d(2)),
                           nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 3)))


def make_trainer(cfg, model, x, y, callbacks=()):
    opt = build_optimizer(model, cfg.train)
    sched, mon = build_scheduler(opt, cfg.train, epoch_steps(len(y), cfg.train.batch_size, 1, cfg.train.drop_last))
    return Trainer(cfg, model, nn.CrossEntropyLoss(), opt, sched, mon, DeviceSplit(x, y), None,
                   Normalizer((0.5,), (0.25,), torch.device("cpu")), list(callbacks), torch.device("cpu"), {})


def data(n=50):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_engine_epoch_equals_plain_reference_loop(optimizer):
    x, y = data()
    cfg = ExperimentConfig.model_validate({"seed": 3, "train": {"epochs": 2, "batch_size": 16, "optimizer": optimizer,
                                                                "lr": 0.05, "device": "cpu"}})
    model = small_model()
    ref = copy.deepcopy(model)
    trainer = make_trainer(cfg, model, x, y)
    trainer.fit()

    # The reference: the textbook loop over the same order of examples, no augmentation.
    gen = torch.Generator().manual_seed(3)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd" else \
        torch.optim.Adam(ref.parameters(), lr=0.05)
    lossf = nn.CrossEntropyLoss()
    for _ in range(2):
        ref.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), 16):
            idx = order[i:i + 16]
            xb = (x[idx].float() / 255 - 0.5) / 0.25
            opt.zero_grad()
            loss = lossf(ref(xb), y[idx])
            loss.backward()
            opt.step()
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(p1.float(), p2.float(), rtol=1e-4, atol=1e-5, msg=n1)
    assert [h["epoch"] for h in trainer.history] == [1, 2]
    assert set(trainer.history[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                                       "images_per_s"}


def test_lone_last_image_is_dropped_for_batchnorm():
    x, y = data(33)
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 1, "batch_size": 16, "device": "cpu"}})
    trainer = make_trainer(cfg, small_model(), x, y)
    assert trainer.steps_per_epoch == 2
    trainer.fit()  # would raise in BatchNorm with a batch of one


class Stopper(Callback):
    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == 2:
            trainer.request_stop(Stop(StopReason.CALLBACK, "enough"))


def test_callback_stops_the_loop():
    x, y = data()
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 10, "device": "cpu"}})
    trainer = make_trainer(cfg, small_model(), x, y, [Stopper()])
    trainer.fit()
    assert trainer.epoch == 2
    assert trainer.stop == Stop(StopReason.CALLBACK, "enough")


def test_a_loop_that_runs_every_epoch_records_max_epochs():
    x, y = data()
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 2, "device": "cpu"}})
    trainer = make_trainer(cfg, small_model(), x, y)
    trainer.fit()
    assert trainer.stop.reason is StopReason.MAX_EPOCHS


def test_a_stop_is_part_of_the_state_unless_the_run_is_extended():
    """A run killed after early stopping decided, before its final evaluation, resumes into the
    evaluation; extended (cnnlab resume --epochs N) it trains on."""
    x, y = data()
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 10, "device": "cpu"}})
    first = make_trainer(cfg, small_model(), x, y, [Stopper()])
    first.fit()
    state = first.state_dict()
    again = make_trainer(cfg, small_model(), x, y)
    again.load_state_dict(state)
    again.fit()
    assert again.epoch == 2 and again.stop == Stop(StopReason.CALLBACK, "enough")
    extended = make_trainer(cfg, small_model(), x, y)
    extended.load_state_dict(state, extend=True)
    extended.fit()
    assert extended.epoch == 10 and extended.stop.reason is StopReason.MAX_EPOCHS


def test_nan_loss_stops_with_reason():
    x, y = data()
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 5, "device": "cpu"}})
    model = small_model()
    with torch.no_grad():
        model.head[-1].weight.fill_(float("nan"))
    trainer = make_trainer(cfg, model, x, y)
    trainer.fit()
    assert trainer.stop.reason is StopReason.NON_FINITE_LOSS and trainer.epoch == 1
    assert trainer.history[0]["train_loss"] is None


def test_balanced_sampler_oversamples_rare_class():
    x = torch.zeros((110, 1, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0] * 100 + [1] * 10)
    cfg = ExperimentConfig.model_validate({"data": {"sampler": "balanced"}, "train": {"device": "cpu"}})
    trainer = make_trainer(cfg, small_model(), x, y)
    order = torch.cat([trainer.epoch_order() for _ in range(20)])
    share = (y[order] == 1).float().mean().item()
    assert 0.4 < share < 0.6


def test_predict_probabilities_sum_to_one():
    x, y = data(20)
    probs, loss = predict(small_model(), DeviceSplit(x, y), Normalizer((0.5,), (0.25,), torch.device("cpu")), 7,
                          loss_fn=nn.CrossEntropyLoss())
    assert probs.shape == (20, 3)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert math.isfinite(loss)


@pytest.mark.parametrize("tta", ["none", "flip_translate"])
def test_predict_pads_a_short_last_chunk_for_a_given_forward(tta):
    """With a (compiled) forward, every call sees the full chunk shape, and the padded images'
    outputs are dropped: probabilities and loss equal the eager ones, chunk by chunk."""
    x, y = data(23)
    norm = Normalizer((0.5,), (0.25,), torch.device("cpu"))
    model = small_model().eval()
    shapes = []

    def forward(inp):
        shapes.append(tuple(inp.shape))
        return model(inp)

    loss_fn = nn.CrossEntropyLoss()
    ref, ref_loss = predict(model, DeviceSplit(x, y), norm, 12, loss_fn=loss_fn, tta=tta)
    got, loss = predict(model, DeviceSplit(x, y), norm, 12, loss_fn=loss_fn, tta=tta, forward=forward)
    views = 6 if tta == "flip_translate" else 1
    chunk = 12 // views
    assert len(shapes) == math.ceil(23 / chunk) and set(shapes) == {(chunk * views, 1, 8, 8)}
    assert got.shape == (23, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    assert loss == pytest.approx(ref_loss, rel=1e-6)


def test_checked_forward_falls_back_to_eager_once_with_a_warning(monkeypatch):
    model = small_model().eval()
    calls = []

    def broken_compile(module, *a, **k):
        def run(inp):
            calls.append(len(inp))
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    fwd = CheckedForward(model)
    x = torch.randn(4, 1, 8, 8)
    with pytest.warns(RuntimeWarning, match="torch.compile failed in evaluation"):
        out = fwd(x)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))
        fwd(x)
    assert calls == [4] and fwd.compiled is None  # the compiler is tried once, then eager


def test_inference_setup_uses_channels_last_for_conv_nets_and_the_compile_switch(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m, **k: m)
    conv = Inference.of(small_model(), _cfg(compile=True).train)
    assert conv.channels_last and conv.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(conv.forward, CheckedForward) and not conv.model.training
    mlp = Inference.of(ImageClassifier(nn.Flatten(), nn.Linear(64, 3)), _cfg(channels_last=True).train)
    assert not mlp.channels_last and mlp.forward is None


def test_unavailable_device_is_user_error():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="not available"):
            resolve_device("cuda")


# ------------------------------------------------------------------- speed techniques (issue 3)
def _cfg(**train):
    return ExperimentConfig.model_validate({"seed": 3, "train": {"epochs": 2, "batch_size": 16, "optimizer": "sgd",
                                                                 "lr": 0.05, "device": "cpu", **train}})


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    """A compiler that fails on the first call: training warns, continues eagerly, and ends with
    exactly the weights of a run without train.compile (BatchNorm statistics put back)."""
    x, y = data()
    calls = []

    def broken_compile(module, *a, **k):
        def fails(inp):
            calls.append(1)
            module(inp)  # runs (and touches BatchNorm statistics) before failing, like a late compiler error
            raise RuntimeError("no C++ compiler found")
        return fails

    eager = make_trainer(_cfg(), small_model(), x, y)
    eager.fit()
    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled = make_trainer(_cfg(compile=True), small_model(), x, y)
    with pytest.warns(RuntimeWarning, match="train.compile: torch.compile failed in training"):
        compiled.fit()
    assert len(calls) == 1  # checked once, then eager for good (evaluation too)
    for (k, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.warns(RuntimeWarning, match="setup"):
        monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("unsupported")))
        make_trainer(_cfg(compile=True), small_model(), x, y).fit()


def test_compile_keeps_checkpoint_keys_and_results(monkeypatch):
    """With a working compiler (dynamo with the light 'eager' backend, fast on a CPU) the weights
    match an uncompiled run and the state_dict keys carry no `_orig_mod.` prefix."""
    x, y = data()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: real(m, backend="eager"))
    compiled = make_trainer(_cfg(compile=True), small_model(), x, y)
    compiled.fit()
    eager = make_trainer(_cfg(), small_model(), x, y)
    eager.fit()
    state = compiled.state_dict()["model"]
    assert list(state) == list(eager.model.state_dict())
    assert not any("_orig_mod" in k for k in state)
    # The one-off compilation is reported apart from the epoch's training time.
    assert compiled.history[0]["compile_seconds"] > 0 and "compile_seconds" not in compiled.history[1]
    assert "compile_seconds" not in eager.history[0]
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(state[k].float(), v.float(), rtol=1e-5, atol=1e-6, msg=k)


def test_a_changed_trainable_set_times_its_recompiling_step_as_compilation(monkeypatch):
    """torch.compile guards on requires_grad: the first step after a parameter is frozen (airbench's
    whitening bias) recompiles; that step is reported as compile_seconds, not training time."""
    x, y = data()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: real(m, backend="eager"))
    model = small_model()
    first = next(model.parameters())

    def on_epoch_start(epoch):  # freeze the first parameter before the third epoch
        if epoch >= 2:
            first.requires_grad_(False)

    model.on_epoch_start = on_epoch_start
    trainer = make_trainer(_cfg(compile=True, epochs=4), model, x, y)
    trainer.fit()
    assert ["compile_seconds" in h for h in trainer.history] == [True, False, True, False]


def _symmetric(n=12):
    x, y = data(n)
    half = x[..., :4]
    return torch.cat([half, half.flip(3)], dim=3), y  # (N, 1, 8, 8), mirror-symmetric


def test_tta_flip_on_symmetric_images_equals_no_tta():
    x, y = _symmetric()
    norm = Normalizer((0.5,), (0.25,), torch.device("cpu"))
    plain, _ = predict(small_model(), DeviceSplit(x, y), norm, 5)
    flip, _ = predict(small_model(), DeviceSplit(x, y), norm, 5, tta="flip")
    np.testing.assert_allclose(flip, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tta", ["flip", "flip_translate"])
def test_tta_averages_logits_of_the_views(tta):
    x, y = data(10)
    norm = Normalizer((0.5,), (0.25,), torch.device("cpu"))
    model = small_model().eval()
    probs, loss = predict(model, DeviceSplit(x, y), norm, 7, loss_fn=nn.CrossEntropyLoss(), tta=tta)
    assert probs.shape == (10, 3) and math.isfinite(loss)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    xf = norm(x)
    with torch.no_grad():
        logits = 0.5 * model(xf) + 0.5 * model(xf.flip(3))
        if tta == "flip_translate":  # airbench: reflect-pad 1 and shift by one pixel both ways
            p = torch.nn.functional.pad(xf, (1, 1, 1, 1), mode="reflect")
            shifted = [p[:, :, 0:8, 0:8], p[:, :, 2:10, 2:10]]
            both = torch.stack([0.5 * model(s) + 0.5 * model(s.flip(3)) for s in shifted]).mean(0)
            logits = 0.5 * logits + 0.5 * both
    np.testing.assert_allclose(probs, logits.softmax(1).numpy(), rtol=1e-4, atol=1e-6)
    with pytest.raises(UserError, match="tta"):
        predict(model, DeviceSplit(x, y), norm, 7, tta="rotate")


class Recorder(Callback):
    """The model's state after every optimizer step."""

    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, step, steps):
        self.states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})


def test_ema_weights_follow_the_ema_formula_and_are_used_for_evaluation():
    x, y = data()
    model = small_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    ema, rec = WeightEMA(model, decay=0.8, every=2), Recorder()
    trainer = make_trainer(_cfg(), model, x, y, [ema, rec])
    trainer.fit()
    expected = init
    for step, state in enumerate(rec.states, start=1):
        if step % 2 == 0:
            expected = {k: (0.8 * expected[k] + 0.2 * v) if v.is_floating_point() else v for k, v in state.items()}
    got = ema.average.state_dict()
    assert len(rec.states) == 8
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert trainer.eval_module is ema.average
    probs, _, _ = trainer.evaluate(trainer.train)
    ref, _ = predict(ema.average, trainer.train, trainer.norm, 64)
    np.testing.assert_allclose(probs, ref, rtol=1e-6)


def test_lookahead_copies_the_average_back():
    x, y = data()
    model = small_model()
    ema = WeightEMA(model, decay=0.5, every=3, mode="lookahead", ramp="cubic")
    trainer = make_trainer(_cfg(epochs=1), model, x, y, [ema])
    trainer.fit()  # 4 steps: the update at step 3 copied the average into the model, step 4 moved it
    trainer.optimizer.zero_grad()
    ema.on_train_batch_end(trainer, 0, 1)  # step 5: no update
    ema.on_train_batch_end(trainer, 0, 1)  # step 6: update with decay 0.5 * (6/4 -> 1)^3, then copy back
    for (k, a), b in zip(model.state_dict().items(), ema.average.state_dict().values()):
        assert torch.equal(a, b), k


class InterruptAfter(Callback):
    """A kill right after the end of an epoch (its state complete, as in its checkpoint)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_resume_is_exact_with_ema_alternating_flips_and_bn_groups():
    """Interrupt after epoch 1, restore the trainer state into a fresh trainer, finish: the model, the
    EMA average and the optimizer end bitwise equal to an uninterrupted run."""
    x, y = data()
    cfg = ExperimentConfig.model_validate({
        "seed": 5, "data": {"augment": {"crop_padding": 1, "hflip": "alternate"}},
        "train": {"epochs": 3, "batch_size": 16, "optimizer": "sgd", "lr": 0.05, "device": "cpu",
                  "bn_bias_lr_scale": 8.0, "scheduler": "onecycle"}})

    def trainer(*extra):
        model = small_model()
        return make_trainer(cfg, model, x, y, [WeightEMA(model, 0.9, 1, "ema", "cubic"), *extra])

    full = trainer()
    full.fit()
    first = trainer(InterruptAfter(1))
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    state = first.state_dict()
    second = trainer()
    second.load_state_dict(state)
    second.fit()
    for a, b in ((full.model, second.model), (full.callbacks[0].average, second.callbacks[0].average)):
        for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(v, w), k
    assert [g["lr"] for g in full.optimizer.param_groups] == [g["lr"] for g in second.optimizer.param_groups]


def test_alternating_flips_in_the_trainer_alternate_per_image():
    x, y = data(32)
    cfg = ExperimentConfig.model_validate({"data": {"augment": {"hflip": "alternate"}},
                                           "train": {"epochs": 1, "batch_size": 8, "device": "cpu"}})
    trainer = make_trainer(cfg, small_model(), x, y)
    base = trainer.flip_base.clone()
    assert base.shape == (32,) and 0 < int(base.sum()) < 32

    idx = torch.arange(32)
    masks = [alternating_flip_mask(trainer.flip_base, idx, e) for e in range(4)]
    assert torch.equal(masks[0], base)
    for a, b in zip(masks, masks[1:]):
        assert torch.equal(a, ~b)  # every image flips state from one epoch to the next
    # Same seed -> same base (a resumed run rebuilds it), another seed -> other flips.
    assert torch.equal(make_trainer(cfg, small_model(), x, y).flip_base, base)


def test_epoch_steps_keep_or_drop_the_last_batch():
    assert epoch_steps(100, 32) == 4  # the last 4 images form a 4th batch
    assert epoch_steps(100, 32, drop_last=True) == 3
    assert epoch_steps(65, 32) == 2  # a last batch of 1 image cannot train BatchNorm: skipped
    assert epoch_steps(66, 32, processes=4) == 2  # 2 images cannot give each of 4 processes one
    assert epoch_steps(67, 32, processes=2) == 3
    assert epoch_steps(10, 32, drop_last=True) == 1  # fewer images than one batch: one short batch


def test_per_step_schedule_changes_the_lr_after_every_optimizer_step():
    """interval = "step": the engine steps the scheduler after each optimizer step, so the lr of step
    i is the schedule's value at i (here 4 steps per epoch: 50 images, batch 16, last of 2 kept)."""
    x, y = data()

    class Lrs(Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_end(self, trainer, step, steps):
            self.lrs.append(trainer.current_lr())

    rec = Lrs()
    sched = {"name": "linear", "start_factor": 0.5, "peak": 0.5, "end_factor": 0.0, "interval": "step"}
    trainer = make_trainer(_cfg(epochs=2, lr=1.0, scheduler=sched), small_model(), x, y, [rec])
    trainer.fit()
    # The lr read after step i is the one for step i + 1: 0.5 + 0.5 * (i + 1) / 4 while rising over
    # the first 4 steps, then falling linearly to 0 at step 8.
    assert rec.lrs == pytest.approx([0.625, 0.75, 0.875, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert trainer.history[-1]["lr"] == pytest.approx(0.0)


_FAULTS = """
import resource, torch
from cnnlab.train import device
# One thread: with OpenMP workers allocating at the same time, glibc may serve the main thread from
# another arena, whose heaps cannot hold 64 MiB, and map the block afresh whatever the setting.
device.prepare_process(torch.device("cpu"), threads=1)
n = 64 * 2**20 // 4  # a 64 MiB float32 block, above glibc's largest automatic mmap threshold
faults = []
for _ in range(8):  # allocate, touch and free the same size again and again
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(n).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(device._host_tuned, min(faults[1:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning is for glibc's malloc")
def test_cpu_device_keeps_freed_blocks_instead_of_faulting_them_back_in():
    """After prepare_process(cpu) a freed 64 MiB block comes back from the heap: some re-allocation
    of it costs no page fault (glibc does not always place it where the freed one was, so not every
    one). With CNNLAB_MALLOPT=0 glibc unmaps it on free and every re-allocation faults all its
    16,384 pages in again."""
    def faults(env):
        out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
        tuned, n = out.stdout.split()
        return tuned == "True", int(n)

    tuned, n = faults({})
    assert tuned and n < 100, n
    tuned, n = faults({"CNNLAB_MALLOPT": "0"})
    assert not tuned and n > 10_000, n


# ------------------------------------------------------------------------ [log] every_steps
class BatchRecorder(Callback):
    """Each step's batch loss and accuracy, read from ``trainer.last_batch`` (after the StepWriter)."""

    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, step, steps):
        b = trainer.last_batch
        self.rows.append((trainer.epoch + 1, float(b.loss), int(b.correct) / b.size))


def test_step_writer_logs_every_nth_optimizer_step_across_epochs(tmp_path):
    x, y = data()  # 50 images at batch 16: 4 steps per epoch, 12 in 3 epochs
    rec = BatchRecorder()
    trainer = make_trainer(_cfg(epochs=3), small_model(), x, y, [StepWriter(tmp_path, 3), rec])
    trainer.fit()
    rows = rd.read_jsonl(tmp_path / rd.STEPS, ("step", "epoch", "loss", "acc"))
    assert [r["step"] for r in rows] == [3, 6, 9, 12] and [r["epoch"] for r in rows] == [1, 2, 3, 3]
    for r in rows:
        epoch, loss, acc = rec.rows[r["step"] - 1]
        assert (r["epoch"], r["loss"], r["acc"]) == (epoch, pytest.approx(loss, rel=1e-6), pytest.approx(acc))
    assert trainer.callbacks[0].state_dict() == {"step": 12}


def test_step_writer_resumes_without_gaps_or_repeats(tmp_path):
    """Interrupted after epoch 1, its lines of epoch 2 (past the checkpoint) and a torn last line
    left behind: the resumed run drops them and writes each step once."""
    x, y = data()
    cfg = _cfg(epochs=3)
    full_dir, run_dir = tmp_path / "full", tmp_path / "run"
    full_dir.mkdir()
    run_dir.mkdir()
    make_trainer(cfg, small_model(), x, y, [StepWriter(full_dir, 2)]).fit()
    first = make_trainer(cfg, small_model(), x, y, [StepWriter(run_dir, 2), InterruptAfter(1)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    state = first.state_dict()  # the checkpoint of epoch 1: step 4
    assert state["callbacks"]["StepWriter"] == {"step": 4}
    with open(run_dir / rd.STEPS, "a") as f:
        f.write('{"step": 6, "epoch": 2, "loss": 9.0, "acc": 0.0}\n{"step": 8, "ep')
    second = make_trainer(cfg, small_model(), x, y, [StepWriter(run_dir, 2)])
    second.load_state_dict(state)
    second.fit()
    got, want = rd.read_jsonl(run_dir / rd.STEPS), rd.read_jsonl(full_dir / rd.STEPS)
    assert [r["step"] for r in got] == [2, 4, 6, 8, 10, 12]
    assert got == want  # bitwise the same run, so the same values


def test_step_writer_reads_the_batch_only_on_logged_steps(tmp_path):
    """The other steps never touch the batch's tensors (reading them would wait for the device)."""
    writer = StepWriter(tmp_path, 2)
    trainer = SimpleNamespace(epoch=0, steps_per_epoch=4, last_batch=BatchResult(object(), object(), 8))
    writer.on_fit_start(trainer)
    writer.on_train_batch_end(trainer, 0, 4)  # step 1: an unreadable batch, not read
    trainer.last_batch = BatchResult(torch.tensor(0.5), torch.tensor(6), 8)
    writer.on_train_batch_end(trainer, 1, 4)
    assert rd.read_jsonl(tmp_path / rd.STEPS) == [{"step": 2, "epoch": 1, "loss": 0.5, "acc": 0.75}]


def test_step_writer_needs_a_positive_interval(tmp_path):
    with pytest.raises(UserError, match="every_steps"):
        StepWriter(tmp_path, 0)
