"""metrics.py against scikit-learn on random data and hand-built edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from cnnlab import metrics as metrics_module
from cnnlab import rundir
from cnnlab.metrics import (
    classification_report,
    compute_metrics,
    confusion_matrix,
    per_class_from_confusion,
    roc_auc_ovr,
    summary,
    top_k,
)

ATOL = 1e-6


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _random_case(seed: int, n: int, k: int, ties: bool = False):
    """Labels plus probabilities correlated with them; ``ties`` rounds scores to force ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    prob = _softmax(logits)
    if ties:
        prob = np.round(prob, 1)
        prob[prob.sum(axis=1) == 0, 0] = 1.0
        prob = prob / prob.sum(axis=1, keepdims=True)
    return y, prob


def _specificity_sklearn(y, pred, k):
    mcm = skm.multilabel_confusion_matrix(y, pred, labels=list(range(k)))  # (K, 2, 2)
    tn, fp = mcm[:, 0, 0].astype(float), mcm[:, 0, 1].astype(float)
    den = tn + fp
    return np.divide(tn, den, out=np.zeros_like(tn), where=den > 0)


def _auc_sklearn(y, prob):
    k = prob.shape[1]
    out = np.full(k, np.nan)
    for c in range(k):
        pos = y == c
        if 0 < pos.sum() < len(y):
            out[c] = skm.roc_auc_score(pos, prob[:, c])
    return out


def _none_to_nan(xs):
    return np.array([np.nan if x is None else x for x in xs], dtype=float)


def _check_against_sklearn(y, prob, k):
    names = [f"class_{i}" for i in range(k)]
    m = compute_metrics(y, prob, names, loss=0.5)
    pred = prob.argmax(axis=1)
    labels = list(range(k))

    np.testing.assert_array_equal(
        np.array(m["confusion_matrix"]), skm.confusion_matrix(y, pred, labels=labels)
    )
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=ATOL)
    assert m["n"] == len(y)
    assert m["loss"] == 0.5

    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    pc = m["per_class"]
    np.testing.assert_allclose(pc["precision"], p, atol=ATOL)
    np.testing.assert_allclose(pc["recall"], r, atol=ATOL)
    np.testing.assert_allclose(pc["f1"], f, atol=ATOL)
    assert pc["support"] == [int(v) for v in s]
    np.testing.assert_allclose(pc["specificity"], _specificity_sklearn(y, pred, k), atol=ATOL)
    sk_auc = _auc_sklearn(y, prob)
    np.testing.assert_allclose(_none_to_nan(pc["auc"]), sk_auc, atol=ATOL)  # NaN == NaN here

    spec = _specificity_sklearn(y, pred, k)
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(
            y, pred, labels=labels, average=avg, zero_division=0
        )
        assert m[avg]["precision"] == pytest.approx(ap, abs=ATOL)
        assert m[avg]["recall"] == pytest.approx(ar, abs=ATOL)
        assert m[avg]["f1"] == pytest.approx(af, abs=ATOL)
    assert m["macro"]["specificity"] == pytest.approx(spec.mean(), abs=ATOL)
    assert m["weighted"]["specificity"] == pytest.approx(np.average(spec, weights=s), abs=ATOL)

    ok = ~np.isnan(sk_auc)
    if ok.any():
        assert m["macro"]["auc"] == pytest.approx(sk_auc[ok].mean(), abs=ATOL)
        assert m["weighted"]["auc"] == pytest.approx(
            np.average(sk_auc[ok], weights=s[ok]), abs=ATOL
        )
    else:
        assert m["macro"]["auc"] is None and m["weighted"]["auc"] is None
    if k > 2 and len(np.unique(y)) == k:
        assert m["macro"]["auc"] == pytest.approx(
            skm.roc_auc_score(y, prob, multi_class="ovr", average="macro"), abs=ATOL
        )
        assert m["weighted"]["auc"] == pytest.approx(
            skm.roc_auc_score(y, prob, multi_class="ovr", average="weighted"), abs=ATOL
        )

    json.dumps(m, allow_nan=False)  # raises on NaN / numpy types
    return m


@pytest.mark.parametrize(
    ("seed", "n", "k"),
    [(0, 50, 2), (1, 200, 3), (2, 500, 5), (3, 1000, 10), (4, 37, 7), (5, 2000, 20)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_random_against_sklearn(seed, n, k, ties):
    y, prob = _random_case(seed, n, k, ties)
    _check_against_sklearn(y, prob, k)


def test_class_never_predicted_and_class_absent():
    # K=4: class 3 never occurs in y_true; class 2 occurs but is never predicted.
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    pred = np.array([0, 1, 1, 0, 0, 1, 3, 1])
    cm = confusion_matrix(y, pred, 4)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(4)))
    assert cm.dtype == np.int64 and cm.shape == (4, 4)
    prob = np.full((len(y), 4), 0.1)
    prob[np.arange(len(y)), pred] = 0.7
    m = _check_against_sklearn(y, prob, 4)
    assert m["per_class"]["precision"][2] == 0.0  # never predicted: 0/0 -> 0
    assert m["per_class"]["recall"][3] == 0.0  # absent: 0/0 -> 0
    assert m["per_class"]["support"] == [3, 3, 2, 0]
    assert m["per_class"]["auc"][3] is None  # no positives


def test_perfect_prediction():
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    prob = np.eye(3)[y] * 0.9 + 0.1 / 3
    m = _check_against_sklearn(y, prob, 3)
    assert m["accuracy"] == 1.0
    for key in ("precision", "recall", "specificity", "f1", "auc"):
        assert m["per_class"][key] == [1.0, 1.0, 1.0]
        assert m["macro"][key] == 1.0 and m["weighted"][key] == 1.0


def test_collapsed_model_predicts_one_class():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, size=100)
    prob = np.tile([0.1, 0.6, 0.2, 0.1], (100, 1))  # identical rows: every score tied
    m = _check_against_sklearn(y, prob, 4)
    assert m["per_class"]["recall"][1] == 1.0
    assert m["per_class"]["specificity"][1] == 0.0
    assert m["per_class"]["precision"][0] == 0.0
    assert m["per_class"]["auc"] == [0.5, 0.5, 0.5, 0.5]


def test_binary():
    y, prob = _random_case(11, 300, 2)
    m = _check_against_sklearn(y, prob, 2)
    # Binary: the two one-vs-rest AUCs equal the usual AUC of the positive-class score.
    auc = skm.roc_auc_score(y, prob[:, 1])
    assert m["per_class"]["auc"] == pytest.approx([auc, auc], abs=ATOL)


def test_single_class_present_all_auc_undefined():
    y = np.zeros(5, dtype=int)
    prob = _softmax(np.random.default_rng(0).normal(size=(5, 3)))
    m = _check_against_sklearn(y, prob, 3)
    assert m["per_class"]["auc"] == [None, None, None]
    assert m["macro"]["auc"] is None and m["weighted"]["auc"] is None


def test_per_class_from_confusion_dtypes_and_zero_division():
    cm = np.zeros((3, 3), dtype=np.int64)
    out = per_class_from_confusion(cm)
    for key in ("precision", "recall", "specificity", "f1"):
        assert out[key].dtype == np.float64 and out[key].shape == (3,)
        np.testing.assert_array_equal(out[key], 0.0)
    assert out["support"].dtype == np.int64


def test_roc_auc_matches_scipy_ranks_with_heavy_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=400)
    prob = rng.integers(0, 4, size=(400, 3)).astype(float)  # few distinct values: many ties
    np.testing.assert_allclose(roc_auc_ovr(y, prob), _auc_sklearn(y, prob), atol=ATOL)


def test_roc_auc_ranked_in_column_blocks_is_the_same(monkeypatch):
    # Many classes are ranked a block of columns at a time (memory); blocks of 2 columns of 400 rows here.
    rng = np.random.default_rng(4)
    y = rng.integers(0, 7, size=400)
    prob = rng.integers(0, 5, size=(400, 7)).astype(np.float32)
    whole = roc_auc_ovr(y, prob)
    monkeypatch.setattr(metrics_module, "AUC_BLOCK_VALUES", 800)
    np.testing.assert_array_equal(roc_auc_ovr(y, prob), whole)
    np.testing.assert_allclose(whole, _auc_sklearn(y, prob), atol=ATOL)
    assert metrics_module.metrics_memory(20_000, 10_000) > 1_500_000_000  # (N, K) scores, (K, K) counts


def test_many_classes_keep_their_confusion_matrix_out_of_metrics_json(monkeypatch):
    monkeypatch.setattr(rundir, "CONFUSION_JSON_MAX_CLASSES", 3)  # what compute_metrics writes and readers accept
    y, prob = _random_case(5, 60, 4)
    m = compute_metrics(y, prob, list("abcd"))
    assert m["confusion_matrix"] is None and len(m["per_class"]["f1"]) == 4
    assert rundir.metrics_problem({"test": m}) is None  # a valid metrics.json
    small = compute_metrics(y[y < 3], prob[y < 3][:, :3], list("abc"))
    assert len(small["confusion_matrix"]) == 3


def test_torch_inputs():
    y, prob = _random_case(8, 120, 4)
    m_np = compute_metrics(y, prob, list("abcd"))
    m_t = compute_metrics(torch.from_numpy(y), torch.from_numpy(prob).float(), list("abcd"))
    assert m_t["confusion_matrix"] == m_np["confusion_matrix"]
    assert m_t["macro"]["f1"] == pytest.approx(m_np["macro"]["f1"], abs=ATOL)
    assert m_t["macro"]["auc"] == pytest.approx(m_np["macro"]["auc"], abs=1e-4)
    cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([1, 1, 0]), 2)
    np.testing.assert_array_equal(cm, [[0, 1], [1, 1]])


def test_json_nan_loss_and_types():
    y, prob = _random_case(9, 60, 3)
    m = compute_metrics(y, prob, ["a", "b", "c"], loss=float("nan"))
    assert m["loss"] is None
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    assert compute_metrics(y, prob, ["a", "b", "c"])["loss"] is None
    assert set(m) == {
        "accuracy", "loss", "n", "per_class", "macro", "weighted", "confusion_matrix", "class_names"
    }
    assert set(m["per_class"]) == {"precision", "recall", "specificity", "f1", "support", "auc"}
    assert set(m["macro"]) == set(m["weighted"]) == {"precision", "recall", "specificity", "f1", "auc"}


def test_classification_report():
    y, prob = _random_case(10, 150, 3)
    names = ["cat", "a_rather_long_class_name", "x"]
    m = compute_metrics(y, prob, names, loss=1.25)
    rep = classification_report(m, digits=4)
    for name in names:
        assert name in rep
    assert f"{m['accuracy']:.4f}" in rep
    for header in ("precision", "recall", "specificity", "f1-score", "auc", "support"):
        assert header in rep
    lines = [ln for ln in rep.splitlines() if ln.strip()]
    assert len({len(ln) for ln in lines if "loss" not in ln}) == 1  # aligned columns
    assert "macro avg" in rep and "weighted avg" in rep
    assert f"{m['macro']['f1']:.2f}" in classification_report(m, digits=2)


def test_classification_report_undefined_auc():
    y = np.zeros(4, dtype=int)
    m = compute_metrics(y, np.tile([0.9, 0.1], (4, 1)), ["pos", "neg"])
    rep = classification_report(m)
    assert "n/a" in rep


def test_top_k():
    prob = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4]])
    idx, p = top_k(prob, 2)
    np.testing.assert_array_equal(idx, [[1, 2], [2, 0]])
    np.testing.assert_allclose(p, [[0.5, 0.4], [0.4, 0.3]])
    idx, p = top_k(prob, 3)
    assert idx.shape == p.shape == (2, 3)
    assert np.all(np.diff(p, axis=1) <= 0)
    with pytest.raises(ValueError):
        top_k(prob, 0)
    with pytest.raises(ValueError):
        top_k(prob, 4)


def test_summary():
    y, prob = _random_case(12, 80, 3)
    m = compute_metrics(y, prob, ["a", "b", "c"], loss=0.3)
    assert summary(m) == {"accuracy": m["accuracy"], "loss": 0.3, "macro_f1": m["macro"]["f1"]}


def test_input_validation():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="length"):
        confusion_matrix([0, 1], [0], 3)
    with pytest.raises(ValueError, match="class names"):
        compute_metrics([0, 1], np.eye(2), ["a", "b", "c"])
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], np.zeros((0, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0, 1], np.array([[np.nan, 1.0], [0.5, 0.5]]), ["a", "b"])
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.array([0.5, 1.0]), [0, 1], 2)
    np.testing.assert_array_equal(confusion_matrix([], [], 2), np.zeros((2, 2)))
