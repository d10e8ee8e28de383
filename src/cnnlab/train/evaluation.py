"""Eval-mode forward passes over a split resident on the device: probabilities and loss in
chunks, with test-time augmentation, an optional compiled forward, and sharding over the
processes of a data-parallel run. Used by the trainer's per-epoch validation and by ``cnnlab
evaluate`` / ``predict`` (:class:`Inference` sets a trained model up for them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import TrainConfig
from ..data import Normalizer, Split
from ..errors import UserError
from ..models import ImageClassifier
from .device import CheckedForward, autocast, has_conv
from .distributed import World


@dataclass
class DeviceSplit:
    """One split resident on the device: x uint8 (N, C, H, W), y int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    @classmethod
    def of(cls, split: Split, device: torch.device) -> "DeviceSplit":
        return cls(split.x.to(device), split.y.to(device))

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _output_probs(model: ImageClassifier, out: torch.Tensor) -> torch.Tensor:
    # A softmax_output model (the seeds' mistake, reproduced on request) already returns probabilities.
    return out.float() if model.softmax_output else out.float().softmax(dim=1)


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
def predict(model: ImageClassifier, split: DeviceSplit, norm: Normalizer, batch_size: int,
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



@dataclass
class Inference:
    """A trained model set up for evaluation with fixed weights (``cnnlab evaluate`` / ``predict``):
    eval mode, channels_last for conv nets when ``train.channels_last``, and with ``train.compile``
    a :class:`CheckedForward` (None: run the model eagerly). Pass ``model``, ``forward`` and
    ``channels_last`` to :func:`predict`. (Threads: :func:`cnnlab.train.device.prepare_process`.)"""

    model: ImageClassifier
    forward: CheckedForward | None
    channels_last: bool

    @classmethod
    def of(cls, model: ImageClassifier, train_cfg: TrainConfig) -> "Inference":
        channels_last = bool(train_cfg.channels_last) and has_conv(model)
        if channels_last:
            # channels_last (NHWC) is faster for convolutions with oneDNN on the CPU and on CUDA
            # (docs/performance.md).
            model = model.to(memory_format=torch.channels_last)
        model.eval()
        return cls(model, CheckedForward(model) if train_cfg.compile else None, channels_last)

