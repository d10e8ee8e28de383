import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.errors import UserError
from cnnlab.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler


def model():
    return torch.nn.Linear(3, 2)


@pytest.mark.parametrize("name", [e.name for e in OPTIMIZERS])
def test_every_optimizer_steps(name):
    m = model()
    opt = build_optimizer(m, TrainConfig(optimizer=name, lr=0.1, weight_decay=1e-4))
    before = m.weight.detach().clone()
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert not torch.equal(before, m.weight)


def test_sgd_settings_reach_torch():
    opt = build_optimizer(model(), TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4))
    g = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and g["momentum"] == 0.9 and g["nesterov"] and g["weight_decay"] == 5e-4


@pytest.mark.parametrize("name", [e.name for e in SCHEDULERS])
def test_every_scheduler_steps_per_epoch(name):
    t = TrainConfig(epochs=10, lr=0.1, scheduler={"name": name})
    opt = build_optimizer(model(), t)
    sched, monitor = build_scheduler(opt, t)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(1.0) if monitor else sched.step()
    assert all(lr > 0 for lr in lrs)


def test_step_and_cosine_values():
    t = TrainConfig(epochs=4, lr=1.0, scheduler={"name": "step", "step_size": 2, "gamma": 0.5})
    opt = build_optimizer(model(), t)
    sched, _ = build_scheduler(opt, t)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5]


def test_warmup_ramps_then_hands_over():
    t = TrainConfig(epochs=6, lr=1.0, scheduler={"name": "cosine", "warmup_epochs": 2})
    opt = build_optimizer(model(), t)
    sched, _ = build_scheduler(opt, t)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0) and lrs[-1] < 1.0


def test_warmup_with_plateau_is_refused():
    t = TrainConfig(scheduler={"name": "plateau", "warmup_epochs": 2})
    with pytest.raises(UserError, match="warmup"):
        build_scheduler(build_optimizer(model(), t), t)
