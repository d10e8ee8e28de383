"""Training: the loop, what plugs into it, and what it needs of the machine.

- ``trainer``: ``Trainer`` (the one training loop) and ``epoch_steps``;
- ``callbacks``: ``CALLBACKS`` and the ``Callback`` hooks; early stopping, checkpoints, the
  weight average (EMA / lookahead), history and progress;
- ``checkpoints``: saving and safely loading a trainer's state;
- ``evaluation``: eval-mode forward passes (``predict``, test-time augmentation, ``Inference``);
- ``device``: device, host allocator and threads, mixed precision, seeding, ``torch.compile``;
- ``optim``, ``losses``: the ``OPTIMIZERS``, ``SCHEDULERS`` and ``LOSSES`` registries;
- ``distributed``: the data-parallel ``World`` and the ``--devices N`` launcher;
- ``transfer``: weights from another run or a pretrained model, freezing and unfreezing;
- ``stats``: per-layer training statistics for ``cnnlab diagnose``.

Importing the package registers every callback, optimizer, scheduler and loss (each module
registers its own).
"""

from .callbacks import (CALLBACKS, Callback, EarlyStopping, HistoryWriter, ModelCheckpoint, Monitor, Progress, WeightEMA,
                        epoch_line, eval_weights)
from .checkpoints import load_checkpoint, save_checkpoint
from .device import (CheckedForward, amp_dtype, autocast, check_threads, compile_model, has_conv,
                     keep_freed_host_memory, prepare_process, resolve_device, seed_everything)
from .distributed import World
from .evaluation import TTA_VIEWS, DeviceSplit, Inference, predict
from .losses import LOSSES, FocalLoss, build_loss, class_weight_tensor
from .optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, param_groups
from .stats import TrainingStats, read_stats
from .trainer import Trainer, check_training_setup, epoch_steps
from .transfer import Freezing, Transfer, UnfreezeSchedule, apply_transfer

__all__ = [
    "Trainer", "epoch_steps", "check_training_setup", "CALLBACKS", "Callback", "EarlyStopping", "ModelCheckpoint",
    "Monitor", "WeightEMA", "HistoryWriter", "Progress", "epoch_line", "eval_weights", "load_checkpoint",
    "save_checkpoint", "DeviceSplit", "Inference", "predict", "TTA_VIEWS", "CheckedForward", "amp_dtype", "autocast",
    "check_threads", "compile_model", "has_conv", "keep_freed_host_memory", "prepare_process", "resolve_device", "seed_everything",
    "World", "LOSSES", "FocalLoss", "build_loss", "class_weight_tensor", "OPTIMIZERS", "SCHEDULERS",
    "build_optimizer", "build_scheduler", "param_groups", "TrainingStats", "read_stats", "Freezing", "Transfer",
    "UnfreezeSchedule", "apply_transfer",
]
