"""The training engine: one loop for every experiment.

Each split lives on the training device as one uint8 tensor (N, C, H, W); an epoch is a
permutation drawn from the engine's own generator, batches are index slices, and augmentation
and normalization run on whole batches on the device. Loss and accuracy are summed on the device
and read once per epoch, so the step itself never waits for the host.

With several processes (a :class:`~cnnlab.distributed.World` of size > 1) the same loop runs in
each: the permutation and the augmentation of each global batch are drawn identically everywhere,
each process trains on its contiguous share of the batch through DistributedDataParallel with its
loss scaled by its share, the epoch's loss and accuracy sums are all-reduced, evaluation is sharded
by whole evaluation batches and gathered in order, and the stop decision is collective.
"""

from __future__ import annotations

import math
import os
import platform
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import Normalizer, alternating_flip_mask, augment_batch, max_crop_padding
from .callbacks import Callback
from .config import ExperimentConfig
from .distributed import World, trainable_signature, wrap_model
from .errors import UserError


# ------------------------------------------------------------------------------ device setup
def resolve_device(name: str) -> torch.device:
    """``auto`` = cuda, then mps, then cpu. An unavailable explicit device is a UserError. Resolving
    to the CPU also tunes the host allocator (:func:`keep_freed_host_memory`)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        dev = torch.device("cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UserError(f"train.device = {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
        available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                     "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
        if dev.type not in available or not available[dev.type]():
            raise UserError(f"train.device = {name!r} is not available on this machine; use auto or cpu.")
    if dev.type == "cpu":
        keep_freed_host_memory()
    return dev


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_host_tuned: bool | None = None  # None: not tried yet in this process


def keep_freed_host_memory() -> bool:
    """Keep large freed CPU blocks in this process's heap instead of handing them back to the kernel;
    returns whether the allocator is tuned. Once per process; glibc only; ``CNNLAB_MALLOPT=0``
    leaves the allocator alone.

    Why: glibc returns every block above its mmap threshold (at most 32 MiB) to the kernel when it
    is freed, and the next batch page-faults the same memory back in, zero-filled. The conv
    activations of a 500-image CIFAR-10 batch are such blocks (51 MB for seed000_net1's first
    layer): evaluating 30,000 test images cost 1.7 million page faults and 7 s of kernel time on
    the 2-core development machine, and ran at half the speed (2.5-2.7k vs 5.3-6.1k images/s).
    jemalloc or tcmalloc through LD_PRELOAD (PyTorch's CPU tuning advice) avoid this too, but only
    when set before the process starts; glibc's own ``mallopt`` does it from inside. The cost: the
    process keeps its peak heap until it exits."""
    global _host_tuned
    if _host_tuned is not None:
        return _host_tuned
    _host_tuned = False
    if os.environ.get("CNNLAB_MALLOPT", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # Blocks up to 1 GiB come from the heap, and freed memory at the heap's top is never trimmed.
        _host_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        pass
    return _host_tuned


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


# ----------------------------------------------------------------------- test-time augmentation
def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) float -> same shape, content moved by (dy, dx) in {-1, 0, 1} pixels; the edge
    that comes in is reflected (airbench's F.pad(..., 'reflect'), which needs H, W >= 2)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H+2, W+2)
    return padded[:, :, 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def _mirror(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


# The views of each train.tta mode as (weight, view function) pairs; the model's outputs (logits)
# are averaged with these weights, as airbench's infer(tta_level) does: flip = (original + mirror)
# / 2; flip_translate = half the flip average plus half the flip average of the two 1-pixel
# translations (up-left, down-right).
TTA_VIEWS: dict[str, tuple[tuple[float, Callable[[torch.Tensor], torch.Tensor]], ...]] = {
    "none": ((1.0, _same),),
    "flip": ((0.5, _same), (0.5, _mirror)),
    "flip_translate": (
        (0.25, _same), (0.25, _mirror),
        (0.125, lambda x: _shift(x, -1, -1)), (0.125, lambda x: _mirror(_shift(x, -1, -1))),
        (0.125, lambda x: _shift(x, 1, 1)), (0.125, lambda x: _mirror(_shift(x, 1, 1))),
    ),
}


@torch.no_grad()
def predict(model: nn.Module, split: DeviceSplit, norm: Normalizer, batch_size: int,
            amp: torch.dtype | None = None, loss_fn: nn.Module | None = None,
            channels_last: bool = False, tta: str = "none",
            forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
            world: World | None = None) -> tuple[np.ndarray, float | None]:
    """Eval-mode probabilities (N, K) float32 and the mean loss (None without ``loss_fn``).

    ``tta``: a key of :data:`TTA_VIEWS`; the V views of a chunk of ``batch_size // V`` images run as
    one batch on the device and their outputs are averaged with the views' weights (logits, or
    probabilities for a softmax_output model) before softmax and loss. ``forward``: the callable
    that runs the model (a compiled version of it); default ``model`` itself. With a ``forward``
    given and more than one chunk, a short last chunk is padded with blank images to the full
    chunk and their outputs dropped: a compiled forward then sees one batch shape and never
    recompiles for the remainder (eval mode: no image's output depends on another's). ``world``: with
    several processes each runs a contiguous share of the chunks and every process gets all
    results in order; the chunks, and the order in which the loss is summed, are those of one
    process, so the numbers are bitwise the same as a single-process evaluation."""
    if tta not in TTA_VIEWS:
        raise UserError(f"train.tta = {tta!r} is not a test-time augmentation; use one of {', '.join(TTA_VIEWS)}.")
    world = world or World()
    views = TTA_VIEWS[tta]
    weights = torch.tensor([w for w, _ in views], device=split.x.device).view(-1, 1, 1)  # (V, 1, 1)
    chunk = max(1, batch_size // len(views))
    fwd = forward if forward is not None else model
    model.eval()
    device = split.x.device
    starts = range(0, len(split), chunk)
    lo, hi = world.bounds(len(starts))  # this process's chunks (all of them in one process)
    probs, terms = [], []
    pad = forward is not None and len(starts) > 1
    for i in starts[lo:hi]:
        xb = split.x[i:i + chunk]
        b = xb.shape[0]
        if pad and b < chunk:
            xb = torch.cat([xb, xb.new_zeros((chunk - b, *xb.shape[1:]))])  # (chunk, C, H, W)
        x = norm(xb)
        if len(views) > 1:
            x = torch.cat([view(x) for _, view in views])  # (V*B, C, H, W), view-major
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = fwd(x)
        if len(views) > 1:
            out = (out.float().view(len(views), xb.shape[0], -1) * weights).sum(0)  # (chunk, K)
        out = out[:b]  # the padding's outputs go
        if loss_fn is not None:
            y = split.y[i:i + chunk]
            terms.append(loss_fn(out.float(), y).float() * len(y))  # () float32: the chunk's summed loss
        probs.append(_output_probs(model, out))
    k = probs[0].shape[1] if probs else 0
    p = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, k), np.float32)
    if world.enabled:
        local_terms = torch.stack(terms).cpu() if terms else torch.zeros(0)
        parts = world.all_gather((p, local_terms))
        p = np.concatenate([q for q, _ in parts if len(q)] or [p])
        terms = list(torch.cat([t for _, t in parts]))
    # Summed one chunk at a time in chunk order, in float32: the same additions (so the same bits)
    # whether one process or several evaluated the chunks.
    loss_sum = torch.zeros((), device=terms[0].device if terms else device)
    for t in terms:
        loss_sum += t
    loss = float(loss_sum) / max(1, len(split)) if loss_fn is not None else None
    return p, loss


class CheckedForward:
    """A compiled forward for evaluation that falls back to eager: the first call runs the compiled
    module (compiling it) and, if that raises, warns and uses ``model`` from then on. Evaluation
    changes no state, so the failed call is simply run again eagerly. ``compile_seconds``: the wall
    time of that first call (the compilation, reported apart from evaluation speed)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.compiled = _compile(model)
        self.checked = False
        self.compile_seconds = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.model(x)
        if self.checked:
            return self.compiled(x)
        t0 = time.perf_counter()
        try:
            out = self.compiled(x)
        except Exception as e:  # any compiler failure: no C++ compiler, unsupported op, backend error
            self.compiled = None
            _warn_compile(e, "evaluation")
            return self.model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        self.checked, self.compile_seconds = True, time.perf_counter() - t0
        return out


@dataclass
class Inference:
    """A trained model set up for evaluation with fixed weights (``cnnlab evaluate`` / ``predict``):
    eval mode, channels_last for conv nets when ``train.channels_last``, and with ``train.compile``
    a :class:`CheckedForward` (None: run the model eagerly). Pass ``model``, ``forward`` and
    ``channels_last`` to :func:`predict`."""

    model: nn.Module
    forward: CheckedForward | None
    channels_last: bool

    @classmethod
    def of(cls, model: nn.Module, train_cfg) -> "Inference":
        if train_cfg.threads:
            torch.set_num_threads(train_cfg.threads)
        channels_last = bool(train_cfg.channels_last) and has_conv(model)
        if channels_last:
            # oneDNN's NHWC convolutions: 1.7x the NCHW speed on the 2-core development CPU.
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        return cls(model, CheckedForward(model) if train_cfg.compile else None, channels_last)


# ---------------------------------------------------------------------------------- trainer
class Trainer:
    """Owns the model, optimizer, scheduler, callbacks and the epoch counter; ``fit`` trains from the
    current epoch to ``cfg.train.epochs`` unless a callback sets ``should_stop``.

    ``world``: this process's place in a data-parallel job (default: one process). With several
    processes, ``model`` stays the plain module (state_dict, evaluation, callbacks use it) and
    ``train_module`` is its DistributedDataParallel wrapper that training forwards run through."""

    def __init__(self, cfg: ExperimentConfig, model: nn.Module, loss_fn: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, sched_monitor: str | None,
                 train: DeviceSplit, val: DeviceSplit | None, norm: Normalizer,
                 callbacks: Sequence[Callback], device: torch.device, meta: dict[str, Any],
                 class_counts: np.ndarray | None = None, resolved_config: dict | None = None,
                 world: World | None = None):
        self.cfg, self.t = cfg, cfg.train
        self.world = world or World()
        if self.world.enabled and cfg.train.batch_size < self.world.size:
            raise UserError(f"train.batch_size = {cfg.train.batch_size} is the global batch and must be at least the "
                            f"number of processes ({self.world.size}): each process trains on its share of it.")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.scheduler, self.sched_monitor = scheduler, sched_monitor
        self.train, self.val, self.norm = train, val, norm
        self.callbacks, self.device, self.meta = list(callbacks), device, meta
        self.resolved_config = resolved_config or {}
        self.amp = amp_dtype(self.t.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.channels_last = self.t.channels_last and has_conv(model)
        # The module training forwards run through: DDP around the model with several processes.
        self.train_module = wrap_model(model, self.world, device)
        self._trainable = trainable_signature(model)  # the set the DDP wrapper and compiled step last saw
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg.seed)
        # Evaluation uses this module when a callback sets it (the EMA weights), else self.model.
        self.eval_module: nn.Module | None = None
        # train.compile: the compiled forward for training and for evaluation; each is checked on its
        # first use and replaced by eager with a warning if it fails (evaluation: CheckedForward).
        # In one process both share one compiled module. self.model stays the uncompiled module, so
        # state_dict keys (and checkpoints) are the same with or without it.
        self._compiled_eval = CheckedForward(model) if self.t.compile else None
        self._compiled_train = (self._compiled_eval.compiled if not self.world.enabled else _compile(self.train_module)) \
            if self.t.compile else None
        self._train_unchecked = True  # the next compiled training step is its first (it compiles)
        # Wall time of the compiled training steps that (re)compiled: the first one, and the first
        # after each change of the trainable set.
        self.compile_seconds = 0.0
        # hflip = "alternate": each training image's flip in epoch 0, (N,) bool, drawn once from the
        # engine generator (so a resumed run, which rebuilds the trainer from the seed, gets the same).
        aug = cfg.data.augment
        side = min(train.x.shape[-2:]) if train.x.dim() == 4 else 0
        most = max_crop_padding(aug.padding_mode, side)
        if aug.crop_padding and most is not None and aug.crop_padding > most:
            raise UserError(f"data.augment.crop_padding = {aug.crop_padding} is too large for padding_mode = "
                            f"{aug.padding_mode!r} on {side}-pixel images: a mirrored border can be at most "
                            f"{most} pixels; use a smaller crop_padding or padding_mode = \"constant\" or \"edge\".")
        self.flip_base = (torch.rand(len(train), device=device, generator=self.gen) < 0.5
                          if aug.hflip == "alternate" else None)
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.should_stop = False
        self.stop_reason: str | None = None
        n, bs = len(train), self.t.batch_size
        self.steps_per_epoch = epoch_steps(n, bs, self.world.size, self.t.drop_last)
        self.n_seen = min(n, self.steps_per_epoch * bs)
        self._per_step_schedule = cfg.train.scheduler.interval == "step"
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
        # Every process starts from rank 0's EMA average (a callback may have copied its own model).
        self.world.sync_state(self.eval_module)
        while self.epoch < self.t.epochs and not self.should_stop:
            # A model's own schedule (airbench freezes its whitening bias after a few epochs): a pure
            # function of the epoch, so a resumed run sets the same state.
            if hasattr(self.model, "on_epoch_start"):
                self.model.on_epoch_start(self.epoch)
            for cb in self.callbacks:
                cb.on_epoch_start(self)
            t0, compile_before = time.perf_counter(), self.compile_seconds
            train_loss, train_acc = self.train_epoch()
            # Rank 0's BatchNorm statistics and EMA average everywhere: what it saves is what all evaluate.
            self.world.sync_state(self.model, buffers_only=True)
            self.world.sync_state(self.eval_module)
            # Training time excludes the one-off compilation (reported as compile_seconds instead).
            compiled_now = self.compile_seconds - compile_before
            seconds = time.perf_counter() - t0 - compiled_now
            _, val_loss, val_acc = self.evaluate(self.val) if self.val is not None else (None, None, None)
            logs = {"epoch": self.epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                    "val_loss": val_loss, "val_acc": val_acc, "lr": self.current_lr(),
                    "seconds": round(seconds, 4), "images_per_s": round(self.n_seen / max(seconds, 1e-9), 1)}
            if compiled_now:
                logs["compile_seconds"] = round(compiled_now, 3)
            self.epoch += 1
            if not all(v is None or math.isfinite(v) for v in (train_loss, val_loss)):
                self.should_stop, self.stop_reason = True, "nan"
                logs.update({k: None for k in ("train_loss", "val_loss") if logs[k] is not None and not math.isfinite(logs[k])})
            elif not self._per_step_schedule:
                self.step_scheduler(logs)
            self.history.append(logs)
            for cb in self.callbacks:
                cb.on_epoch_end(self, logs)
            # One decision for all processes, so none waits in a collective for one that has left.
            self.should_stop, self.stop_reason = self.world.agree_stop(self.should_stop, self.stop_reason)
        for cb in self.callbacks:
            cb.on_fit_end(self)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training split; returns (mean loss, accuracy) over the images seen."""
        self.model.train()
        # Frozen BatchNorm layers (transfer learning) stay in eval mode: their statistics do not move.
        for m in getattr(self.model, "frozen_modules", ()):
            m.eval()
        t, x_all, y_all = self.t, self.train.x, self.train.y
        aug = self.cfg.data.augment
        world = self.world
        self._follow_trainable_set()
        if world.enabled:
            self._prepare_distributed_epoch()
        order = self.epoch_order()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        start, seen = time.perf_counter(), 0
        for step in range(self.steps_per_epoch):
            idx = order[step * t.batch_size:(step + 1) * t.batch_size]  # the global batch (B,)
            flips = alternating_flip_mask(self.flip_base, idx, self.epoch) if self.flip_base is not None else None
            # The whole global batch is augmented in every process: the generator then draws the same
            # numbers everywhere (and as in one process), so permutations never diverge.
            xb = augment_batch(x_all[idx], aug.crop_padding, aug.hflip, self.gen, flips, aug.padding_mode)
            scale: torch.Tensor | float = 1.0
            if world.enabled:
                lo, hi = world.bounds(len(idx))
                scale = world.loss_scale(self._loss_weights(y_all[idx]), lo, hi)
                xb, idx = xb[lo:hi], idx[lo:hi]  # this process's share (B_r,)
            x = self.norm(xb)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y_all[idx]
            if self._train_unchecked and self._compiled_train is not None:
                out, loss = self._checked_compiled_step(x, y, scale)
            else:
                forward = self._compiled_train if self._compiled_train is not None else self.train_module
                out, loss = self._forward_backward(forward, x, y, scale)
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self._per_step_schedule:
                self.scheduler.step()
            loss_sum += loss.detach().float() * len(idx)
            correct += (out.detach().argmax(dim=1) == y).sum()
            seen += len(idx)
            self._running = (loss_sum, correct, seen, start)
            for cb in self.callbacks:
                cb.on_train_batch_end(self, step, self.steps_per_epoch)
        world.all_sum([loss_sum, correct])  # every process logs the epoch's global loss and accuracy
        n = min(self.n_seen, len(order))
        return float(loss_sum) / n, float(correct) / n

    def _loss_weights(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) each image's weight in the loss's mean over a batch with labels ``y``: its class
        weight for a class-weighted loss (cross-entropy and focal divide by the sum of these), else 1."""
        w = getattr(self.loss_fn, "weight", None)
        return w[y].float() if isinstance(w, torch.Tensor) else torch.ones(len(y), device=y.device)

    def _follow_trainable_set(self) -> None:
        """Before each epoch, when the set of trainable parameters changed (an unfreeze schedule,
        airbench's whitening bias freezing): with several processes wrap the model in DDP again (it
        fixes its set at wrap time); a compiled training step recompiles (torch.compile guards on
        requires_grad), so the next step is timed as compilation like the first one, and falls
        back to eager if it fails."""
        sig = trainable_signature(self.model)
        if sig == self._trainable:
            return
        self._trainable = sig
        if self.world.enabled:
            self.train_module = wrap_model(self.model, self.world, self.device)
            if self._compiled_train is not None:
                self._compiled_train = _compile(self.train_module)
        if self._compiled_train is not None:
            self._train_unchecked = True

    def _prepare_distributed_epoch(self) -> None:
        """Before each epoch with several processes: draw dropout masks from a generator seeded per
        (seed, epoch, rank), so processes do not share masks and a resumed run draws the same ones."""
        torch.manual_seed((self.cfg.seed * 1_000_003 + self.epoch * 1_009 + self.world.rank) % 2**63)

    def _forward_backward(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          y: torch.Tensor, scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and backward of one batch; returns (outputs (B, K), loss ()). ``scale``
        multiplies the loss that is backpropagated (a process's share of the global batch); the
        returned loss is the batch's own mean."""
        with autocast(self.device, self.amp):
            out = forward(x)
            loss = self.loss_fn(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * scale if self.world.enabled else loss).backward()
        return out, loss

    def _checked_compiled_step(self, x: torch.Tensor, y: torch.Tensor,
                               scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The first compiled step (forward and backward both compile lazily): if compilation fails,
        warn, put the BatchNorm statistics back as they were before the attempt and run it eagerly,
        so the fallback trains exactly like a run without train.compile."""
        self._train_unchecked = False
        buffers = [b.detach().clone() for b in self.model.buffers()]
        t0 = time.perf_counter()
        try:
            out, loss = self._forward_backward(self._compiled_train, x, y, scale)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_seconds += time.perf_counter() - t0
            return out, loss
        except Exception as e:  # any compiler failure: no C++ compiler, unsupported op, backend error
            self._compiled_train = None
            _warn_compile(e, "training")
            with torch.no_grad():
                for b, saved in zip(self.model.buffers(), buffers):
                    b.copy_(saved)
            return self._forward_backward(self.train_module, x, y, scale)

    def epoch_order(self) -> torch.Tensor:
        """Indices of this epoch's images: a permutation, or a class-balanced draw with replacement."""
        n = len(self.train)
        if self.sample_weight is not None:
            return torch.multinomial(self.sample_weight, n, replacement=True, generator=self.gen)
        return torch.randperm(n, device=self.device, generator=self.gen)

    def evaluate(self, split: DeviceSplit, tta: str = "none") -> tuple[np.ndarray, float, float]:
        """(probabilities (N, K), mean loss, accuracy) in eval mode, with the EMA weights when a callback
        provides them (``eval_module``) and the test-time augmentation ``tta`` (a TTA_VIEWS key)."""
        model = self.eval_module if self.eval_module is not None else self.model
        compiled = self._compiled_eval if self.eval_module is None else None
        probs, loss = predict(model, split, self.norm, self.t.eval_batch_size, self.amp, self.loss_fn,
                              self.channels_last, tta, compiled, self.world)
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
        """Loss and accuracy so far in this epoch (this process's share of the batches)."""
        loss_sum, correct, seen, _ = self._running
        seen = max(1, min(seen, len(self.train)))
        return float(loss_sum) / seen, float(correct) / seen

    def running_rate(self) -> float:
        """Training images per second so far in this epoch, all processes together (estimated
        from this one's rate)."""
        _, _, seen, start = self._running
        return seen * self.world.size / max(time.perf_counter() - start, 1e-9)

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

    def load_weights(self, state: dict[str, Any]) -> None:
        """Only the weights of a checkpoint: the model's and those of callbacks that hold weights
        (``holds_weights``: the EMA average). Used to restore the best epoch before the final evaluation."""
        self.model.load_state_dict(state["model"])
        for cb in self.callbacks:
            name = type(cb).__name__
            if getattr(cb, "holds_weights", False) and name in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][name])

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


def epoch_steps(n: int, batch_size: int, processes: int = 1, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch over ``n`` training images at global batch ``batch_size``.
    ``drop_last`` skips an incomplete last batch. Otherwise only a last batch that cannot train is
    skipped: one image cannot train BatchNorm, and with P processes each needs one image of it, so a
    last batch smaller than max(2, P) goes (its images are seen in other epochs)."""
    if drop_last and n >= batch_size:
        return n // batch_size
    short_last = 0 < n % batch_size < max(2, processes) and n > batch_size
    return max(1, n // batch_size if short_last else math.ceil(n / batch_size))


def _compile(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torch.compile(model), or None with a warning where torch.compile itself is unavailable. The
    compiled wrapper shares the model's parameters; compilation happens on the first call."""
    try:
        return torch.compile(model)
    except Exception as e:
        _warn_compile(e, "setup")
        return None


def _warn_compile(e: BaseException, where: str) -> None:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    warnings.warn(f"train.compile: torch.compile failed in {where} ({type(e).__name__}: {first}); "
                  f"continuing without compilation (eager mode).", RuntimeWarning, stacklevel=3)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
