"""The speed path must not change what is learned: one engine epoch equals a plain loop."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from cnnlab.augment import Normalizer
from cnnlab.callbacks import Callback
from cnnlab.config import ExperimentConfig
from cnnlab.engine import DeviceSplit, Trainer, predict, resolve_device
from cnnlab.errors import UserError
from cnnlab.optim import build_optimizer, build_scheduler


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def make_trainer(cfg, model, x, y, callbacks=()):
    opt = build_optimizer(model, cfg.train)
    sched, mon = build_scheduler(opt, cfg.train)
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
            trainer.should_stop = True


def test_callback_stops_the_loop():
    x, y = data()
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 10, "device": "cpu"}})
    trainer = make_trainer(cfg, small_model(), x, y, [Stopper()])
    trainer.fit()
    assert trainer.epoch == 2


def test_nan_loss_stops_with_reason():
    x, y = data()
    cfg = ExperimentConfig.model_validate({"train": {"epochs": 5, "device": "cpu"}})
    model = small_model()
    with torch.no_grad():
        model[-1].weight.fill_(float("nan"))
    trainer = make_trainer(cfg, model, x, y)
    trainer.fit()
    assert trainer.stop_reason == "nan" and trainer.epoch == 1
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


def test_unavailable_device_is_user_error():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UserError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="not available"):
            resolve_device("cuda")
