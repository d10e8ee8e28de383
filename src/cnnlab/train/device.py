"""Where and how a process computes: the device, the host allocator and threads, mixed precision,
seeding, and ``torch.compile`` with an eager fallback.

``prepare_process(device, threads)`` is the one place that changes process-wide settings before
training or evaluation (thread count; on the CPU the allocator tuning of
:func:`keep_freed_host_memory`, opted out of with ``CNNLAB_MALLOPT=0``).
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
import time
import warnings
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError


def _mps_available() -> bool:
    mps = torch.backends.mps  # present in every torch >= 2.4 build; is_available() is False off Apple
    return mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``auto`` = cuda, then mps, then cpu. An unavailable explicit device is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device = {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps.") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available, "mps": _mps_available}
    if dev.type not in available or not available[dev.type]():
        raise UserError(f"train.device = {name!r} is not available on this machine; use auto or cpu.")
    return dev


def check_threads(threads: int | None) -> None:
    """Refuse ``train.threads`` above this machine's cores (called before any data loads)."""
    cores = os.cpu_count() or 1
    if threads and threads > cores:
        raise UserError(f"train.threads = {threads} but this machine has {cores} CPU core(s); more threads than "
                        f"cores only slows training down: use at most {cores}, or leave it unset.")


def prepare_process(device: torch.device, threads: int | None = None) -> None:
    """Process-wide settings for computing on ``device``: ``threads`` (``train.threads``; None keeps
    torch's default) and, on the CPU, :func:`keep_freed_host_memory`. Call it after the data is
    loaded: with freed memory kept, the decoded images released while a data set is stacked would
    stay in the process, and loading would peak at twice the data set."""
    check_threads(threads)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_host_memory()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_host_tuned: bool | None = None  # None: not tried yet in this process


def keep_freed_host_memory() -> bool:
    """Keep large freed CPU blocks in this process's heap instead of handing them back to the kernel;
    returns whether the allocator is tuned. Once per process; glibc only; ``CNNLAB_MALLOPT=0``
    leaves the allocator alone.

    Why: glibc returns every block above its mmap threshold (at most 32 MiB) to the kernel when it
    is freed, and the next batch page-faults the same memory back in, zero-filled. The conv
    activations of a large evaluation batch are such blocks, so without this setting evaluation
    spends much of its time in page faults (measured: docs/performance.md). jemalloc or tcmalloc
    through LD_PRELOAD avoid this too, but only when set before the process starts; glibc's own
    ``mallopt`` does it from inside. The cost: the process keeps its peak heap until it exits."""
    global _host_tuned
    if _host_tuned is not None:
        return _host_tuned
    _host_tuned = False
    if os.environ.get("CNNLAB_MALLOPT", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # Blocks up to 1 GiB come from the heap, and freed memory at the heap's top is never trimmed.
        _host_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        pass
    return _host_tuned


# Mixed precision: `auto` is bf16 on CUDA (no loss scaling needed) and fp32 elsewhere.
_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (None: full fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp16" and device.type == "cpu":
        raise UserError("train.precision = 'fp16' needs a GPU; on the CPU use fp32 or bf16.")
    return _AMP[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; ``deterministic`` asks for deterministic kernels (bitwise
    repeatable on the CPU), otherwise cuDNN may pick the fastest algorithm."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def has_conv(model: nn.Module) -> bool:
    """Whether ``model`` has a 2-d convolution (then channels_last pays off)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def compile_model(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torch.compile(model), or None with a warning where torch.compile itself is unavailable. The
    compiled wrapper shares the model's parameters; compilation happens on the first call."""
    try:
        return torch.compile(model)
    except Exception as e:
        warn_compile(e, "setup")
        return None


def warn_compile(e: BaseException, where: str) -> None:
    """The one warning of a failed compilation; the caller continues eagerly."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    warnings.warn(f"train.compile: torch.compile failed in {where} ({type(e).__name__}: {first}); "
                  f"continuing without compilation (eager mode).", RuntimeWarning, stacklevel=3)


class CheckedForward:
    """A compiled forward for evaluation that falls back to eager: the first call runs the compiled
    module (compiling it) and, if that raises, warns and uses ``model`` from then on. Evaluation
    changes no state, so the failed call is simply run again eagerly. ``compile_seconds``: the wall
    time of that first call (the compilation, reported apart from evaluation speed)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.compiled = compile_model(model)
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
            warn_compile(e, "evaluation")
            return self.model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        self.checked, self.compile_seconds = True, time.perf_counter() - t0
        return out

