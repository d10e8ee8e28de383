"""Per-layer training statistics for ``cnnlab diagnose``, recorded by a callback.

Every ``stats_every`` epochs (and always at epoch 1) the ``stats`` callback records, per layer:

* from the step's own gradients (the last step of the epoch, read right after ``optimizer.step``;
  the trainer clears gradients only at the next step's ``zero_grad``): the gradient norm of each
  Conv/Linear weight and of all parameters together;
* from a weight snapshot taken at the start of the epoch: each weight's norm and its
  update-to-weight ratio ``||w_end - w_start|| / ||w_start||`` over the epoch;
* from a fixed probe batch (the first ``probe_size`` training images, or all of them when fewer,
  normalized like training batches, in eval mode without gradients, through temporary forward hooks on the activation
  modules): each activation's mean and std, the share of units (channels of a conv output,
  features of a dense one) that never produce a positive output on the probe batch (ReLU family),
  and the share of outputs pinned within 1 % of the ends of their range (sigmoid/tanh).

Records go to ``stats.jsonl`` in the run directory, one JSON object per recorded epoch, the whole
file rewritten atomically after each record. The records also live in the callback's state, which
the trainer stores in every checkpoint, so a resumed run rewrites the file from the checkpoint and
continues with each epoch exactly once. The callback only reads the model and the data: training
with and without it takes the same steps and draws the same random numbers.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

from ..rundir import STATS, atomic_write_text, damaged, read_jsonl
from .callbacks import CALLBACKS, Callback
from .device import autocast

if TYPE_CHECKING:  # annotations only: the trainer imports the callbacks' base module
    from .trainer import Trainer

# A unit counts as saturated when its output lies within this share of the activation's range
# from either end: there the local slope of sigmoid/tanh is below ~4 % of its peak, so almost no
# gradient flows back through it.
SATURATION_MARGIN = 0.01


def _unit_dims(y: torch.Tensor) -> tuple[int, ...]:
    """The dimensions reduced to get one value per unit: conv maps (N, C, H, W) -> per channel C;
    dense (N, D) and other shapes -> per last dimension."""
    return (0, 2, 3) if y.dim() == 4 else tuple(range(y.dim() - 1))


def _relu_family(y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each unit's largest output (units, ); a unit is active when it is > 0 (for ReLU, LeakyReLU,
    PReLU, ELU and GELU alike y > 0 iff x > 0)."""
    dims = _unit_dims(y)
    return {"unit_max": y.amax(dim=dims) if dims else y}


def _bounded(lo: float, hi: float) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """Count of outputs within SATURATION_MARGIN of the range [lo, hi]'s ends."""
    low, high = lo + SATURATION_MARGIN * (hi - lo), hi - SATURATION_MARGIN * (hi - lo)

    def stat(y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"saturated": (y < low).sum() + (y > high).sum()}

    return stat


# Activation module type -> per-element statistic of its output. Looked up with isinstance, so
# subclasses (ReLU6 is a Hardtanh, so it is listed on its own) are covered.
ACTIVATION_STATS: dict[type, Callable[[torch.Tensor], dict[str, torch.Tensor]]] = {
    nn.ReLU: _relu_family,
    nn.ReLU6: _relu_family,
    nn.LeakyReLU: _relu_family,
    nn.PReLU: _relu_family,
    nn.ELU: _relu_family,
    nn.GELU: _relu_family,
    nn.Sigmoid: _bounded(0.0, 1.0),
    nn.Tanh: _bounded(-1.0, 1.0),
}


def activation_stat(module: nn.Module) -> Callable[[torch.Tensor], dict[str, torch.Tensor]] | None:
    """The statistic for ``module``'s output, or None when it is not a recorded activation."""
    return next((fn for t, fn in ACTIVATION_STATS.items() if isinstance(module, t)), None)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module owning a weight matrix or kernel (Linear, Conv, ...), in
    registration order, which for the Sequential models of the zoo is input-to-output order."""
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 2 and w.requires_grad:
            out.append((name or type(m).__name__, m))
    return out


def _num(x: float) -> float | None:
    """A JSON-safe float: NaN and infinities become None."""
    return float(x) if math.isfinite(x) else None


class _ActAccumulator:
    """Running sums of one activation call site over the probe batch's chunks (tensors on device)."""

    def __init__(self, name: str, kind: str, stat: Callable[[torch.Tensor], dict[str, torch.Tensor]]):
        self.name, self.kind, self.stat = name, kind, stat
        self.n = 0
        self.s = self.ss = self.sat = None
        self.unit_max: torch.Tensor | None = None  # (units,) largest output of each unit on the probe batch

    def add(self, y: torch.Tensor) -> None:
        # float32 sums: a probe batch has at most a few million elements per layer, far inside its precision.
        y = y.detach().float()
        s, ss = y.sum(), torch.linalg.vector_norm(y) ** 2  # vector_norm reads channels_last without a copy
        self.s = s if self.s is None else self.s + s
        self.ss = ss if self.ss is None else self.ss + ss
        self.n += y.numel()
        st = self.stat(y)
        if "unit_max" in st:
            m = st["unit_max"]
            self.unit_max = m if self.unit_max is None or self.unit_max.shape != m.shape else torch.maximum(self.unit_max, m)
        if "saturated" in st:
            c = st["saturated"]
            self.sat = c if self.sat is None else self.sat + c

    def scalars(self) -> list[torch.Tensor]:
        """mean, variance, dead share, saturated share (NaN where not applicable), as 0-d tensors."""
        nan = torch.tensor(float("nan"), device=self.s.device)
        mean = self.s / self.n
        var = (self.ss / self.n - mean ** 2).clamp(min=0)
        dead = (self.unit_max <= 0).float().mean() if self.unit_max is not None else nan
        sat = self.sat.float() / self.n if self.sat is not None else nan
        return [mean, var, dead, sat]


@CALLBACKS.register("stats")
class TrainingStats(Callback):
    """Records per-layer gradient/weight/activation statistics to ``stats.jsonl`` every ``every``
    epochs (and at epoch 1), on a fixed probe batch of ``probe_size`` training images."""

    def __init__(self, run_dir: str | Path, every: int = 1, probe_size: int = 256):
        self.path = Path(run_dir) / STATS
        self.every, self.probe_size = max(1, int(every)), int(probe_size)
        self.records: list[dict[str, Any]] = []
        self._recording = False  # this epoch is recorded
        self._start: dict[str, torch.Tensor] = {}  # layer name -> weight at epoch start
        self._grads: dict[str, Any] | None = None
        self._seconds = 0.0  # time spent by this callback during the current epoch

    # --------------------------------------------------------------------------- cadence
    def _due(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` is recorded: the first, then every ``every``-th."""
        return epoch == 1 or epoch % self.every == 0

    # ----------------------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: "Trainer") -> None:
        self._write()  # a resumed run drops lines of epochs after its checkpoint

    def on_epoch_start(self, trainer: "Trainer") -> None:
        self._grads, self._start, self._seconds = None, {}, 0.0
        self._recording = self._due(trainer.epoch + 1)
        if not self._recording:
            return
        t0 = time.perf_counter()
        with torch.no_grad():
            self._start = {n: m.weight.detach().clone() for n, m in weight_layers(trainer.model)}
        self._seconds += time.perf_counter() - t0

    def on_train_batch_end(self, trainer: "Trainer", step: int, steps: int) -> None:
        if step != steps - 1 or not self._recording:
            return
        t0 = time.perf_counter()
        layers = weight_layers(trainer.model)
        with torch.no_grad():
            per = [m.weight.grad.detach().float().norm() if m.weight.grad is not None else torch.tensor(float("nan"))
                   for _, m in layers]
            grads = [p.grad.detach().float().norm() for p in trainer.model.parameters() if p.grad is not None]
            total = torch.stack([g.to(grads[0].device) for g in grads]).norm() if grads else torch.tensor(float("nan"))
            values = torch.stack([v.to(total.device) for v in per] + [total]).tolist() if per else [total.item()]
        self._grads = {"layers": dict(zip((n for n, _ in layers), values[:-1])), "total": values[-1]}
        self._seconds += time.perf_counter() - t0

    def on_epoch_end(self, trainer: "Trainer", logs: dict[str, Any]) -> None:
        if not self._recording:
            return
        t0 = time.perf_counter()
        record = {"epoch": int(logs["epoch"]), **self._weights(trainer), **self._probe(trainer)}
        record["seconds"] = round(self._seconds + time.perf_counter() - t0, 5)
        self.records.append(record)
        self._write()
        self._recording, self._start, self._grads = False, {}, None

    # ---------------------------------------------------------------------------- pieces
    def _weights(self, trainer: "Trainer") -> dict[str, Any]:
        grads = self._grads or {"layers": {}, "total": float("nan")}
        layers = weight_layers(trainer.model)
        with torch.no_grad():
            cols = []
            for name, m in layers:
                w = m.weight.detach().float()
                start = self._start.get(name)
                upd = (w - start.float()).norm() / start.float().norm().clamp(min=1e-12) if start is not None \
                    else torch.tensor(float("nan"), device=w.device)
                cols += [w.norm(), upd]
            values = torch.stack(cols).tolist() if cols else []
        out = []
        for i, (name, m) in enumerate(layers):
            out.append({"name": name, "type": type(m).__name__, "params": int(m.weight.numel()),
                        "grad_norm": _num(grads["layers"].get(name, float("nan"))),
                        "weight_norm": _num(values[2 * i]), "update_ratio": _num(values[2 * i + 1])})
        return {"grad_norm": _num(grads["total"]), "layers": out}

    def _probe(self, trainer: "Trainer") -> dict[str, Any]:
        """Activation statistics of the probe batch; the model's train/eval mode is restored."""
        model = trainer.model
        # Not capped at a share of the split: a unit silent on a few dozen images is not shown to be
        # dead (diagnose's DEAD_MIN_PROBE). On digits, 256 of 1,293 images cost ~7 % of an epoch,
        # about 10 ms; on any data set worth minutes per epoch, a negligible share.
        size = min(self.probe_size, len(trainer.train))
        probe = trainer.train.x[:size]  # uint8 (P, C, H, W) on the device, the same images every time
        accs: dict[str, _ActAccumulator] = {}
        calls: dict[str, int] = {}  # a module reused in one forward (resnet's relu) gets one entry per call

        def hook_for(name: str, kind: str, stat):
            def hook(module, inputs, output):
                if not isinstance(output, torch.Tensor):
                    return
                i = calls[name] = calls.get(name, 0) + 1
                key = name if i == 1 else f"{name}#{i}"
                if key not in accs:
                    accs[key] = _ActAccumulator(key, kind, stat)
                accs[key].add(output)
            return hook

        handles = []
        for name, m in model.named_modules():
            stat = activation_stat(m)
            if stat is not None:
                handles.append(m.register_forward_hook(hook_for(name or type(m).__name__, type(m).__name__, stat)))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(probe), trainer.t.eval_batch_size):
                    calls.clear()
                    x = trainer.norm(probe[i:i + trainer.t.eval_batch_size])
                    if trainer.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast(trainer.device, trainer.amp):
                        model(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        order = list(accs.values())
        values = torch.stack([v for a in order for v in a.scalars()]).tolist() if order else []
        acts = []
        for i, a in enumerate(order):
            mean, var, dead, sat = values[4 * i: 4 * i + 4]
            acts.append({"name": a.name, "type": a.kind, "mean": _num(mean), "std": _num(math.sqrt(var)) if math.isfinite(var) else None,
                         "dead": _num(dead), "saturated": _num(sat)})
        return {"probe_size": int(len(probe)), "activations": acts}

    # ---------------------------------------------------------------------------- storage
    def _write(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def state_dict(self) -> dict[str, Any]:
        return {"records": list(self.records)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records = list(state.get("records", []))


def read_stats(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``stats.jsonl`` (an empty list when the run has none; a damaged file is a
    UserError naming it)."""
    path = Path(run_dir) / STATS
    records = read_jsonl(path, ("epoch", "layers"))
    for i, r in enumerate(records, 1):
        for part in ("layers", "activations"):
            rows = r.get(part, [])
            if not (isinstance(rows, list) and all(isinstance(x, dict) and isinstance(x.get("name"), str) and all(
                    v is None or isinstance(v, (int, float, str)) for v in x.values()) for x in rows)):
                raise damaged(path, f"record {i}: {part} is not a list of per-layer objects")
            for x in rows:
                if any(isinstance(v, str) for k, v in x.items() if k not in ("name", "type")):
                    raise damaged(path, f"record {i}: a value of layer {x['name']!r} is text, not a number")
    return records
