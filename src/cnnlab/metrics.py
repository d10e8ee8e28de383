"""Classification metrics, all derived from one vectorized confusion matrix.

Design: ``confusion_matrix`` builds the (K, K) count table with a single ``np.bincount``; every
per-class metric (precision, recall, specificity, F1, support) is then a handful of array
operations on its diagonal and its row/column sums, so nothing loops over classes and the numbers
are consistent with each other by construction. ROC-AUC cannot come from the confusion matrix
(it needs the scores), so ``roc_auc_ovr`` computes it for every class at once from one tie-aware
ranking of each column of the probability matrix (the Mann-Whitney U statistic).

Conventions (same as scikit-learn with ``labels=range(K)`` and ``zero_division=0``):

* rows of the confusion matrix are the true class, columns the predicted class;
* a ratio whose denominator is zero is 0.0 (e.g. precision of a class that is never predicted);
* AUC of a class with no positives or no negatives is NaN, and macro/weighted AUC skip NaN classes;
* "weighted" averages weight each class by its support (number of true samples).

Inputs may be numpy arrays, lists or torch tensors (moved to CPU). Only numpy is used here.
``compute_metrics`` returns plain Python lists/floats/ints with NaN replaced by ``None``, ready for
``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import rundir as rd  # owns metrics.json: its structure check and its size limit

__all__ = [
    "confusion_matrix",
    "per_class_from_confusion",
    "roc_auc_ovr",
    "compute_metrics",
    "classification_report",
    "top_k",
    "summary",
]

# Per-class metric names, in the order they appear in metrics.json and the text report.
_RATIO_METRICS = ("precision", "recall", "specificity", "f1")


# ------------------------------------------------------------------------------------- helpers
def _to_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of an array-like; torch tensors are detached and moved to CPU first."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _as_labels(y: Any, num_classes: int, name: str) -> np.ndarray:
    """Validate class labels: 1-D integers in [0, num_classes). Returns int64 (N,)."""
    arr = _to_numpy(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)  # np.asarray([]) is float64; an empty label list is fine
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} contains class index {bad}, outside [0, {num_classes})")
    return arr


def _as_probs(y_prob: Any) -> np.ndarray:
    """Validate scores: finite floating-point (N, K) with K >= 1. float32 stays float32 (a copy in
    float64 would double the largest array of a many-class evaluation; orderings, argmax and the
    ranks are the same, and every reduction below is done in float64)."""
    arr = _to_numpy(y_prob)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"y_prob must be 2-D (N, K) with K >= 1, got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("y_prob contains NaN or infinite values")
    return arr



# roc_auc_ovr ranks this many score values at a time (columns of N rows): about 8 arrays of 8 bytes
# each per value, so ~64 MiB whatever N and K (10,000 classes x 20,000 images would otherwise
# allocate several 1.6 GB arrays at once).
AUC_BLOCK_VALUES = 1 << 20


def metrics_memory(n: int, k: int) -> int:
    """Bytes that ``compute_metrics`` needs for a split of ``n`` images and ``k`` classes, the
    (N, K) scores included: their finiteness mask, the ranking blocks, and the (K, K) confusion
    matrix (with its copy as nested lists and JSON text, about 28 bytes an entry, when it is stored)."""
    per_entry = 28 if k <= rd.CONFUSION_JSON_MAX_CLASSES else 8
    return n * k * (4 + 1) + 8 * 8 * min(AUC_BLOCK_VALUES, max(n, 1) * k) + per_entry * k * k


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise num / den as float64, with 0.0 where den == 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nan_weighted_mean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean of the non-NaN entries of ``values`` (optionally weighted); NaN if none has weight."""
    ok = ~np.isnan(values)
    w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    total = w[ok].sum()
    if total == 0:
        return math.nan
    return float((values[ok] * w[ok]).sum() / total)


def _json_float(x: float | None) -> float | None:
    """Python float, or None for NaN/None (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _json_list(arr: np.ndarray) -> list:
    """1-D array -> list of Python ints (integer arrays) or floats with NaN -> None."""
    if np.issubdtype(arr.dtype, np.integer):
        return [int(v) for v in arr]
    return [_json_float(v) for v in arr]


# ------------------------------------------------------------------------------------- metrics
def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int) -> np.ndarray:
    """Confusion matrix of integer labels.

    Args:
        y_true: true class indices, shape (N,), values in [0, num_classes).
        y_pred: predicted class indices, shape (N,), values in [0, num_classes).
        num_classes: K, the number of classes (fixes the matrix size even when some classes
            never occur).

    Returns:
        int64 array (K, K); ``cm[i, j]`` counts samples of true class i predicted as class j.
    """
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    t = _as_labels(y_true, k, "y_true")
    p = _as_labels(y_pred, k, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    # Each (true, pred) pair maps to one cell index t*K + p in the flattened (K*K,) table, so a
    # single bincount counts every cell at once; minlength keeps empty trailing cells.
    return np.bincount(t * k + p, minlength=k * k).astype(np.int64).reshape(k, k)


def per_class_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class metrics from a (K, K) confusion matrix (rows true, columns predicted).

    Returns a dict of arrays of shape (K,):
        ``precision`` = TP / (TP + FP), ``recall`` (sensitivity) = TP / (TP + FN),
        ``specificity`` = TN / (TN + FP), ``f1`` = 2 TP / (2 TP + FP + FN) — all float64, 0.0 where
        the denominator is zero; ``support`` = TP + FN (true count of the class), int64.
    """
    cm = _to_numpy(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (K, K), got shape {cm.shape}")
    cm = cm.astype(np.int64, copy=False)
    # One-vs-rest counts for all classes at once, each (K,):
    tp = np.diagonal(cm)
    support = cm.sum(axis=1)  # row sums: samples whose true class is k  (TP + FN)
    predicted = cm.sum(axis=0)  # column sums: samples predicted as k  (TP + FP)
    fp = predicted - tp
    fn = support - tp
    tn = cm.sum() - tp - fp - fn
    return {
        "precision": _safe_div(tp, predicted),
        "recall": _safe_div(tp, support),
        "specificity": _safe_div(tn, tn + fp),
        # 2TP/(2TP+FP+FN) equals the harmonic mean of precision and recall, and is 0 (not 0/0)
        # when TP = 0, matching scikit-learn's zero_division=0.
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "support": support.astype(np.int64),
    }


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of each column of x (N, K), tied values sharing their average rank. float64 (N, K).

    Same as ``scipy.stats.rankdata(x, method="average", axis=0)``, in numpy only: one argsort per
    column, then tie groups found as runs of equal sorted values.
    """
    n = x.shape[0]
    order = np.argsort(x, axis=0, kind="stable")  # (N, K) row indices that sort each column
    s = np.take_along_axis(x, order, axis=0)  # (N, K) sorted columns
    idx = np.arange(n)[:, None]  # (N, 1) 0-based sorted position
    # A tie group spans sorted positions [start, end]; its members share rank (start + end)/2 + 1.
    new_group = np.ones_like(s, dtype=bool)
    new_group[1:] = s[1:] != s[:-1]  # (N, K) True at the first position of each run
    last_in_group = np.ones_like(s, dtype=bool)
    last_in_group[:-1] = new_group[1:]  # (N, K) True at the last position of each run
    # Carry each run's start forward and each run's end backward along the sorted axis.
    start = np.maximum.accumulate(np.where(new_group, idx, 0), axis=0)
    end = np.minimum.accumulate(np.where(last_in_group, idx, n - 1)[::-1], axis=0)[::-1]
    sorted_ranks = (start + end) / 2.0 + 1.0
    ranks = np.empty_like(sorted_ranks)
    np.put_along_axis(ranks, order, sorted_ranks, axis=0)  # back to the original row order
    return ranks


def roc_auc_ovr(y_true: Any, y_prob: Any) -> np.ndarray:
    """One-vs-rest ROC-AUC of every class, float64 (K,).

    Args:
        y_true: true class indices (N,), values in [0, K).
        y_prob: scores (N, K); column k scores "class k vs the rest" (probabilities or logits —
            AUC only depends on the ordering within each column).

    AUC_k is the Mann-Whitney statistic: the probability that a random positive of class k scores
    higher than a random negative, ties counting one half. With average ranks R over all N scores
    of column k, P positives and Q negatives: AUC_k = (sum of R over positives - P(P+1)/2) / (P Q).
    All columns are ranked at once. NaN for a class with no positives or no negatives in y_true.
    """
    prob = _as_probs(y_prob)
    n, k = prob.shape
    t = _as_labels(y_true, k, "y_true")
    if t.shape[0] != n:
        raise ValueError(f"y_true has {t.shape[0]} samples but y_prob has {n} rows")
    n_pos = np.bincount(t, minlength=k).astype(np.float64)  # (K,)
    n_neg = n - n_pos  # (K,)
    if n == 0:
        return np.full(k, np.nan)
    rank_sum = np.empty(k)  # (K,) sum of the positives' ranks in their column
    step = max(1, AUC_BLOCK_VALUES // n)  # columns ranked at once (memory, see AUC_BLOCK_VALUES)
    for lo in range(0, k, step):
        cols = np.arange(lo, min(lo + step, k))
        ranks = _average_ranks(prob[:, cols].astype(np.float64))  # (N, B)
        rank_sum[cols] = np.where(t[:, None] == cols[None, :], ranks, 0.0).sum(axis=0)
    u = rank_sum - n_pos * (n_pos + 1) / 2.0  # (K,) Mann-Whitney U of the positives
    denom = n_pos * n_neg
    auc = np.full(k, np.nan)
    np.divide(u, denom, out=auc, where=denom > 0)  # undefined (NaN) if a side is empty
    return auc


def compute_metrics(
    y_true: Any, y_prob: Any, class_names: list[str], loss: float | None = None
) -> dict:
    """All metrics of one split, as the JSON-serializable metrics.json entry.

    Args:
        y_true: true class indices (N,), N >= 1.
        y_prob: class probabilities (N, K), K == len(class_names); prediction = argmax per row.
        class_names: names of the K classes, in index order.
        loss: mean loss of the split, if known (NaN is stored as None).

    Returns:
        ``{"accuracy": float, "loss": float | None, "n": int,
        "per_class": {"precision", "recall", "specificity", "f1", "auc": [K floats or None],
        "support": [K ints]},
        "macro": {"precision", "recall", "specificity", "f1", "auc"},
        "weighted": {same five keys, averaged with weights = support},
        "confusion_matrix": [[K ints] * K] (None past rundir.CONFUSION_JSON_MAX_CLASSES classes),
        "class_names": [K str]}``.
        Macro averages are plain means over all K classes (absent classes included, as in
        scikit-learn with labels=range(K)); macro/weighted AUC skip classes whose AUC is undefined
        and are None if every class is undefined. Every NaN becomes None.
    """
    prob = _as_probs(y_prob)
    n, k = prob.shape
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"y_prob has {k} columns but {len(names)} class names were given")
    t = _as_labels(y_true, k, "y_true")
    if t.shape[0] != n:
        raise ValueError(f"y_true has {t.shape[0]} samples but y_prob has {n} rows")
    if n == 0:
        raise ValueError("cannot compute metrics of an empty split (N = 0)")

    y_pred = prob.argmax(axis=1)  # (N,) first maximum on ties
    cm = confusion_matrix(t, y_pred, k)  # (K, K)
    per = per_class_from_confusion(cm)  # dict of (K,)
    auc = roc_auc_ovr(t, prob)  # (K,) with NaN for undefined classes
    support = per["support"].astype(np.float64)

    macro = {m: float(per[m].mean()) for m in _RATIO_METRICS}
    macro["auc"] = _nan_weighted_mean(auc)
    # support.sum() == n >= 1, so the weighted mean is always defined for the ratio metrics.
    weighted = {m: float((per[m] * support).sum() / support.sum()) for m in _RATIO_METRICS}
    weighted["auc"] = _nan_weighted_mean(auc, support)

    per_class = {m: _json_list(per[m]) for m in _RATIO_METRICS}
    per_class["support"] = _json_list(per["support"])
    per_class["auc"] = _json_list(auc)
    return {
        "accuracy": float(np.trace(cm) / n),
        "loss": _json_float(loss),
        "n": int(n),
        "per_class": per_class,
        "macro": {m: _json_float(v) for m, v in macro.items()},
        "weighted": {m: _json_float(v) for m, v in weighted.items()},
        "confusion_matrix": cm.tolist() if k <= rd.CONFUSION_JSON_MAX_CLASSES else None,
        "class_names": names,
    }


def classification_report(metrics: dict, digits: int = 4) -> str:
    """Text table of a ``compute_metrics`` result, like scikit-learn's classification_report.

    Columns: precision, recall, specificity, f1-score, auc, support. One row per class, then
    ``accuracy`` (value under f1-score, total support), ``macro avg`` and ``weighted avg``.
    Undefined values (None) print as ``n/a``. The name column widens to the longest class name.
    """
    names = list(metrics["class_names"])
    per = metrics["per_class"]
    n = int(metrics["n"])
    headers = ["precision", "recall", "specificity", "f1-score", "auc", "support"]
    keys = ["precision", "recall", "specificity", "f1", "auc"]
    row_labels = ["accuracy", "macro avg", "weighted avg"]
    name_w = max(len(s) for s in names + row_labels)
    col_w = max(max(len(h) for h in headers), digits + 2)

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    def line(label: str, cells: list[str]) -> str:
        return f"{label:>{name_w}} " + " ".join(f"{c:>{col_w}}" for c in cells)

    out = [line("", headers), ""]
    for i, name in enumerate(names):
        out.append(line(name, [fmt(per[key][i]) for key in keys] + [str(per["support"][i])]))
    out.append("")
    # Accuracy has no per-column breakdown: show it under f1-score like scikit-learn does.
    out.append(line("accuracy", ["", "", "", fmt(metrics["accuracy"]), "", str(n)]))
    for label, avg in (("macro avg", metrics["macro"]), ("weighted avg", metrics["weighted"])):
        out.append(line(label, [fmt(avg[key]) for key in keys] + [str(n)]))
    if metrics.get("loss") is not None:
        out.append("")
        out.append(f"{'loss':>{name_w}} {fmt(metrics['loss']):>{col_w}}")
    return "\n".join(out) + "\n"


def top_k(y_prob: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest-scoring classes of each row.

    Args:
        y_prob: scores (N, K).
        k: how many classes to keep, 1 <= k <= K.

    Returns:
        ``(indices, probs)``: int64 (N, k) class indices and float64 (N, k) their scores, each row
        sorted by descending score; equal scores keep the lower class index first.
    """
    prob = _as_probs(y_prob)
    if not 1 <= k <= prob.shape[1]:
        raise ValueError(f"k must be between 1 and {prob.shape[1]} (number of classes), got {k}")
    # Stable sort of the negated scores = descending order, ties by ascending index. (N, K) -> (N, k)
    idx = np.argsort(-prob, axis=1, kind="stable")[:, :k].astype(np.int64)
    return idx, np.take_along_axis(prob, idx, axis=1).astype(np.float64)


def summary(metrics: dict) -> dict:
    """The headline numbers of a ``compute_metrics`` result: accuracy, loss, macro F1."""
    return {
        "accuracy": metrics["accuracy"],
        "loss": metrics.get("loss"),
        "macro_f1": metrics["macro"]["f1"],
    }
