"""Optimizer and learning-rate scheduler registries.

Every schedule is given in epochs (step sizes, milestones, periods, the warmup). With
``interval = "epoch"`` (default) the trainer steps the scheduler once per epoch (``plateau`` with
the monitored metric); with ``interval = "step"`` after every optimizer step, and each factory
receives ``unit`` = optimizer steps per epoch and builds the same schedule in steps, so the lr
follows it smoothly within epochs (airbench's per-step triangle, OneCycle as published).
``warmup_epochs`` wraps any scheduler in a linear warmup (SequentialLR).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import TrainConfig, TransferConfig, entry_params
from ..errors import UserError
from ..models import NORM_TYPES, ImageClassifier
from ..registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULERS: Registry = Registry("scheduler")


# -------------------------------------------------------------------------------- optimizers
def _fused(cls: type[torch.optim.Optimizer], params, **kw) -> torch.optim.Optimizer:
    """``cls(params, fused=True, **kw)`` where this torch and device support it, else the default
    (foreach) implementation. The fused kernel updates all parameters in one pass, which makes the
    optimizer step faster (measured on the seed 002 MLP: docs/performance.md)."""
    params = list(params)
    try:
        return cls(params, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this torch, device or dtype
        return cls(params, **kw)


@OPTIMIZERS.register("sgd", summary="SGD with momentum, nesterov and weight decay")
def _sgd(params, t: TrainConfig):
    return _fused(torch.optim.SGD, params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0,
                  weight_decay=t.weight_decay)


@OPTIMIZERS.register("adam", summary="Adam (L2 weight decay)")
def _adam(params, t: TrainConfig):
    return _fused(torch.optim.Adam, params, lr=t.lr, weight_decay=t.weight_decay)


@OPTIMIZERS.register("adamw", summary="AdamW (decoupled weight decay)")
def _adamw(params, t: TrainConfig):
    return _fused(torch.optim.AdamW, params, lr=t.lr, weight_decay=t.weight_decay)


@OPTIMIZERS.register("rmsprop", summary="RMSprop with momentum")
def _rmsprop(params, t: TrainConfig):
    return torch.optim.RMSprop(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def param_groups(model: torch.nn.Module, train: TrainConfig, transfer: TransferConfig | None = None,
                 fixed: frozenset[str] = frozenset()) -> list[dict] | list[torch.nn.Parameter]:
    """The optimizer's parameters. With ``bn_bias_lr_scale == 1``, no ``bn_weight_decay`` and no
    per-group transfer lrs: one plain list (exactly the optimizer a model always had). Otherwise
    up to three groups, the rest first (so ``param_groups[0]["lr"]`` is the lr that is logged):
    the other parameters; the normalization layers' weights (weight decay ``bn_weight_decay``);
    their biases, with lr ``lr * bn_bias_lr_scale`` and weight decay ``bn_weight_decay /
    bn_bias_lr_scale``, so that with SGD only the gradient step grows while the decay per step
    (lr * weight_decay) stays the same (airbench's bias_scaler). Trainable parameters only; empty
    groups are left out. Normalization layers are those of ``NORM_TYPES`` (batch, group, layer and
    instance norm alike; the groups keep their "bn" names).

    ``transfer`` (a TransferConfig that is on): every parameter is included, frozen ones too
    (they get no gradient, so the optimizer skips them until an unfreeze makes them trainable,
    and the optimizer's layout is the same on resume), except ``fixed``, the names of parameters
    the model keeps fixed by design (airbench's whitening weights); with ``head_lr`` / ``backbone_lr`` the
    groups above are made twice, backbone (lr ``backbone_lr``) first, then the head's parameters
    (``model.head``, lr ``head_lr``), BatchNorm scaling applied within each."""
    include_all = transfer is not None and transfer.enabled
    fixed_ids = {id(p) for n, p in model.named_parameters() if n in fixed} if include_all else set()
    trainable = [p for p in model.parameters() if (p.requires_grad or include_all) and id(p) not in fixed_ids]
    split = include_all and (transfer.head_lr is not None or transfer.backbone_lr is not None)
    if train.bn_bias_lr_scale == 1.0 and train.bn_weight_decay is None and not split:
        return trainable
    norm_w: dict[int, torch.nn.Parameter] = {}
    norm_b: dict[int, torch.nn.Parameter] = {}
    stores = {"weight": norm_w, "bias": norm_b}  # a norm layer's own parameters by name (RMSNorm has no bias)
    chosen = {id(p) for p in trainable}
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            for pname, p in m.named_parameters(recurse=False):
                if pname in stores and id(p) in chosen:
                    stores[pname][id(p)] = p
    bn_wd = train.weight_decay if train.bn_weight_decay is None else train.bn_weight_decay
    scale = train.bn_bias_lr_scale
    head_ids = {id(p) for p in model.head.parameters()} if split and isinstance(model, ImageClassifier) else set()
    parts = [("", [p for p in trainable if id(p) not in head_ids],
              transfer.backbone_lr if split and transfer.backbone_lr is not None else train.lr)]
    if split:
        parts.append(("head_", [p for p in trainable if id(p) in head_ids],
                      transfer.head_lr if transfer.head_lr is not None else train.lr))
    groups = []
    for prefix, params, lr in parts:
        groups += [
            {"params": [p for p in params if id(p) not in norm_w and id(p) not in norm_b],
             "name": f"{prefix}other" if prefix else "other", "lr": lr},
            {"params": [p for p in params if id(p) in norm_w], "name": f"{prefix}bn_weight", "lr": lr, "weight_decay": bn_wd},
            {"params": [p for p in params if id(p) in norm_b], "name": f"{prefix}bn_bias", "lr": lr * scale,
             "weight_decay": bn_wd / scale},
        ]
    if split:
        groups[3]["name"] = "head"
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, train: TrainConfig, transfer: TransferConfig | None = None,
                    fixed: frozenset[str] = frozenset()) -> torch.optim.Optimizer:
    """The configured optimizer over :func:`param_groups` (BatchNorm and transfer groups when configured)."""
    return OPTIMIZERS.get(train.optimizer)(param_groups(model, train, transfer, fixed), train)


def _group_scales(opt: torch.optim.Optimizer, t: TrainConfig) -> list[float]:
    """Each param group's lr relative to train.lr (1.0 except a scaled BatchNorm-bias group): the
    schedulers that take absolute lrs (cyclic, onecycle) get one value per group, scaled alike."""
    return [g["lr"] / t.lr for g in opt.param_groups]


# -------------------------------------------------------------------------------- schedulers
class _P(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StepParams(_P):
    step_size: int = Field(30, ge=1, description="epochs between decays")
    gamma: float = Field(0.1, gt=0)


class MultiStepParams(_P):
    milestones: list[int] = Field(default_factory=lambda: [30, 60, 90], max_length=1000,
                                  description="epochs at which lr decays (increasing, from 1)")
    gamma: float = Field(0.1, gt=0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        # torch takes any list (a repeated milestone decays twice, a negative one never fires): refuse
        # what is almost certainly a typo instead of training with a schedule nobody meant.
        if any(m < 1 for m in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("milestones must be epochs from 1 in increasing order")
        return v


class CosineParams(_P):
    t_max: int | None = Field(None, ge=1, description="epochs of one half cosine; default = train.epochs - warmup")
    eta_min: float = Field(0.0, ge=0)


class PlateauParams(_P):
    monitor: Literal["val_loss", "val_acc", "train_loss", "train_acc"] = "val_loss"
    mode: Literal["min", "max"] = "min"
    factor: float = Field(0.1, gt=0, lt=1)
    patience: int = Field(10, ge=0)
    threshold: float = Field(1e-4, ge=0)
    min_lr: float = Field(0.0, ge=0)


class CyclicParams(_P):
    base_lr: float | None = Field(None, gt=0, description="lower bound; default = train.lr / 10")
    max_lr: float | None = Field(None, gt=0, description="upper bound; default = train.lr")
    step_size_up: int = Field(4, ge=1, description="epochs from low to high")
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"


class LinearParams(_P):
    start_factor: float = Field(0.2, gt=0, description="lr / train.lr at the start")
    peak: float = Field(0.23, ge=0, lt=1, description="fraction of the epochs spent rising linearly to train.lr")
    end_factor: float = Field(0.07, ge=0, description="lr / train.lr after the last epoch (linear decay)")


class OneCycleParams(_P):
    max_lr: float | None = Field(None, gt=0, description="peak lr; default = train.lr")
    pct_start: float = Field(0.3, gt=0, lt=1)


# Each factory: (optimizer, params, train config, epochs of the schedule, unit = scheduler steps per
# epoch: 1 for interval = "epoch", optimizer steps per epoch for interval = "step").
@SCHEDULERS.register("none", summary="constant learning rate")
def _none(opt, p, t: TrainConfig, epochs: int, unit: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)


@SCHEDULERS.register("step", params=StepParams, summary="decay by gamma every step_size epochs")
def _step(opt, p: StepParams, t, epochs, unit):
    return torch.optim.lr_scheduler.StepLR(opt, p.step_size * unit, p.gamma)


@SCHEDULERS.register("multistep", params=MultiStepParams, summary="decay by gamma at milestone epochs")
def _multistep(opt, p: MultiStepParams, t, epochs, unit):
    return torch.optim.lr_scheduler.MultiStepLR(opt, [m * unit for m in p.milestones], p.gamma)


@SCHEDULERS.register("cosine", params=CosineParams, summary="cosine annealing to eta_min")
def _cosine(opt, p: CosineParams, t, epochs, unit):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, (p.t_max or max(1, epochs)) * unit, p.eta_min)


@SCHEDULERS.register("plateau", params=PlateauParams, summary="ReduceLROnPlateau on a monitored metric")
def _plateau(opt, p: PlateauParams, t, epochs, unit):
    if unit != 1:
        raise UserError("train.scheduler = 'plateau' reacts to a metric measured once per epoch, so it cannot step "
                        "per optimizer step; set train.scheduler.interval = \"epoch\" (the default).")
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=p.mode, factor=p.factor, patience=p.patience, threshold=p.threshold, min_lr=p.min_lr)


@SCHEDULERS.register("cyclic", params=CyclicParams, summary="cyclic lr between base_lr and max_lr (step_size_up in epochs)")
def _cyclic(opt, p: CyclicParams, t, epochs, unit):
    scales = _group_scales(opt, t)
    return torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=[s * (p.base_lr or t.lr / 10) for s in scales], max_lr=[s * (p.max_lr or t.lr) for s in scales],
        step_size_up=p.step_size_up * unit, mode=p.mode, cycle_momentum=False)


@SCHEDULERS.register("onecycle", params=OneCycleParams, summary="one-cycle policy over the run")
def _onecycle(opt, p: OneCycleParams, t, epochs, unit):
    # One step more than the run takes: OneCycleLR refuses to be stepped past total_steps.
    return torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[s * (p.max_lr or t.lr) for s in _group_scales(opt, t)], total_steps=max(2, epochs * unit + 1),
        pct_start=p.pct_start, cycle_momentum=False)


@SCHEDULERS.register("linear", params=LinearParams,
                     summary="linear rise from start_factor to 1 over the first peak of the epochs, then linear decay to end_factor (airbench)")
def _linear(opt, p: LinearParams, t, epochs, unit):
    # Factor of train.lr after i scheduler steps, i = 0 .. epochs * unit (airbench's triangle when
    # unit = optimizer steps per epoch).
    total = epochs * unit
    rise = p.peak * total

    def factor(i: int) -> float:
        if i < rise:
            return p.start_factor + (1.0 - p.start_factor) * i / rise
        return 1.0 + (p.end_factor - 1.0) * (i - rise) / max(total - rise, 1e-9)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def build_scheduler(opt: torch.optim.Optimizer, train: TrainConfig, steps_per_epoch: int = 1):
    """The configured scheduler, wrapped in a linear warmup when ``warmup_epochs`` > 0; with
    ``interval = "step"`` built in optimizer steps (``steps_per_epoch`` of them per epoch), and the
    trainer steps it after every optimizer step. Returns (scheduler, monitor) where monitor names the
    metric a plateau scheduler steps on."""
    s = train.scheduler
    params = entry_params(s, SCHEDULERS)
    unit = max(1, steps_per_epoch) if s.interval == "step" else 1
    warm = s.warmup_epochs
    monitor = params.monitor if isinstance(params, PlateauParams) else None
    if warm and monitor is not None:
        raise UserError("train.scheduler.warmup_epochs does not combine with the plateau scheduler "
                        "(it reacts to a metric, not to the epoch count); use warmup with step, multistep, "
                        "cosine, cyclic or onecycle, or set warmup_epochs = 0.")
    main = SCHEDULERS.get(s.name)(opt, params, train, train.epochs - warm, unit)
    if warm:
        warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / (warm + 1), total_iters=warm * unit)
        main = torch.optim.lr_scheduler.SequentialLR(opt, [warmup, main], milestones=[warm * unit])
    return main, monitor
