"""The checks of ``cnnlab diagnose``: each is ``fn(ctx) -> list[Finding]`` registered in
``CHECKS``; each threshold is a named constant whose comment says why it sits where it does.
The findings, their triggers and example outputs: docs/diagnostics.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import rundir as rd
from ..errors import UserError
from ..lifecycle import Failure, RunStatus, StopReason, failure_of, status_of, stop_reason_of
from .findings import CHECKS, Finding, RunContext, finite

# ------------------------------------------------------------------------------ shared helpers
def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _final_train_acc(ctx: RunContext) -> tuple[float | None, str]:
    """Training accuracy of the evaluated model (eval mode) when known, else the last epoch's."""
    if "train" in ctx.metrics:
        return float(ctx.metrics["train"]["accuracy"]), "eval-mode accuracy on the training split"
    s = ctx.series("train_acc")
    return (s[-1][1], f"train_acc at epoch {s[-1][0]}") if s else (None, "")


# A training-loss change smaller than this share of the best loss so far is noise, not progress:
# epoch-to-epoch jitter of a mean over thousands of images is of this order.
PLATEAU_REL_IMPROVEMENT = 0.01
# A plateau is at least this many epochs, and at least this share of the run: shorter stalls are
# normal between lr drops and in the first epochs of Adam.
PLATEAU_MIN_EPOCHS = 5
PLATEAU_MIN_SHARE = 0.2
# Above this training accuracy a flat loss means the data is fit (converged), not stuck.
PLATEAU_FIT_ACC = 0.98


def plateau(ctx: RunContext) -> dict[str, Any] | None:
    """The final stretch in which the training loss never beat its best by PLATEAU_REL_IMPROVEMENT,
    when it is long enough to count: ``{"since", "epochs", "loss", "last"}``; else None."""
    s = ctx.series("train_loss")
    if len(s) < PLATEAU_MIN_EPOCHS + 1:
        return None
    acc, _ = _final_train_acc(ctx)
    if acc is not None and acc >= PLATEAU_FIT_ACC:
        return None
    best_epoch, best = s[0]
    for epoch, loss in s[1:]:
        if loss < best * (1 - PLATEAU_REL_IMPROVEMENT):
            best_epoch, best = epoch, loss
    stalled = s[-1][0] - best_epoch
    if stalled < max(PLATEAU_MIN_EPOCHS, PLATEAU_MIN_SHARE * len(s)):
        return None
    return {"since": best_epoch, "epochs": stalled, "loss": best, "last": s[-1][1]}


# ------------------------------------------------------------------------------------ checks
# Collapse: the most-predicted class gets at least this share of the held-out predictions. A
# healthy model gives each class about its own share (1/K); half of everything to one class is 5x
# that with 10 classes, and with 2-3 classes the loss condition below keeps this from firing alone.
COLLAPSE_TOP_SHARE = 0.5
# ... or fewer than this share of the classes is ever predicted (K >= 4): "one or few classes".
COLLAPSE_CLASS_SHARE = 0.5
# ... and the final training loss is within this relative distance of the chance loss (ln K for
# cross-entropy). Seed 000: 2.36 against ln 10 = 2.30, 2.5 % off; a model that learnt anything sits
# well below (a softmax-output model at 90 % accuracy: ~1.56 = 0.68 ln 10).
COLLAPSE_LOSS_BAND = 0.10


@CHECKS.register("collapse")
def check_collapse(ctx: RunContext) -> list[Finding]:
    """Predictions concentrated on one or few classes while the loss sits at chance level."""
    split, chance = ctx.heldout, ctx.chance_loss
    losses = ctx.series("train_loss")
    if split is None or chance is None or not losses:
        return []
    pred = ctx.predicted_counts(split)  # (K,) images predicted as each class
    k, n = len(pred), int(pred.sum())
    top = int(pred.argmax())
    top_share = float(pred[top]) / max(n, 1)
    predicted = int((pred > 0).sum())
    concentrated = top_share >= COLLAPSE_TOP_SHARE or (k >= 4 and predicted < COLLAPSE_CLASS_SHARE * k)
    epoch, loss = losses[-1]
    near = abs(loss - chance) <= COLLAPSE_LOSS_BAND * chance
    if not (concentrated and near):
        return []
    name = ctx.class_names[top]
    acc = float(ctx.metrics[split]["accuracy"])
    return [Finding(
        "collapse", "error", "the model predicts (almost) one class: training collapsed",
        f"{top_share:.1%} of the {n} {split} predictions are class {name!r} and only {predicted} of {k} classes are "
        f"ever predicted ({split} accuracy {acc:.1%}, chance {1 / k:.1%}); train loss at epoch {epoch} is "
        f"{loss:.4f}, chance level for {k} classes is {chance:.4f}",
        "The network outputs the same answer whatever the image, so its loss cannot fall below the chance level "
        "and no amount of further training helps; usually the first steps blew the weights into a region where "
        "every unit is saturated or dead.",
        ["lower train.lr (10x, e.g. Adam 1e-3 or less)", "model.softmax_output = false (feed logits to the loss)",
         "BatchNorm (model.norm = 'batch') and He init (model.init = 'kaiming')", "train.grad_clip = 1.0",
         "a warmup (train.scheduler.warmup_epochs = 2)",
         "if instead the lr is tiny or only an epoch or two ran, the model has not started learning: raise "
         "the lr or train longer"],
        {"split": split, "top_class": name, "top_share": top_share, "classes_predicted": predicted,
         "num_classes": k, "accuracy": acc, "epoch": epoch, "train_loss": loss, "chance_loss": chance},
    )]


@CHECKS.register("plateau")
def check_plateau(ctx: RunContext) -> list[Finding]:
    """Training loss not improving for many epochs at a level where the data is not yet fit."""
    p = plateau(ctx)
    if p is None:
        return []
    acc, acc_what = _final_train_acc(ctx)
    return [Finding(
        "plateau", "warning", "the training loss stopped improving",
        f"the train loss has not improved by {PLATEAU_REL_IMPROVEMENT:.0%} for {p['epochs']} epochs: best "
        f"{p['loss']:.4f} at epoch {p['since']}, {p['last']:.4f} at the end"
        + (f" ({acc_what} {acc:.1%})" if acc is not None else ""),
        "Epochs spent on a plateau cost time and teach nothing; the optimizer is stuck (lr too high to settle or "
        "too low to move), or the model cannot fit the data as it is set up.",
        ["a scheduler that lowers the lr on a plateau (train.scheduler = 'plateau') or cosine",
         "another lr (try 3x lower and 3x higher)", "BatchNorm, He init, residual connections (resnet18)",
         "a bigger model if the training accuracy is low"],
        p,
    )]


# Divergence by level: a training loss above this multiple of the chance loss. An untrained model
# sits near chance (ln K); ten times that means the steps threw the weights far off.
DIVERGENCE_CHANCE_MULTIPLE = 10.0
# Divergence by a rise: the training loss climbs to at least this multiple of its best so far ...
DIVERGENCE_RISE = 2.0
# ... and by at least this share of the chance loss, so that 0.001 -> 0.003 near zero does not count.
DIVERGENCE_MIN_RISE = 0.25


@CHECKS.register("divergence")
def check_divergence(ctx: RunContext) -> list[Finding]:
    """NaN/inf losses (the run failed with a non-finite loss or outputs) or a training loss that rises sharply."""
    remedies = ["lower train.lr (3-10x)", "train.grad_clip = 1.0", "BatchNorm (model.norm = 'batch')",
                "a warmup (train.scheduler.warmup_epochs = 2)", "precision = 'fp32' if mixed precision is on"]
    why = ("Once the loss blows up the weights are garbage: later epochs cannot recover, and the run's best "
           "checkpoint comes from before the blow-up.")
    # The trainer logs a non-finite loss as None; val_loss is also None without a val split, which
    # shows as val_acc None too.
    bad = [int(h["epoch"]) for h in ctx.history
           if not finite(h.get("train_loss")) or (not finite(h.get("val_loss")) and h.get("val_acc") is not None)]
    failure = failure_of(ctx.status)
    failed = status_of(ctx.status) is RunStatus.FAILED and failure in (Failure.NON_FINITE_LOSS,
                                                                       Failure.NON_FINITE_OUTPUTS)
    if bad or failed:
        epoch = bad[0] if bad else ctx.status.get("epoch")
        s = ctx.series("train_loss")
        before = f"; the last finite train loss was {s[-1][1]:.4f} at epoch {s[-1][0]}" if s else ""
        return [Finding("divergence", "error", "the loss became NaN or infinite",
                        (f"the loss is NaN/inf at epoch {epoch}" if bad or failure is Failure.NON_FINITE_LOSS else
                         f"the model's outputs are NaN/inf after epoch {epoch}, though the training loss stayed finite")
                        + (f" (run.json: status failed, error {ctx.status.get('error')})" if failed else "")
                        + before, why, remedies, {"epoch": epoch, "nan_epochs": bad, "failed": failed})]
    s = ctx.series("train_loss")
    chance = ctx.chance_loss
    high = [(e, v) for e, v in s if chance is not None and v >= DIVERGENCE_CHANCE_MULTIPLE * chance]
    if high:
        e, v = max(high, key=lambda t: t[1])
        return [Finding("divergence", "error", "the training loss blew up",
                        f"the train loss reached {v:.4g} at epoch {e}, {v / chance:.0f}x the chance level {chance:.4f} "
                        f"(a model that knows nothing scores the chance level)", why, remedies,
                        {"epoch": e, "loss": v, "chance_loss": chance, "epochs_above": [t[0] for t in high]})]
    floor = (chance or 1.0) * DIVERGENCE_MIN_RISE
    best_e, best = (s[0] if s else (0, 0.0))
    for epoch, loss in s[1:]:
        if loss >= DIVERGENCE_RISE * best and loss - best >= floor:
            return [Finding("divergence", "error", "the training loss rose sharply",
                            f"the train loss rose from {best:.4f} (epoch {best_e}) to {loss:.4f} at epoch {epoch} "
                            f"({loss / best:.1f}x)", why, remedies,
                            {"epoch": epoch, "best_epoch": best_e, "best": best, "loss": loss})]
        if loss < best:
            best_e, best = epoch, loss
    return []


# Overfitting, judged on the whole history (not only the restored checkpoint):
# (a) the val loss ends at least this much above its minimum (relative) ...
OVERFIT_VAL_RISE = 0.10
# ... at least this many epochs after the minimum (one or two worse epochs are noise) ...
OVERFIT_MIN_EPOCHS = 3
# ... while training accuracy exceeds validation accuracy by at least this much at the end. Dropout
# and augmentation lower the training-mode accuracy, so a real gap shows even when it is small;
# 3 points is beyond the jitter of a few hundred validation images' accuracy between epochs.
OVERFIT_GAP = 0.03
# (b) or, at some epoch, training accuracy (training mode) exceeds validation accuracy by at least
# this much while above OVERFIT_FIT_ACC: the model fits its training images and not new ones. A
# healthy CIFAR-10 ResNet ends 100 % / 94 % (6 points), seed 001's CNN 95 % / 87 % (8 points).
OVERFIT_LARGE_GAP = 0.20
OVERFIT_FIT_ACC = 0.90


def _restored_epoch(ctx: RunContext) -> int | None:
    """The epoch whose weights the final metrics come from when the run restored its best
    checkpoint (early_stopping.restore_best, the best by its monitor), else None."""
    if not bool(ctx.cfg("train.early_stopping.restore_best", True)):
        return None
    monitor = str(ctx.cfg("train.early_stopping.monitor", "val_loss"))
    mode = str(ctx.cfg("train.early_stopping.mode", "min"))
    s = ctx.series(monitor)
    if not s:
        return None
    best = (min if mode == "min" else max)(s, key=lambda t: t[1])
    return None if best[0] == s[-1][0] else best[0]


@CHECKS.register("overfitting")
def check_overfitting(ctx: RunContext) -> list[Finding]:
    """Train-val gap with a val loss rising after its minimum, or a large train-val accuracy gap at
    any epoch; says where it began. A warning also when the run restored an earlier checkpoint: the
    restore hides the worst of it from the final metrics, not the cause."""
    vl = ctx.series("val_loss")
    tl = dict(ctx.series("train_loss"))
    ta, va = dict(ctx.series("train_acc")), dict(ctx.series("val_acc"))
    rising = None  # (a): (best epoch, best val loss, last epoch, last val loss, gap at the end)
    if len(vl) >= OVERFIT_MIN_EPOCHS + 2:
        best_e, best = min(vl, key=lambda t: t[1])
        last_e, last = vl[-1]
        gap = ta.get(last_e, 0.0) - va.get(last_e, 0.0)
        if (last_e - best_e >= OVERFIT_MIN_EPOCHS and last >= best * (1 + OVERFIT_VAL_RISE) and gap >= OVERFIT_GAP
                and tl.get(last_e, math.inf) < tl.get(best_e, math.inf)):
            rising = (best_e, best, last_e, last, gap)
    gaps = [(e, ta[e] - va[e]) for e in sorted(ta) if e in va and ta[e] >= OVERFIT_FIT_ACC]
    widest = max(gaps, key=lambda t: t[1]) if gaps else None
    large = widest if widest is not None and widest[1] >= OVERFIT_LARGE_GAP else None
    if rising is None and large is None:
        return []
    parts = []
    if rising is not None:
        best_e, best, last_e, last, gap = rising
        began = best_e
        title = f"overfitting began after epoch {best_e}"
        parts.append(f"val loss was lowest at epoch {best_e} ({best:.4f}) and rose to {last:.4f} by epoch {last_e} "
                     f"(+{last / best - 1:.0%}) while the train loss fell from {tl[best_e]:.4f} to {tl[last_e]:.4f}; "
                     f"train/val accuracy at epoch {last_e}: {ta.get(last_e, 0):.1%} / {va.get(last_e, 0):.1%} "
                     f"(gap {gap:.1%})")
    if large is not None:
        e, gap = large
        if rising is None:
            began = next(ep for ep, g in gaps if g >= OVERFIT_LARGE_GAP)
            title = f"overfitting: train accuracy {ta[e]:.0%}, validation {va[e]:.0%}"
        parts.append(f"at epoch {e} the model was right on {ta[e]:.1%} of its training images (training mode) "
                     f"and {va[e]:.1%} of the validation images: a gap of {gap:.1%}")
    restored = _restored_epoch(ctx)
    note = ""
    if restored is not None:
        note = (f"; the run restored its epoch-{restored} checkpoint (best "
                f"{ctx.cfg('train.early_stopping.monitor', 'val_loss')}), which avoids the worst of it in the final "
                "metrics, but the model still generalizes poorly: the cure is in the remedies, not more capacity")
    return [Finding(
        "overfitting", "warning", title, "; ".join(parts) + note,
        "The model memorises the training images instead of learning what generalises: more capacity or more "
        "epochs make it worse on new images, not better.",
        ["augmentation (data.augment.crop_padding = 4, hflip = true)", "dropout (model.dropout = 0.3)",
         "weight decay (train.optimizer = 'adamw', train.weight_decay = 1e-4 to 5e-4)",
         "early stopping on val_loss (train.early_stopping.patience = 5-10, restore_best = true)",
         "more data, a smaller model, or a pretrained backbone"],
        {"began_after_epoch": began, "best_val_loss": rising[1] if rising else None,
         "final_val_loss": rising[3] if rising else None, "final_epoch": ctx.series("train_loss")[-1][0] if tl else None,
         "gap": rising[4] if rising else None, "largest_gap": widest[1] if widest else None,
         "largest_gap_epoch": widest[0] if widest else None, "restored_epoch": restored,
         "restored_best": restored is not None},
    )]


def _best_train_acc(ctx: RunContext) -> tuple[float | None, str]:
    """The best training accuracy the run ever reached: the largest of every epoch's (training
    mode) and the evaluated model's (eval mode), with where it comes from."""
    found = [(acc, f"train_acc at epoch {e}") for e, acc in ctx.series("train_acc")]
    final, what = _final_train_acc(ctx)
    if final is not None:
        found.append((final, what))
    return max(found, key=lambda t: t[0]) if found else (None, "")


def _slope(s: list[tuple[int, float]]) -> float:
    """Least-squares slope (value per epoch) of ``(epoch, value)`` points; 0 for fewer than two."""
    if len(s) < 2:
        return 0.0
    e = np.array([p[0] for p in s], dtype=float)
    v = np.array([p[1] for p in s], dtype=float)
    return float(np.polyfit(e, v, 1)[0]) if np.ptp(e) > 0 else 0.0


def _cut_short(ctx: RunContext) -> str | None:
    """Why the run ended before its planned epochs ("stopped at epoch 8 of 120 (early stopping: ...)"),
    or None when it trained them all or the plan is unknown."""
    planned = ctx.cfg("train.epochs")
    s = ctx.series("train_loss") or ctx.series("train_acc")
    if not isinstance(planned, int) or not s or s[-1][0] >= planned:
        return None
    reason = stop_reason_of(ctx.status)
    why = str(ctx.status.get("stop_message") or ctx.status.get("stop_reason") or "")
    if reason is not None and not why:
        why = reason.message
    if not why:
        st = status_of(ctx.status)
        why = st.message if st is not None else ""
    return f"stopped at epoch {s[-1][0]} of {planned}" + (f" ({why})" if why else "")


# Underfitting: the best training accuracy the run ever reached covers less than this share of the
# way from chance (1/K) to 100 %: for 10 classes below 55 %, for 2 classes below 75 %. The best of the
# whole history: a model that fit its training data at some epoch does not lack capacity, whatever
# checkpoint was restored.
UNDERFIT_HEADROOM = 0.5
# Still improving: the training accuracy's least-squares slope over the last epochs is at least
# this (half a point per epoch): at that pace ten more epochs add five points.
UNDERFIT_IMPROVING = 0.005
UNDERFIT_TREND_EPOCHS = 3


def _underfit(ctx: RunContext) -> dict[str, Any] | None:
    best, what = _best_train_acc(ctx)
    k = ctx.num_classes
    if best is None or k < 2:
        return None
    limit = 1 / k + UNDERFIT_HEADROOM * (1 - 1 / k)
    if best >= limit:
        return None
    s = ctx.series("train_acc")[-(UNDERFIT_TREND_EPOCHS + 1):]
    slope = _slope(s)
    return {"train_accuracy": best, "what": what, "limit": limit, "slope_per_epoch": slope, "epochs": len(s) - 1,
            "improving": slope >= UNDERFIT_IMPROVING, "cut_short": _cut_short(ctx),
            "too_few_epochs": len(ctx.series("train_acc")) < UNDERFIT_TREND_EPOCHS + 1}


@CHECKS.register("underfitting")
def check_underfitting(ctx: RunContext) -> list[Finding]:
    """The model never fit even its training data: still improving (train longer; say so when the
    run was cut short) or flat (the model or the optimization cannot fit it)."""
    u = _underfit(ctx)
    if u is None:
        return []
    k, slope, n = ctx.num_classes, u["slope_per_epoch"], u["epochs"]
    few = u["too_few_epochs"]
    trend = (f"after only {n + 1} epoch{'s' if n else ''}, too few to tell whether it is still learning" if few
             else f"still rising {slope:+.1%} per epoch over the last {n} epochs" if u["improving"]
             else f"flat over the last {n} epochs ({slope:+.1%} per epoch)")
    cut = u["cut_short"]
    if u["improving"] or cut or few:
        title = (f"the run {cut.split(' (')[0]} while the model was still learning" if cut and u["improving"]
                 else "the model has not fit the training data yet")
        remedies = ["train longer: cnnlab resume RUN_DIR --epochs N, or a larger train.epochs",
                    "a longer early-stopping patience (train.early_stopping.patience) if early stopping ended it",
                    "a higher lr or a scheduler with warmup, if it learns this slowly from the start"]
    else:
        title = "the model does not fit even the training data"
        remedies = ["a bigger model (more channels, more hidden units) or resnet18", "less regularization (dropout, "
                    "weight decay, augmentation)", "another lr (3x higher and lower)", "BatchNorm and He init"]
    return [Finding(
        "underfitting", "warning", title,
        f"the best training accuracy reached is {u['train_accuracy']:.1%} ({u['what']}; below {u['limit']:.0%} for {k} "
        f"classes, chance {1 / k:.1%}), {trend}" + (f"; the run {cut}" if cut else ""),
        "A model that has not fit its own training images cannot do better on new ones; whether it needs more "
        "training or more capacity depends on whether it was still learning.",
        remedies, {k2: v for k2, v in u.items() if k2 != "what"},
    )]


# Still improving at the end: the validation accuracy (else the training accuracy) rose at least
# this much per epoch (least squares over the last STILL_IMPROVING_EPOCHS epochs) and was best in
# one of the last two epochs. Half a point per epoch is well above the epoch-to-epoch jitter of a
# slope fitted over four epochs on a few hundred images, and worth ten more epochs.
STILL_IMPROVING = 0.005
STILL_IMPROVING_EPOCHS = 4
# At or above this pace (two points per epoch) the run is far from converged: a warning, not info.
STILL_IMPROVING_STEEP = 0.02


@CHECKS.register("still_improving")
def check_still_improving(ctx: RunContext) -> list[Finding]:
    """The run ended while its accuracy was still rising: it would gain from more epochs."""
    key = "val_acc" if ctx.series("val_acc") else "train_acc"
    s = ctx.series(key)
    if len(s) < STILL_IMPROVING_EPOCHS + 1 or stop_reason_of(ctx.status) is StopReason.EARLY_STOPPING:
        return []
    if _underfit(ctx) is not None:  # underfitting already says "still learning: train longer"
        return []
    tail = s[-(STILL_IMPROVING_EPOCHS + 1):]
    slope = _slope(tail)
    best_e = max(s, key=lambda t: t[1])[0]
    if slope < STILL_IMPROVING or best_e < s[-2][0]:
        return []
    severity = "warning" if slope >= STILL_IMPROVING_STEEP else "info"
    cut = _cut_short(ctx)
    return [Finding(
        "still_improving", severity, "stopped while still improving: train longer",
        f"{key} rose {slope:+.1%} per epoch over the last {len(tail) - 1} epochs and was best at epoch {best_e} "
        f"({max(v for _, v in s):.1%})" + (f"; the run {cut}" if cut else f", the last of the {s[-1][0]} planned"),
        "The model was still getting better when training ended; the reported metrics are not what this setup "
        "reaches.",
        ["train longer: cnnlab resume RUN_DIR --epochs N (continues from the last checkpoint), or a larger "
         "train.epochs", "a schedule that decays to the end of the run (cosine) to converge within the epochs"],
        {"metric": key, "slope_per_epoch": slope, "best_epoch": best_e, "last_epoch": s[-1][0], "cut_short": cut},
    )]


# A transfer run has not converged when its training accuracy still rises this much per epoch at the
# end (least squares over the last UNDERFIT_TREND_EPOCHS epochs: three points per epoch is steep) ...
TRANSFER_STEEP = 0.03
# ... or its best training accuracy stays this far below the source run's (a pretrained backbone
# should make the new task at least about as easy to fit as the source's was).
TRANSFER_SOURCE_GAP = 0.15


def _source_train_acc(ctx: RunContext) -> tuple[float | None, str]:
    """The training accuracy of the run a transfer run started from (its metrics.json), when
    ``transfer.init_from`` names a readable run directory."""
    src = ctx.cfg("transfer.init_from")
    if not isinstance(src, str) or ":" in src:
        return None, ""
    d = Path(src).expanduser()
    if not d.is_absolute():
        # Relative paths were given from where the run was started: try that and the run's parent.
        d = next((c for c in (Path.cwd() / d, ctx.dir.parent.parent / d) if rd.is_run_dir(c)), d)
    if not rd.is_run_dir(d):
        return None, ""
    try:
        m = rd.read_metrics(d)
    except UserError:  # the source's damage is not this run's finding
        return None, ""
    for split in ("train", "val", "test"):
        acc = m.get(split, {}).get("accuracy") if isinstance(m.get(split), dict) else None
        if finite(acc):
            return float(acc), f"{split} accuracy of the source run {d}"
    return None, ""


@CHECKS.register("transfer_not_converged")
def check_transfer_not_converged(ctx: RunContext) -> list[Finding]:
    """A transfer run whose trainable part was still improving steeply at the end, or that fit its
    training data far worse than the source run fit its own: not converged, not a bad source."""
    if not ctx.cfg("transfer.init_from"):
        return []
    s = ctx.series("train_acc")
    if len(s) < 2:
        return []
    slope = _slope(s[-(UNDERFIT_TREND_EPOCHS + 1):])
    best, what = _best_train_acc(ctx)
    src, src_what = _source_train_acc(ctx)
    steep = slope >= TRANSFER_STEEP
    behind = src is not None and best is not None and best < src - TRANSFER_SOURCE_GAP
    if not (steep or behind):
        return []
    lr, head_lr = ctx.cfg("train.lr"), ctx.cfg("transfer.head_lr")
    evidence = []
    if steep:
        evidence.append(f"train_acc still rose {slope:+.1%} per epoch over the last epochs (epoch {s[-1][0]}: "
                        f"{s[-1][1]:.1%})")
    if behind:
        evidence.append(f"the best training accuracy, {best:.1%} ({what}), is {src - best:.1%} below the {src_what} "
                        f"({src:.1%})")
    return [Finding(
        "transfer_not_converged", "warning", "not converged: raise transfer.head_lr / train.lr or train longer",
        "; ".join(evidence) + f"; train.lr = {lr}" + (f", transfer.head_lr = {head_lr}" if head_lr else ""),
        "A transferred network that has not finished adapting looks worse than training from scratch; that "
        "measures the lr and the epochs, not whether transfer helps.",
        ["raise transfer.head_lr (10x train.lr is common for a new head) or train.lr",
         "train longer (train.epochs, and early-stopping patience that lets it)",
         "unfreeze more of the backbone (transfer.unfreeze) if the frozen features do not fit the new classes"],
        {"slope_per_epoch": slope, "best_train_accuracy": best, "source_accuracy": src, "lr": lr, "head_lr": head_lr},
    )]


def _layer_grads(rec: dict[str, Any]) -> list[tuple[str, float]]:
    return [(l["name"], l["grad_norm"]) for l in rec.get("layers", []) if finite(l.get("grad_norm"))]


# Vanishing gradients: the first weight layer's gradient norm is below this multiple of the last
# layer's (median over the recorded epochs). Healthy nets keep the two within one or two orders of
# magnitude (layer sizes differ); three orders means the first layers barely learn.
VANISHING_RATIO = 1e-3


@CHECKS.register("vanishing_gradients")
def check_vanishing(ctx: RunContext) -> list[Finding]:
    """First layers' gradient norms orders of magnitude below the last layers'."""
    ratios = []
    for rec in ctx.stats:
        g = _layer_grads(rec)
        if len(g) >= 2 and g[-1][1] > 0:
            ratios.append((rec["epoch"], g[0][1] / g[-1][1], g[0], g[-1]))
    if not ratios:
        return []
    med = float(np.median([r[1] for r in ratios]))
    if med >= VANISHING_RATIO:
        return []
    epoch, ratio, first, last = ratios[-1]
    return [Finding(
        "vanishing_gradients", "warning", "gradients vanish before they reach the first layers",
        f"median over {len(ratios)} recorded epochs: the first layer's gradient norm is {med:.1e} x the last "
        f"layer's; at epoch {epoch}: {first[0]} {first[1]:.2e} vs {last[0]} {last[1]:.2e}",
        "The first layers, which extract the features everything else uses, receive almost no gradient and "
        "stay near their random initialisation.",
        ["ReLU/LeakyReLU instead of sigmoid/tanh (model.activation)", "BatchNorm (model.norm = 'batch')",
         "He init (model.init = 'kaiming')", "fewer layers or residual connections (resnet18)"],
        {"median_ratio": med, "epoch": epoch, "first_layer": first[0], "last_layer": last[0],
         "ratios": [(r[0], r[1]) for r in ratios]},
    )]


# Exploding gradients: the total gradient norm grows to this multiple of its value at the first
# recorded epoch while the training loss got worse that epoch, ...
EXPLODING_GROWTH = 100.0
# ... or to this multiple whatever the loss does. Growth alone at 100x is not enough: a small conv net
# starts with tiny gradients (seed000_net1 on CIFAR-10: 0.14 at epoch 1, then 2-14 for the rest of a
# healthy 120-epoch run whose loss fell throughout); an explosion is orders of magnitude more, or
# comes with a loss that rises.
EXPLODING_GROWTH_ALONE = 1e4
# "The loss got worse" means 10 % above the best training loss so far: epoch-to-epoch noise in a
# healthy run is well under that (seed000_net1: +0.6 % at its noisiest late epoch).
EXPLODING_LOSS_RISE = 0.10
# ... or the first layer's gradient is this multiple of the last layer's (explosion backwards),
EXPLODING_RATIO = 1e3
# ... or one epoch moves a layer's weights by more than this multiple of their own norm. The first
# recorded epoch is left out: moving far from a small random init (a 500 -> 10 output layer under
# Adam moves 1.75x its init norm in a healthy MNIST run) is learning, not explosion.
EXPLODING_UPDATE = 1.0


@CHECKS.register("exploding_gradients")
def check_exploding(ctx: RunContext) -> list[Finding]:
    """Gradient norms growing by orders of magnitude, non-finite, or weights doubling in an epoch."""
    if not ctx.stats:
        return []
    ev: list[str] = []
    data: dict[str, Any] = {}
    nonfinite = [r["epoch"] for r in ctx.stats if any(l.get("grad_norm") is None for l in r.get("layers", []))]
    totals = [(r["epoch"], r["grad_norm"]) for r in ctx.stats if finite(r.get("grad_norm"))]
    if nonfinite:
        ev.append(f"non-finite gradient norms at epoch {nonfinite[0]}")
        data["nonfinite_epochs"] = nonfinite
    loss = ctx.series("train_loss")
    rising = {e for i, (e, v) in enumerate(loss)
              if i and v > (1 + EXPLODING_LOSS_RISE) * min(u for _, u in loss[:i])}
    if len(totals) >= 2 and totals[0][1] > 0:
        g0 = totals[0][1]
        grown = [(e, g) for e, g in totals[1:]
                 if g >= EXPLODING_GROWTH_ALONE * g0 or (g >= EXPLODING_GROWTH * g0 and e in rising)]
        if grown:
            e, g = max(grown, key=lambda t: t[1])
            ev.append(f"total gradient norm {g:.3g} at epoch {e}, {g / totals[0][1]:.0f}x its {totals[0][1]:.3g} "
                      f"at epoch {totals[0][0]}")
            data["growth"] = g / totals[0][1]
    for r in ctx.stats:
        g = _layer_grads(r)
        if len(g) >= 2 and g[-1][1] > 0 and g[0][1] / g[-1][1] >= EXPLODING_RATIO:
            ev.append(f"epoch {r['epoch']}: first layer {g[0][0]} gradient {g[0][1]:.2e} is "
                      f"{g[0][1] / g[-1][1]:.0e} x the last layer's ({g[-1][0]} {g[-1][1]:.2e})")
            data["first_last_ratio"] = g[0][1] / g[-1][1]
            break
    big = [(r["epoch"], l["name"], l["update_ratio"]) for r in ctx.stats[1:] for l in r.get("layers", [])
           if finite(l.get("update_ratio")) and l["update_ratio"] > EXPLODING_UPDATE]
    if big:
        e, name, u = max(big, key=lambda t: t[2])
        ev.append(f"{len(big)} layer-epochs moved their weights by more than their own norm (largest: {name} "
                  f"at epoch {e}, update/weight {u:.2f})")
        data["max_update_ratio"] = u
    if not ev:
        return []
    return [Finding(
        "exploding_gradients", "error" if nonfinite else "warning", "gradients or updates explode",
        "; ".join(ev),
        "Huge gradients make each step overshoot: the weights jump instead of descending, the loss turns noisy "
        "or NaN, and units saturate or die.",
        ["train.grad_clip = 1.0", "lower train.lr", "BatchNorm (model.norm = 'batch')",
         "He/Xavier init (model.init)", "a warmup (train.scheduler.warmup_epochs)"],
        data,
    )]


# Dead ReLU: at least this share of a layer's units (channels / features) never fire on the probe
# batch. Only nn.ReLU/ReLU6: a LeakyReLU/ELU/GELU unit that stays negative still passes gradient and
# can recover. A healthy ReLU layer has a few percent dead units; half means half the width is lost.
DEAD_SHARE = 0.5
DEAD_TYPES = ("ReLU", "ReLU6")
# A unit silent on a few dozen images is not shown to be dead (it may fire on other images): below
# this many probe images the finding is info, with the caveat. 200 images: a unit that fires on 1 %
# of images is then missed with probability 0.99^200 = 13 %.
DEAD_MIN_PROBE = 200


@CHECKS.register("dead_relu")
def check_dead_relu(ctx: RunContext) -> list[Finding]:
    """ReLU layers whose units never activate on the probe batch (last recorded epoch)."""
    if not ctx.stats:
        return []
    rec = ctx.stats[-1]
    dead = [(a["name"], a["dead"]) for a in rec.get("activations", [])
            if a.get("type") in DEAD_TYPES and finite(a.get("dead")) and a["dead"] >= DEAD_SHARE]
    if not dead:
        return []
    probe = rec.get("probe_size")
    enough = finite(probe) and probe >= DEAD_MIN_PROBE
    # Dead units cost the run only when it could not fit its training data (underfitting, a
    # plateau); a model that fit it has width to spare (a wide head under weight decay and label
    # smoothing often loses most of its units and still generalizes: examples/seed003_better.toml).
    hurting = _underfit(ctx) is not None or plateau(ctx) is not None
    layers = ", ".join(f"{n} {d:.0%}" for n, d in dead)
    caveat = "" if enough else (f"; only {probe if finite(probe) else '?'} probe images (fewer than {DEAD_MIN_PROBE}): "
                                "a unit silent on so few is not shown to be dead (raise diagnostics.probe_size, or "
                                "train on more images)")
    if enough and not hurting:
        caveat = ("; the model fit its training data all the same, so the layer has width to spare: a smaller layer "
                  "would do, or these remedies if you need its capacity")
    return [Finding(
        "dead_relu", "warning" if enough and hurting else "info",
        "many ReLU units are dead" if enough else "many ReLU units were silent on a small probe batch",
        f"at epoch {rec['epoch']}, share of units never active on the {probe if finite(probe) else '?'}-image "
        f"probe batch: {layers}{caveat}",
        "A ReLU unit that never fires gets zero gradient and never comes back: the layer works with a fraction "
        "of its width.",
        ["lower train.lr (large steps push biases negative)", "LeakyReLU (model.activation = 'leaky_relu')",
         "He init (model.init = 'kaiming')", "BatchNorm before the activation"],
        {"epoch": rec["epoch"], "layers": dict(dead), "probe_size": probe, "enough_images": enough,
         "fit_anyway": not hurting},
    )]


# Saturation: at least this share of a sigmoid/tanh layer's outputs within 1 % of the range's ends
# (stats.SATURATION_MARGIN), where the slope is < 4 % of its peak. Healthy layers: a few percent.
SATURATION_SHARE = 0.3
SATURATING_TYPES = ("Sigmoid", "Tanh")


@CHECKS.register("saturation")
def check_saturation(ctx: RunContext) -> list[Finding]:
    """Sigmoid/tanh outputs pinned at their limits (last recorded epoch)."""
    if not ctx.stats:
        return []
    rec = ctx.stats[-1]
    sat = [(a["name"], a["type"], a["saturated"]) for a in rec.get("activations", [])
           if a.get("type") in SATURATING_TYPES and finite(a.get("saturated")) and a["saturated"] >= SATURATION_SHARE]
    if not sat:
        return []
    layers = ", ".join(f"{n} ({t}) {s:.0%}" for n, t, s in sat)
    return [Finding(
        "saturation", "warning", "sigmoid/tanh outputs are saturated",
        f"at epoch {rec['epoch']}, share of outputs pinned at the limits on the probe batch: {layers}",
        "A saturated sigmoid/tanh has almost zero slope, so the gradient through it vanishes and the layers "
        "before it stop learning.",
        ["ReLU-family activations (model.activation = 'relu' or 'leaky_relu')", "BatchNorm before the activation",
         "Xavier init (model.init = 'xavier') and normalized inputs (data.normalize = 'dataset')", "a lower lr"],
        {"epoch": rec["epoch"], "layers": {n: s for n, _, s in sat}},
    )]


# Weak class: its held-out recall is at least this far below the median of the other classes ...
WEAK_RECALL_GAP = 0.3
# ... or its one-vs-rest AUC at least this far below theirs (seed 004: 0.55 among ~0.9s).
WEAK_AUC_GAP = 0.2
# Classes with fewer held-out images than this are too noisy to call weak.
WEAK_MIN_SUPPORT = 10


def _weak_classes(ctx: RunContext) -> list[dict[str, Any]]:
    split = ctx.heldout
    if split is None:
        return []
    per = ctx.metrics[split]["per_class"]
    names, k = ctx.class_names, ctx.num_classes
    out = []
    for i in range(k):
        if (per["support"][i] or 0) < WEAK_MIN_SUPPORT:
            continue
        others = [j for j in range(k) if j != i]
        hit: dict[str, Any] = {}
        for key, gap in (("recall", WEAK_RECALL_GAP), ("auc", WEAK_AUC_GAP)):
            vals = [per[key][j] for j in others if finite(per[key][j])]
            mine = per[key][i]
            if vals and finite(mine) and mine <= float(np.median(vals)) - gap:
                hit[key] = (mine, float(np.median(vals)))
        if hit:
            out.append({"index": i, "name": names[i], "split": split, **hit})
    return out


@CHECKS.register("weak_class")
def check_weak_class(ctx: RunContext) -> list[Finding]:
    """A class whose held-out recall or AUC stays far below the other classes'."""
    weak = _weak_classes(ctx)
    if not weak:
        return []
    parts = []
    for w in weak:
        bits = [f"{key} {w[key][0]:.2f} vs median {w[key][1]:.2f} of the others" for key in ("recall", "auc") if key in w]
        parts.append(f"class {w['name']!r}: " + ", ".join(bits))
    return [Finding(
        "weak_class", "warning", "some classes are recognised far worse than the rest",
        f"on the {weak[0]['split']} split: " + "; ".join(parts),
        "The headline accuracy hides a class the model barely separates; for that class the model is close to "
        "guessing.",
        ["class weights (train.class_weights = 'balanced' or a list boosting this class)",
         "focal loss (train.loss = 'focal')", "oversampling (data.sampler = 'balanced')",
         "more or cleaner images of this class; check its labels", "a pretrained backbone"],
        {"classes": [{k: v for k, v in w.items()} for w in weak]},
    )]


# Class imbalance: the most common training class has at least this many times the images of the
# rarest. Up to ~3:1 plain cross-entropy copes; beyond it the rare class's share of the gradient
# drops below a quarter of the common class's and its recall usually suffers.
IMBALANCE_RATIO = 3.0

# What a run can do about imbalance: (description, predicate on the config).
IMBALANCE_MEASURES: dict[str, Callable[[RunContext], bool]] = {
    "class weights (train.class_weights)": lambda c: c.cfg("train.class_weights") is not None,
    "oversampling (data.sampler = 'balanced')": lambda c: c.cfg("data.sampler") == "balanced",
    "focal loss": lambda c: (c.cfg("train.loss", {}) or {}).get("name") == "focal"
    if isinstance(c.cfg("train.loss", {}), dict) else c.cfg("train.loss") == "focal",
}


@CHECKS.register("class_imbalance")
def check_class_imbalance(ctx: RunContext) -> list[Finding]:
    """Skewed training labels, with what the run did about it and whether the rare classes suffer."""
    if "train" not in ctx.metrics:
        return []
    counts = np.asarray(ctx.metrics["train"]["per_class"]["support"], dtype=float)
    if len(counts) < 2 or counts.max() <= 0:
        return []
    ratio = counts.max() / max(counts.min(), 1.0)
    if ratio < IMBALANCE_RATIO:
        return []
    names = ctx.class_names
    rare, common = int(counts.argmin()), int(counts.argmax())
    done = [name for name, pred in IMBALANCE_MEASURES.items() if pred(ctx)]
    weak = {w["name"] for w in _weak_classes(ctx)}
    split = ctx.heldout
    rare_recall = ctx.metrics[split]["per_class"]["recall"][rare] if split else None
    unfixed = bool(done) and names[rare] in weak
    severity = "info" if done and not unfixed else "warning"
    did = ("the run used " + " and ".join(done) + (", but the rarest class is still weak" if unfixed else "")) if done \
        else "the run did nothing about it (no class weights, random sampler, cross-entropy)"
    return [Finding(
        "class_imbalance", severity, "the training labels are imbalanced",
        f"training split: class {names[common]!r} has {int(counts[common])} images, class {names[rare]!r} "
        f"{int(counts[rare])} ({ratio:.1f}:1)"
        + (f"; {split} recall of {names[rare]!r} {_fmt(rare_recall, '.2f')}" if split else "") + f"; {did}",
        "With skewed labels the loss is dominated by the common classes: the model learns to favour them and "
        "accuracy hides poor recall on the rare ones.",
        ["class weights (train.class_weights = 'balanced')", "oversampling (data.sampler = 'balanced')",
         "focal loss (train.loss = 'focal')", "judge by macro F1 / per-class recall, not accuracy",
         "collect more images of the rare classes"],
        {"counts": counts.astype(int).tolist(), "ratio": ratio, "rarest": names[rare], "measures": done,
         "rare_recall": rare_recall, "unfixed": unfixed},
    )]


@CHECKS.register("softmax_before_loss")
def check_softmax_before_loss(ctx: RunContext) -> list[Finding]:
    """``model.softmax_output = true``: probabilities fed to a loss that applies log-softmax itself."""
    if not ctx.cfg("model.softmax_output", False):
        return []
    loss = ctx.cfg("train.loss", {})
    name = loss.get("name", "cross_entropy") if isinstance(loss, dict) else str(loss)
    return [Finding(
        "softmax_before_loss", "warning", "softmax output layer fed to a loss that expects logits",
        f"config.toml has model.softmax_output = true and train.loss {name!r}, which applies log-softmax "
        f"itself: the loss sees softmax(softmax(logits))",
        "The double softmax squeezes the loss into a narrow band (for 10 classes between 1.46 and 2.46) and "
        "shrinks its gradients, so training is slow, easily stuck at chance level (seeds 000 and 002).",
        ["model.softmax_output = false (the loss gets logits; metrics apply softmax themselves)"],
        {"loss": name},
    )]


@CHECKS.register("lr_schedule")
def check_lr_schedule(ctx: RunContext) -> list[Finding]:
    """A plateau while the learning rate never changed."""
    p = plateau(ctx)
    lrs = [lr for _, lr in ctx.series("lr")]
    if p is None or not lrs or max(lrs) > min(lrs) * (1 + 1e-9):
        return []
    return [Finding(
        "lr_schedule", "warning", "the loss plateaued with a constant learning rate",
        f"lr {lrs[0]:.2e} for all {len(lrs)} epochs (train.scheduler = "
        f"{ctx.cfg('train.scheduler.name', 'none')!r}) while the train loss stalled for {p['epochs']} epochs "
        f"after epoch {p['since']}",
        "A constant lr that was right at the start is usually too high to settle into a minimum later; a "
        "schedule that lowers it turns the plateau into further progress.",
        ["train.scheduler = 'plateau' (factor 0.1-0.5, patience 3-5) or 'cosine'",
         "a lower starting lr", "a warmup (train.scheduler.warmup_epochs) if the start is unstable"],
        {"lr": lrs[0], "epochs": len(lrs), **p},
    )]


# Early-stopping noise: over the last max(2 x patience, EARLY_STOP_WINDOW) epochs the monitored
# metric's linear trend is still improving by at least one noise s.d. in total, yet the patience
# covers less than EARLY_STOP_NOISE_Z noise s.d. of that trend: a stall of `patience` epochs is
# then what noise alone produces, so the stop was likely premature.
EARLY_STOP_WINDOW = 8
EARLY_STOP_NOISE_Z = 2.0


@CHECKS.register("early_stop_noise")
def check_early_stop_noise(ctx: RunContext) -> list[Finding]:
    """Early stopping whose patience is short against the monitored metric's epoch-to-epoch noise."""
    patience = int(ctx.cfg("train.early_stopping.patience", 0) or 0)
    if patience <= 0 or stop_reason_of(ctx.status) is not StopReason.EARLY_STOPPING:
        return []
    monitor = ctx.cfg("train.early_stopping.monitor", "val_loss")
    if not ctx.series(monitor):
        monitor = monitor.replace("val_", "train_")  # the runner watches train_* without a val split
    s = ctx.series(monitor)
    w = max(2 * patience, EARLY_STOP_WINDOW)
    if len(s) < 4:
        return []
    sign = 1.0 if ctx.cfg("train.early_stopping.mode", "min") == "min" else -1.0
    e = np.array([t[0] for t in s[-w:]], float)
    v = sign * np.array([t[1] for t in s[-w:]], float)  # lower is better
    slope, icpt = np.polyfit(e, v, 1)
    resid = v - (slope * e + icpt)
    sigma = float(resid.std(ddof=2)) if len(e) > 2 else 0.0
    gain = -float(slope)  # improvement per epoch
    if sigma <= 0 or gain * len(e) < sigma or gain * patience >= EARLY_STOP_NOISE_Z * sigma:
        return []
    needed = int(math.ceil(EARLY_STOP_NOISE_Z * sigma / gain))
    return [Finding(
        "early_stop_noise", "warning", "early stopping patience is short against the metric's noise",
        f"stopped at epoch {s[-1][0]} with patience {patience}; over the last {len(e)} epochs {monitor} still "
        f"improved by {gain:.3g} per epoch on trend but jitters by {sigma:.3g} (s.d. around the trend), so "
        f"{patience} epochs of progress ({gain * patience:.3g}) are below {EARLY_STOP_NOISE_Z:g} s.d. of noise",
        "With a noisy validation metric a run of non-improving epochs happens by chance while the model is "
        "still getting better, so training stopped early on noise.",
        [f"train.early_stopping.patience >= {needed}", "a larger validation split (data.val_fraction) to reduce "
         "the noise", "monitor val_loss rather than val_acc (smoother)", "a min_delta below the noise"],
        {"patience": patience, "monitor": monitor, "trend_per_epoch": gain, "noise_sd": sigma,
         "suggested_patience": needed, "stopped_epoch": s[-1][0]},
    )]


