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
        loss = _focal_factor(logp.gather(1, target[:, None]).squeeze(1), self.gamma) * ce
        if self.weight is not None:
            w = self.weight[target]
            return (loss * w).sum() / w.sum()
        return loss.mean()

    def _soft(self, logp: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Focal loss of class probabilities ``p`` (B, K): sum_c w_c p'_c (1 - q_c)^gamma (-log q_c)
        with p' = ``p`` mixed with the uniform distribution by label smoothing, divided like the
        labels' loss by the batch's class-weight mass sum_i w . p_i; for one-hot ``p`` without
        smoothing, exactly the labels' loss."""
        q = p
        if self.label_smoothing:
            q = (1 - self.label_smoothing) * p + self.label_smoothing / p.shape[1]
        terms = q * _focal_factor(logp, self.gamma) * -logp  # (B, K)
        if self.weight is None:
            return terms.sum(dim=1).mean()
        return (terms * self.weight[None, :]).sum() / (p @ self.weight).sum()


def _focal_factor(logp: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - q)^gamma from log-probabilities. 1 - q is computed as -expm1(log q) and kept above 1e-12:
    where float32 rounds q to exactly 1, 0^gamma with gamma < 1 has an infinite derivative, which
    autograd turns into NaN weights even for a class whose target is 0."""
    return (-torch.expm1(logp)).clamp_min(1e-12) ** gamma


class CrossEntropy(nn.CrossEntropyLoss):
    """torch's cross-entropy, with class probabilities (mixup/cutmix) divided like labels: a
    class-weighted mean over the batch's weight mass sum_i w . p_i (torch divides soft targets by
    the batch size instead, which scales the loss by the batch's mean class weight as soon as
    mixup is on, even for one-hot targets)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() != 2 or self.weight is None:
            return super().forward(logits, target)
        per = F.cross_entropy(logits, target, weight=self.weight, label_smoothing=self.label_smoothing,
                              reduction="none")  # (B,)
        return per.sum() / (target @ self.weight).sum()


@LOSSES.register("cross_entropy", summary="cross-entropy on logits, with label smoothing and class weights")
def _cross_entropy(params, weight, label_smoothing):
    return CrossEntropy(weight=weight, label_smoothing=label_smoothing)


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
