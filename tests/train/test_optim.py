import pytest
import torch

from cnnlab.config import TrainConfig
from cnnlab.errors import UserError
from cnnlab.models import NORM_TYPES, build_model
from cnnlab.train.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler


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


def _lrs(t: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The lr of every optimizer step of a run, stepping the scheduler as the engine does: after each
    optimizer step (interval = "step") or after each epoch's last one."""
    opt = build_optimizer(model(), t)
    sched, _ = build_scheduler(opt, t, steps_per_epoch)
    out = []
    for i in range(t.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if t.scheduler.interval == "step" or (i + 1) % steps_per_epoch == 0:
            sched.step()
    return out


def test_per_step_interval_follows_the_epoch_schedule_within_epochs():
    # airbench's triangle over 40 steps: 0.2 -> 1 over the first 8 (0.2 of them), then down to 0.1.
    sched = {"name": "linear", "start_factor": 0.2, "peak": 0.2, "end_factor": 0.1, "interval": "step"}
    lrs = _lrs(TrainConfig(optimizer="sgd", lr=1.0, epochs=10, scheduler=sched), 4)
    ref = [0.2 + 0.8 * i / 8 if i < 8 else 1.0 - 0.9 * (i - 8) / 32 for i in range(40)]
    assert lrs == pytest.approx(ref)
    # The same schedule per epoch changes the lr only at epoch boundaries, at the same points.
    per_epoch = _lrs(TrainConfig(optimizer="sgd", lr=1.0, epochs=10, scheduler={**sched, "interval": "epoch"}), 4)
    assert per_epoch[::4] == pytest.approx(lrs[::4]) and per_epoch[1] == per_epoch[0] != lrs[1]
    # Periods, milestones and the warmup are in epochs: a step decay every 2 epochs of 3 steps.
    step = _lrs(TrainConfig(lr=1.0, epochs=4, scheduler={"name": "step", "step_size": 2, "gamma": 0.5,
                                                          "interval": "step"}), 3)
    assert step == [1.0] * 6 + [0.5] * 6
    cos = _lrs(TrainConfig(lr=1.0, epochs=3, scheduler={"name": "cosine", "interval": "step"}), 5)
    assert cos[0] == 1.0 and cos == sorted(cos, reverse=True) and len(set(cos)) == 15
    warm = _lrs(TrainConfig(lr=1.0, epochs=4, scheduler={"name": "cosine", "warmup_epochs": 1, "interval": "step"}), 4)
    assert warm[:5] == sorted(warm[:5]) and warm[4] == pytest.approx(1.0) and warm[-1] < 1.0
    one = _lrs(TrainConfig(lr=1.0, epochs=3, scheduler={"name": "onecycle", "interval": "step"}), 10)
    assert max(one) == pytest.approx(1.0, rel=0.05) and one.index(max(one)) in range(8, 11)


def test_plateau_per_step_is_refused():
    t = TrainConfig(scheduler={"name": "plateau", "interval": "step"})
    with pytest.raises(UserError, match="per optimizer step"):
        build_scheduler(build_optimizer(model(), t), t, 10)


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
    from cnnlab.train.optim import _fused

    opt = build_optimizer(model(), TrainConfig(optimizer="adam"))
    assert opt.defaults.get("fused") in (True, None)  # None: a torch without fused kernels

    class NoFused(torch.optim.SGD):
        def __init__(self, params, fused=None, **kw):
            if fused:
                raise RuntimeError("fused=True is not supported here")
            super().__init__(params, **kw)

    opt = _fused(NoFused, model().parameters(), lr=0.1)
    assert isinstance(opt, NoFused) and len(opt.param_groups[0]["params"]) == 2


@pytest.mark.parametrize("norm", ["batch", "group", "layer", "instance"])
def test_every_cnn_norm_lands_in_the_bn_groups(norm):
    """Group, layer and instance norm weights get what BatchNorm's get: bn_weight_decay and the bias lr scale."""
    m = build_model({"name": "cnn", "channels": [4, 8], "hidden": [], "norm": norm, "norm_groups": 2}, (1, 8, 8), 3)
    t = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=5e-4, bn_bias_lr_scale=8.0, bn_weight_decay=0.0)
    groups = {g["name"]: g for g in build_optimizer(m, t).param_groups}
    norms = [c for c in m.modules() if isinstance(c, NORM_TYPES)]
    assert len(norms) == 2
    assert groups["bn_weight"]["params"] == [n.weight for n in norms] and groups["bn_weight"]["weight_decay"] == 0.0
    assert groups["bn_bias"]["params"] == [n.bias for n in norms] and groups["bn_bias"]["lr"] == pytest.approx(0.8)
    # conv weights (no conv bias: the norm follows the conv) and the head's Linear
    assert len(groups["other"]["params"]) == 2 + 2 and groups["other"]["weight_decay"] == 5e-4


def test_norm_layers_without_a_bias_put_their_weight_in_bn_weight():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4, bias=False), torch.nn.RMSNorm(4),
                            torch.nn.Linear(4, 2))
    g = {g["name"]: g for g in build_optimizer(m, TrainConfig(optimizer="sgd", bn_weight_decay=0.0)).param_groups}
    assert g["bn_weight"]["params"] == [m[1].weight, m[2].weight] and "bn_bias" not in g
