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


def bn_model():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.Linear(4, 2))


def test_default_has_one_param_group():
    opt = build_optimizer(bn_model(), TrainConfig(optimizer="sgd", lr=0.1))
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 6


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "cyclic", "linear", "step"])
def test_bn_bias_lr_scale_param_groups_survive_scheduler_and_checkpoint(scheduler):
    m = bn_model()
    t = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=1e-3, bn_bias_lr_scale=64.0, bn_weight_decay=0.0,
                    epochs=6, scheduler=scheduler)
    opt = build_optimizer(m, t)
    groups = {g["name"]: g for g in opt.param_groups}
    assert [g["name"] for g in opt.param_groups] == ["other", "bn_weight", "bn_bias"]  # logged lr = group 0
    assert groups["bn_bias"]["params"] == [m[1].bias] and groups["bn_weight"]["params"] == [m[1].weight]
    assert len(groups["other"]["params"]) == 4
    assert groups["bn_bias"]["lr"] == pytest.approx(6.4) and groups["other"]["lr"] == pytest.approx(0.1)
    # The bias group's decay per step lr * wd equals the others' (airbench's bias_scaler); BN wd = 0 here.
    assert groups["bn_bias"]["weight_decay"] == 0.0 and groups["other"]["weight_decay"] == 1e-3
    sched, _ = build_scheduler(opt, t)
    for _ in range(3):
        opt.step()
        sched.step()
        other, _, bias = (g["lr"] for g in opt.param_groups)
        assert bias == pytest.approx(64 * other)  # every scheduler keeps the ratio
    # Checkpoint round trip with several groups.
    opt2 = build_optimizer(bn_model(), t)
    sched2, _ = build_scheduler(opt2, t)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]


def test_bn_weight_decay_is_divided_by_the_bias_scale():
    t = TrainConfig(optimizer="sgd", lr=0.5, weight_decay=2e-3, bn_bias_lr_scale=4.0)
    g = {g["name"]: g for g in build_optimizer(bn_model(), t).param_groups}
    assert g["bn_bias"]["lr"] * g["bn_bias"]["weight_decay"] == pytest.approx(0.5 * 2e-3)
    assert g["bn_weight"]["weight_decay"] == 2e-3


def test_linear_schedule_rises_then_decays():
    m = model()
    t = TrainConfig(optimizer="sgd", lr=1.0, epochs=10, scheduler={"name": "linear", "start_factor": 0.2,
                                                                   "peak": 0.2, "end_factor": 0.1})
    opt = build_optimizer(m, t)
    sched, _ = build_scheduler(opt, t)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.2) and lrs[2] == pytest.approx(1.0) and lrs[10] == pytest.approx(0.1)
    assert lrs[:3] == sorted(lrs[:3]) and lrs[2:] == sorted(lrs[2:], reverse=True)


def test_fused_kernels_are_used_when_available_and_skipped_when_not():
    from cnnlab.optim import _fused

    opt = build_optimizer(model(), TrainConfig(optimizer="adam"))
    assert opt.defaults.get("fused") in (True, None)  # None: a torch without fused kernels

    class NoFused(torch.optim.SGD):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("fused=True is not supported here")
            super().__init__(params, **kw)

    opt = _fused(NoFused, model().parameters(), lr=0.1)
    assert isinstance(opt, NoFused) and len(opt.param_groups[0]["params"]) == 2
