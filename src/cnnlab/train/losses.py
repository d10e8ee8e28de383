"""Loss registry. Every loss takes logits (B, K) and int64 targets (B,) and returns a scalar mean.

Built by ``build_loss(train_cfg, class_counts)``; ``class_weights`` ("balanced" or a list) and
``label_smoothing`` apply to every loss that supports them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..config import TrainConfig, entry_params
from ..errors import UserError
from ..registry import Registry

LOSSES: Registry = Registry("loss")


class FocalParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    gamma: float = Field(2.0, ge=0, le=20, description="focusing parameter; 0 = cross-entropy (usual: 0.5 to 5)")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma, so easy examples
    count less. ``weight`` (K,) are per-class alpha weights."""

    def __init__(self, gamma: float, weight: torch.Tensor | None, label_smoothing: float):
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``target``: labels (B,) int64, or class probabilities (B, K) (mixup/cutmix soft targets)."""
        logp = F.log_softmax(logits.float(), dim=1)  # (B, K)
        if target.dim() == 2:
            return self._soft(logp, target.float())
        ce = F.nll_loss(logp, target, reduction="none")  # (B,)
        if self.label_smoothing:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(dim=1)
        p_true = logp.gather(1, target[:, None]).squeeze(1).exp()
        loss = (1 - p_true) ** self.gamma * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()

    def _soft(self, logp: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Focal loss of class probabilities ``p`` (B, K): sum_c w_c p_c (1 - q_c)^gamma (-log q_c),
        label smoothing mixing ``p`` with the uniform distribution; without smoothing, the same as
        the labels' loss for one-hot ``p``. Averaged over the images, as torch's cross-entropy averages soft targets."""
        if self.label_smoothing:
            p = (1 - self.label_smoothing) * p + self.label_smoothing / p.shape[1]
        terms = p * (1 - logp.exp()) ** self.gamma * -logp  # (B, K)
        if self.weight is not None:
            terms = terms * self.weight[None, :]
        return terms.sum(dim=1).mean()


@LOSSES.register("cross_entropy", summary="cross-entropy on logits, with label smoothing and class weights")
def _cross_entropy(params, weight, label_smoothing):
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)


@LOSSES.register("focal", params=FocalParams, summary="focal loss (gamma) for hard or rare classes")
def _focal(params, weight, label_smoothing):
    return FocalLoss(params.gamma, weight, label_smoothing)


def class_weight_tensor(spec, class_counts: np.ndarray) -> torch.Tensor | None:
    """Per-class weights (K,): ``"balanced"`` = n / (K * count_k) as scikit-learn computes them."""
    if spec is None:
        return None
    k = len(class_counts)
    if spec == "balanced":
        counts = np.maximum(class_counts, 1).astype(np.float64)
        return torch.tensor(counts.sum() / (k * counts), dtype=torch.float32)
    if len(spec) != k:
        raise UserError(
            f"train.class_weights has {len(spec)} values but the data has {k} classes; "
            f"give one weight per class or \"balanced\"."
        )
    return torch.tensor(spec, dtype=torch.float32)


def build_loss(train: TrainConfig, class_counts: np.ndarray) -> nn.Module:
    """The configured loss module (weights on CPU; move it with ``.to(device)``)."""
    params = entry_params(train.loss, LOSSES)
    weight = class_weight_tensor(train.class_weights, class_counts)
    return LOSSES.get(train.loss.name)(params, weight, train.label_smoothing)


def loss_class_weights(loss_fn: nn.Module) -> torch.Tensor | None:
    """The per-class weights (K,) a loss averages its terms with (None: every image counts 1):
    a weighted mean divides by the sum of its images' class weights, which the data-parallel
    trainer needs to scale each process's share of a batch."""
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss, FocalLoss)):
        return loss_fn.weight
    return None
