"""The training engine: one loop for every experiment.

Each split lives on the training device as one uint8 tensor (N, C, H, W); an epoch is a
permutation drawn from the engine's own generator, batches are index slices, and augmentation
and normalization run on whole batches on the device. Loss and accuracy are summed on the device
and read once per epoch, so the step itself never waits for the host.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn

from .augment import Normalizer, augment_batch
from .callbacks import Callback
from .config import ExperimentConfig
from .errors import UserError


# ------------------------------------------------------------------------------ device setup
def resolve_device(name: str) -> torch.device:
    """``auto`` = cuda, then mps, then cpu. An unavailable explicit device is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device = {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if dev.type not in available or not available[dev.type]():
        raise UserError(f"train.device = {name!r} is not available on this machine; use auto or cpu.")
    return dev


# Mixed precision: `auto` is bf16 on CUDA (no loss scaling needed) and fp32 elsewhere.
_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp16" and device.type == "cpu":
        raise UserError("train.precision = 'fp16' needs a GPU; on the CPU use fp32 or bf16.")
    return _AMP[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def seed_everything(seed: int, deterministic: bool) -> None:
    import os
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


# ------------------------------------------------------------------------------------- data
@dataclass
class DeviceSplit:
    """One split resident on the device: x uint8 (N, C, H, W), y int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, split, device: torch.device) -> "DeviceSplit":
        return cls(split.x.to(device), split.y.to(device))

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _output_probs(model: nn.Module, out: torch.Tensor) -> torch.Tensor:
    # A softmax_output model (the seeds' mistake, reproduced on request) already returns probabilities.
    return out.float() if getattr(model, "softmax_output", False) else out.float().softmax(dim=1)


@torch.no_grad()
def predict(model: nn.Module, split: DeviceSplit, norm: Normalizer, batch_size: int,
            amp: torch.dtype | None = None, loss_fn: nn.Module | None = None,
            channels_last: bool = False) -> tuple[np.ndarray, float | None]:
    """Eval-mode probabilities (N, K) float32 and the mean loss (None without ``loss_fn``)."""
    model.eval()
    device = split.x.device
    probs, loss_sum = [], torch.zeros((), device=device)
    for i in range(0, len(split), batch_size):
        x = norm(split.x[i:i + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = model(x)
        if loss_fn is not None:
            y = split.y[i:i + batch_size]
            loss_sum += loss_fn(out.float(), y).float() * len(y)
        probs.append(_output_probs(model, out))
    k = probs[0].shape[1] if probs else 0
    p = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, k), np.float32)
    loss = float(loss_sum) / max(1, len(split)) if loss_fn is not None else None
    return p, loss


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Owns the model, optimizer, scheduler, callbacks and the epoch counter; ``fit`` trains from the
    current epoch to ``cfg.train.epochs`` unless a callback sets ``should_stop``."""

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, loss_fn: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, sched_monitor: str | None,
                 train: DeviceSplit, val: DeviceSplit | None, norm: Normalizer,
                 callbacks: Sequence[Callback], device: torch.device, meta: dict[str, Any],
                 class_counts: np.ndarray | None = None, resolved_config: dict | None = None):
        self.cfg, self.t = cfg, cfg.train
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.scheduler, self.sched_monitor = scheduler, sched_monitor
        self.train, self.val, self.norm = train, val, norm
        self.callbacks, self.device, self.meta = list(callbacks), device, meta
        self.resolved_config = resolved_config or {}
        self.amp = amp_dtype(self.t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.channels_last = self.t.channels_last and has_conv(model)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg.seed)
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.stop_reason: str | None = None
        n, bs = len(train), self.t.batch_size
        # A last batch of one image cannot train BatchNorm: drop it (it is seen in other epochs).
        self.steps_per_epoch = max(1, n // bs if n % bs == 1 and n > bs else math.ceil(n / bs))
        self.n_seen = min(n, self.steps_per_epoch * bs)
        if cfg.data.sampler == "balanced":
            counts = torch.bincount(train.y, minlength=int(train.y.max()) + 1).float()
            self.sample_weight = (1.0 / counts.clamp(min=1))[train.y]  # (N,): each class equally likely
        else:
            self.sample_weight = None
        self._running = (torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0, 0.0)

    # ------------------------------------------------------------------------------- loop
    def fit(self) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.epoch < self.t.epochs and not self.should_stop:
            for cb in self.callbacks:
                cb.on_epoch_start(self)
            t0 = time.perf_counter()
            train_loss, train_acc = self.train_epoch()
            seconds = time.perf_counter() - t0
            _, val_loss, val_acc = self.evaluate(self.val) if self.val is not None else (None, None, None)
            logs = {"epoch": self.epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                    "val_loss": val_loss, "val_acc": val_acc, "lr": self.current_lr(),
                    "seconds": round(seconds, 4), "images_per_s": round(self.n_seen / max(seconds, 1e-9), 1)}
            self.epoch += 1
            if not all(v is None or math.isfinite(v) for v in (train_loss, val_loss)):
                self.should_stop, self.stop_reason = True, "nan"
                logs.update({k: None for k in ("train_loss", "val_loss") if logs[k] is not None and not math.isfinite(logs[k])})
            else:
                self.step_scheduler(logs)
            self.history.append(logs)
            for cb in self.callbacks:
                cb.on_epoch_end(self, logs)
        for cb in self.callbacks:
            cb.on_fit_end(self)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training split; returns (mean loss, accuracy) over the images seen."""
        self.model.train()
        t, x_all, y_all = self.t, self.train.x, self.train.y
        aug = self.cfg.data.augment
        order = self.epoch_order()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        start = time.perf_counter()
        for step in range(self.steps_per_epoch):
            idx = order[step * t.batch_size:(step + 1) * t.batch_size]
            x = self.norm(augment_batch(x_all[idx], aug.crop_padding, aug.hflip, self.gen))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y_all[idx]
            with autocast(self.device, self.amp):
                out = self.model(x)
                loss = self.loss_fn(out.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += loss.detach().float() * len(idx)
            correct += (out.detach().argmax(dim=1) == y).sum()
            self._running = (loss_sum, correct, (step + 1) * t.batch_size, start)
            for cb in self.callbacks:
                cb.on_train_batch_end(self, step, self.steps_per_epoch)
        n = min(self.n_seen, len(order))
        return float(loss_sum) / n, float(correct) / n

    def epoch_order(self) -> torch.Tensor:
        """Indices of this epoch's images: a permutation, or a class-balanced draw with replacement."""
        n = len(self.train)
        if self.sample_weight is not None:
            return torch.multinomial(self.sample_weight, n, replacement=True, generator=self.gen)
        return torch.randperm(n, device=self.device, generator=self.gen)

    def evaluate(self, split: DeviceSplit) -> tuple[np.ndarray, float, float]:
        """(probabilities (N, K), mean loss, accuracy) in eval mode."""
        probs, loss = predict(self.model, split, self.norm, self.t.eval_batch_size, self.amp, self.loss_fn,
                              self.channels_last)
        acc = float((probs.argmax(1) == split.y.cpu().numpy()).mean()) if len(split) else float("nan")
        return probs, loss, acc

    def step_scheduler(self, logs: dict[str, Any]) -> None:
        if self.sched_monitor is not None:
            value = logs.get(self.sched_monitor)
            if value is None:
                raise UserError(f"train.scheduler.monitor = {self.sched_monitor!r} is not recorded in this run "
                                f"(no validation split?); use train_loss or train_acc, or set data.val_fraction > 0.")
            self.scheduler.step(value)
        else:
            self.scheduler.step()

    # ---------------------------------------------------------------------------- helpers
    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def running_metrics(self) -> tuple[float, float]:
        loss_sum, correct, seen, _ = self._running
        seen = max(1, min(seen, len(self.train)))
        return float(loss_sum) / seen, float(correct) / seen

    def running_rate(self) -> float:
        _, _, seen, start = self._running
        return seen / max(time.perf_counter() - start, 1e-9)

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, scheduler, scaler, callbacks,
        RNG states, the epoch counter and history, and the run's config and data metadata."""
        rng = {"torch": torch.get_rng_state(), "gen": self.gen.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "epoch": self.epoch,
            "history": list(self.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
            "rng": rng,
            "config": self.resolved_config,
            "meta": self.meta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for cb in self.callbacks:
            if type(cb).__name__ in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][type(cb).__name__])
        torch.set_rng_state(state["rng"]["torch"])
        self.gen.set_state(state["rng"]["gen"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
