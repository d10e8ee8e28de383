"""The trainer: one loop for every experiment.

Each split lives on the training device as one uint8 tensor (N, C, H, W); an epoch is a
permutation drawn from the trainer's own generator, batches are index slices, and augmentation
and normalization run on whole batches on the device. Loss and accuracy are summed on the device
and read once per epoch, so the step itself never waits for the host.

With several processes (a :class:`~cnnlab.train.distributed.World` of size > 1) the same loop runs in
each: the permutation and the augmentation of each global batch are drawn identically everywhere,
each process trains on its contiguous share of the batch through DistributedDataParallel with its
loss scaled by its share, the epoch's loss and accuracy sums are all-reduced, evaluation is sharded
by whole evaluation batches and gathered in order, and the stop decision is collective.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..config import ExperimentConfig
from ..data import Augmenter, Normalizer, alternating_flip_mask, max_crop_padding, resolve_class_names
from ..errors import UserError
from ..lifecycle import Stop, StopReason
from ..models import ImageClassifier, output_layer
from .callbacks import Callback
from .device import CheckedForward, amp_dtype, autocast, compile_model, has_conv, warn_compile
from .distributed import World, trainable_signature, wrap_model
from .evaluation import DeviceSplit, predict
from .losses import loss_class_weights
from .transfer import Freezing


class BatchResult(NamedTuple):
    """The latest training batch, as the trainer leaves it for ``on_train_batch_end`` callbacks: device
    tensors, so reading them (``.item()``, ``float()``) is a host sync that only a callback that
    needs the values pays for. With several processes: this process's share of the global batch."""

    loss: torch.Tensor  # () float32: the batch's mean loss
    correct: torch.Tensor  # () int64: images whose argmax matches the label
    size: int  # images in the batch (this process's share)


class Trainer:
    """Owns the model, optimizer, scheduler, callbacks and the epoch counter; ``fit`` trains from the
    current epoch to ``cfg.train.epochs`` unless a callback calls :meth:`request_stop`. ``stop``
    says why the loop ended.

    ``world``: this process's place in a data-parallel job (default: one process). With several
    processes, ``model`` stays the plain module (state_dict, evaluation, callbacks use it) and
    ``train_module`` is its DistributedDataParallel wrapper that training forwards run through.
    ``freezing``: the frozen modules of transfer learning (their BatchNorm layers stay in eval mode)."""

    def __init__(self, cfg: ExperimentConfig, model: ImageClassifier, loss_fn: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, sched_monitor: str | None,
                 train: DeviceSplit, val: DeviceSplit | None, norm: Normalizer,
                 callbacks: Sequence[Callback], device: torch.device, meta: dict[str, Any], *,
                 resolved_config: dict | None = None, world: World | None = None,
                 freezing: Freezing | None = None):
        self.cfg, self.t = cfg, cfg.train
        self.world = world or World()
        check_training_setup(cfg, tuple(train.x.shape), self.world, meta.get("class_names"))
        self.freezing = freezing
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
        self._compiled_train = (self._compiled_eval.compiled if not self.world.enabled else compile_model(self.train_module)) \
            if self.t.compile else None
        self._train_unchecked = True  # the next compiled training step is its first (it compiles)
        # Wall time of the compiled training steps that (re)compiled: the first one, and the first
        # after each change of the trainable set.
        self.compile_seconds = 0.0
        # hflip = "alternate": each training image's flip in epoch 0, (N,) bool, drawn once from the
        # trainer's generator (so a resumed run, which rebuilds the trainer from the seed, gets the same).
        aug = cfg.data.augment
        self.flip_base = (torch.rand(len(train), device=device, generator=self.gen) < 0.5
                          if aug.hflip == "alternate" else None)
        # [data.augment]: every training batch's augmentation, built once (per-class tables on the device).
        # Class names from the run's meta; a bare Trainer (tests, the API) numbers the model's outputs.
        names = meta.get("class_names") or [str(i) for i in range(_num_outputs(model))]
        self.augmenter = Augmenter(aug, names, tuple(train.x.shape[1:]), device)
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.stop: Stop | None = None  # set when the loop is to end before (or at) the planned epochs
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
        self.last_batch: BatchResult | None = None  # set before each on_train_batch_end

    # ------------------------------------------------------------------------------- loop
    @property
    def should_stop(self) -> bool:
        return self.stop is not None

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        # Callbacks written for earlier versions set this flag: it is a request with no message.
        if value:
            self.request_stop(Stop(StopReason.CALLBACK))

    def request_stop(self, stop: Stop) -> None:
        """End training after this epoch; the first request of an epoch is the one recorded."""
        if self.stop is None:
            self.stop = stop

    def fit(self) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        # Every process starts from rank 0's EMA average (a callback may have copied its own model).
        self.world.sync_state(self.eval_module)
        while self.epoch < self.t.epochs and not self.should_stop:
            # A model's own schedule (airbench freezes its whitening bias after a few epochs): a pure
            # function of the epoch, so a resumed run sets the same state.
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
                self.stop = Stop(StopReason.NON_FINITE_LOSS, f"the loss became NaN or infinite in epoch {self.epoch}")
                logs.update({k: None for k in ("train_loss", "val_loss") if logs[k] is not None and not math.isfinite(logs[k])})
            elif not self._per_step_schedule:
                self.step_scheduler(logs)
            self.history.append(logs)
            for cb in self.callbacks:
                cb.on_epoch_end(self, logs)
            # One decision for all processes, so none waits in a collective for one that has left.
            self.stop = self.world.agree_stop(self.stop)
        if self.stop is None and self.epoch >= self.t.epochs:
            self.stop = Stop(StopReason.MAX_EPOCHS, f"trained all {self.t.epochs} epochs")
        for cb in self.callbacks:
            cb.on_fit_end(self)

    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training split; returns (mean loss, accuracy) over the images seen."""
        self.model.train()
        # Frozen BatchNorm layers (transfer learning) stay in eval mode: their statistics do not move.
        for m in self.freezing.bn_eval if self.freezing is not None else ():
            m.eval()
        t, x_all, y_all = self.t, self.train.x, self.train.y
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
            # soft: (B, K) mixed targets under mixup/cutmix, else None (the labels are the targets).
            xb, soft = self.augmenter(x_all[idx], y_all[idx], self.gen, flips)
            scale: torch.Tensor | float = 1.0
            if world.enabled:
                lo, hi = world.bounds(len(idx))
                weights = self._loss_weights(y_all[idx] if soft is None else soft)
                scale = world.loss_scale(weights, lo, hi)
                xb, idx = xb[lo:hi], idx[lo:hi]  # this process's share (B_r,)
                soft = soft[lo:hi] if soft is not None else None
            x = self.norm(xb)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = y_all[idx]
            target = y if soft is None else soft
            if self._train_unchecked and self._compiled_train is not None:
                out, loss = self._checked_compiled_step(x, target, scale)
            else:
                forward = self._compiled_train if self._compiled_train is not None else self.train_module
                out, loss = self._forward_backward(forward, x, target, scale)
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self._per_step_schedule:
                self.scheduler.step()
            batch_loss = loss.detach().float()  # ()
            batch_correct = (out.detach().argmax(dim=1) == y).sum()  # () int64
            loss_sum += batch_loss * len(idx)
            correct += batch_correct
            seen += len(idx)
            self._running = (loss_sum, correct, seen, start)
            self.last_batch = BatchResult(batch_loss, batch_correct, len(idx))
            for cb in self.callbacks:
                cb.on_train_batch_end(self, step, self.steps_per_epoch)
        world.all_sum([loss_sum, correct])  # every process logs the epoch's global loss and accuracy
        n = min(self.n_seen, len(order))
        return float(loss_sum) / n, float(correct) / n

    def _loss_weights(self, y: torch.Tensor) -> torch.Tensor:
        """(B,) each image's weight in the loss's mean over a batch with labels ``y`` (B,) or soft
        targets (B, K): its class weight (soft: the target-weighted class weight) for a
        class-weighted loss (cross-entropy and focal divide by the sum of these), else 1."""
        w = loss_class_weights(self.loss_fn)
        if w is None:
            return torch.ones(len(y), device=y.device)
        return (y.float() @ w.float()) if y.dim() == 2 else w[y].float()

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
                self._compiled_train = compile_model(self.train_module)
        if self._compiled_train is not None:
            self._train_unchecked = True

    def _prepare_distributed_epoch(self) -> None:
        """Before each epoch with several processes: draw dropout masks from a generator seeded per
        (seed, epoch, rank), so processes do not share masks and a resumed run draws the same ones."""
        torch.manual_seed((self.cfg.seed * 1_000_003 + self.epoch * 1_009 + self.world.rank) % 2**63)

    def _forward_backward(self, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          y: torch.Tensor, scale: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and backward of one batch; ``y``: labels (B,) int64, or soft targets (B, K)
        under mixup/cutmix. Returns (outputs (B, K), loss ()). ``scale``
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
            warn_compile(e, "training")
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
            # A stop decided in this epoch (early stopping) is part of the state: a run killed before
            # its final evaluation resumes straight into it instead of training on.
            "stop": None if self.stop is None else {"reason": self.stop.reason.value, "message": self.stop.message},
        }

    def load_weights(self, state: dict[str, Any]) -> None:
        """Only the weights of a checkpoint: the model's and those of callbacks that hold weights
        (``holds_weights``: the EMA average). Used to restore the best epoch before the final evaluation."""
        self.model.load_state_dict(state["model"])
        for cb in self.callbacks:
            name = type(cb).__name__
            if cb.holds_weights and name in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][name])

    def load_state_dict(self, state: dict[str, Any], extend: bool = False) -> None:
        """Continue from a checkpoint's state. ``extend``: the run now has more epochs than when the
        checkpoint was written (``cnnlab resume --epochs N``): the stop it recorded is dropped, and
        the learning-rate schedule, built for this trainer's ``train.epochs``, is advanced to the
        checkpoint's epoch instead of being restored, so it continues as the schedule of a run planned
        for that many epochs from the start (the plateau scheduler, which follows a metric, is restored)."""
        self.model.load_state_dict(state["model"])
        if extend and self.sched_monitor is None:
            self._advance_schedule(int(state["epoch"]))
            # The hyperparameters the schedule set (lr; momentum for cyclic and onecycle) survive the
            # optimizer's own state, which brings back its moment estimates.
            hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(state["optimizer"])
            for g, h in zip(self.optimizer.param_groups, hyper):
                g.update(h)
        else:
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
        saved = state.get("stop")
        self.stop = None if extend or not saved else Stop(StopReason(saved["reason"]), saved["message"])

    def _advance_schedule(self, epochs: int) -> None:
        """Step the (fresh) scheduler through ``epochs`` epochs without training: the learning rates
        it reaches are those of the same point of a run trained from the start."""
        steps = epochs * (self.steps_per_epoch if self._per_step_schedule else 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": on purpose here
            for _ in range(steps):
                self.scheduler.step()



def epoch_steps(n: int, batch_size: int, processes: int = 1, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch over ``n`` training images at global batch ``batch_size``.
    ``drop_last`` skips an incomplete last batch. Otherwise only a last batch that cannot train is
    skipped: one image cannot train BatchNorm, and with P processes each needs one image of it, so a
    last batch smaller than max(2, P) goes (its images are seen in other epochs)."""
    if drop_last and n >= batch_size:
        return n // batch_size
    short_last = 0 < n % batch_size < max(2, processes) and n > batch_size
    return max(1, n // batch_size if short_last else math.ceil(n / batch_size))


def _num_outputs(model: nn.Module) -> int:
    """Classes the model scores: the output layer's Linear out_features (Conv2d out_channels)."""
    layer = output_layer(model)
    return int(layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels)


def check_training_setup(cfg: ExperimentConfig, train_shape: tuple[int, ...], world: World,
                         class_names: Sequence[str] | None = None) -> None:
    """The settings that depend on the data and the process world, checked before a run directory
    exists: ``train_shape`` is the training split's (N, C, H, W), ``class_names`` the data's
    (for ``[data.augment.per_class]``)."""
    if world.enabled and cfg.train.batch_size < world.size:
        raise UserError(f"train.batch_size = {cfg.train.batch_size} is the global batch and must be at least the "
                        f"number of processes ({world.size}): each process trains on its share of it.")
    aug = cfg.data.augment
    if class_names is not None and aug.per_class:
        resolve_class_names(list(aug.per_class), class_names)
    side = min(train_shape[-2:]) if len(train_shape) == 4 else 0
    if aug.crop_padding > side:
        raise UserError(f"data.augment.crop_padding = {aug.crop_padding} is larger than the {side}-pixel images: a "
                        f"crop would then be mostly border; use at most {side} (a few pixels is usual).")
    most = max_crop_padding(aug.padding_mode, side)
    if aug.crop_padding and most is not None and aug.crop_padding > most:
        raise UserError(f"data.augment.crop_padding = {aug.crop_padding} is too large for padding_mode = "
                        f"{aug.padding_mode!r} on {side}-pixel images: a mirrored border can be at most "
                        f"{most} pixels; use a smaller crop_padding or padding_mode = \"constant\" or \"edge\".")
