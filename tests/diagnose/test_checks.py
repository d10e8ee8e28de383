"""`cnnlab diagnose`: every finding on a run built to show it (small real runs on digits where
cheap, synthetic run directories for the rest), and a healthy quickstart with no warning or error."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

import cnnlab
from cnnlab import rundir as rd
from cnnlab.cli import main
from cnnlab.diagnose import CHECKS, diagnose
from cnnlab.rundir import DIAGNOSTICS
from cnnlab.errors import RunFailure

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "examples" / "quickstart.toml"

MLP = {
    "name": "dg", "seed": 0,
    "data": {"dataset": "digits", "test_fraction": 0.2, "val_fraction": 0.1},
    "model": {"name": "mlp", "hidden_size": 64},
    "train": {"epochs": 3, "batch_size": 64, "lr": 1e-3, "device": "cpu"},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def real_run(tmp_path, **extra) -> Path:
    """A small digits run (an MLP unless overridden); returns its directory, also when it failed."""
    cfg = _merge(MLP, extra)
    try:
        return cnnlab.run(cfg, runs_dir=tmp_path, quiet=True).dir
    except RunFailure:
        return sorted((tmp_path / cfg["name"]).iterdir())[-1]


def ids(findings, severities=("error", "warning", "info")) -> set[str]:
    return {f.id for f in findings if f.severity in severities}


def by_id(findings, fid):
    return next(f for f in findings if f.id == fid)


# ------------------------------------------------------------------------- synthetic runs
def write_run(d: Path, history=(), metrics=None, stats=(), config="", status=None) -> Path:
    """A run directory with just the files diagnose reads."""
    d.mkdir(parents=True)
    (d / rd.CONFIG).write_text(config)
    rd.atomic_write_json(d / rd.STATUS, status or {"status": "completed"})
    rd.write_history(d, list(history))
    if metrics is not None:
        rd.atomic_write_json(d / rd.METRICS, metrics)
    (d / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stats))
    return d


def hist(train_loss, val_loss=None, train_acc=None, val_acc=None, lr=1e-3):
    n = len(train_loss)
    return [{"epoch": i + 1, "train_loss": train_loss[i],
             "train_acc": train_acc[i] if train_acc else 0.5,
             "val_loss": val_loss[i] if val_loss else None,
             "val_acc": val_acc[i] if val_acc else (0.5 if val_loss else None),
             "lr": lr[i] if isinstance(lr, list) else lr, "seconds": 1.0, "images_per_s": 1.0} for i in range(n)]


def split_metrics(recall, auc, support, acc=None, k=None):
    """A metrics.json split entry with a diagonal-ish confusion matrix built from recalls."""
    k = k or len(recall)
    cm = [[0] * k for _ in range(k)]
    for i in range(k):
        hit = round(recall[i] * support[i])
        cm[i][i] = hit
        cm[i][(i + 1) % k] += support[i] - hit
    n = sum(support)
    return {"accuracy": acc if acc is not None else sum(cm[i][i] for i in range(k)) / n, "loss": 0.5, "n": n,
            "per_class": {"recall": recall, "auc": auc, "support": support,
                          "precision": recall, "specificity": recall, "f1": recall},
            "confusion_matrix": cm, "class_names": [str(i) for i in range(k)]}


# -------------------------------------------------------------------------- healthy run
@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    """The quickstart, shortened: a healthy run."""
    return cnnlab.run(QUICK, overrides={"train.epochs": 12}, runs_dir=tmp_path_factory.mktemp("q"), quiet=True)


def test_healthy_quickstart_has_no_warning_or_error(healthy):
    report = json.loads((healthy.dir / DIAGNOSTICS).read_text())  # written by cnnlab run itself
    assert report["counts"]["error"] == 0 and report["counts"]["warning"] == 0, report["findings"]
    assert set(report["checks"]) == {e.name for e in CHECKS}
    assert not ids(diagnose(healthy.dir), ("error", "warning"))


def test_stats_file_has_one_record_per_epoch_with_every_statistic(healthy):
    recs = [json.loads(line) for line in (healthy.dir / "stats.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [h["epoch"] for h in healthy.history]
    r = recs[-1]
    assert [layer["name"] for layer in r["layers"]] == ["features.0.conv", "features.1.conv", "head.fc0", "head.out"]
    for layer in r["layers"]:
        assert layer["grad_norm"] > 0 and layer["weight_norm"] > 0 and 0 < layer["update_ratio"] < 1
    acts = {a["name"]: a for a in r["activations"]}
    assert set(acts) == {"features.0.act", "features.1.act", "head.act0"}
    assert all(0 <= a["dead"] <= 1 and a["saturated"] is None and a["std"] > 0 for a in acts.values())
    assert r["probe_size"] == 130  # a tenth of the 1,293 training images (below probe_size = 256)


# --------------------------------------------------------------------------- real runs
def test_collapse_softmax_plateau_lr_schedule(tmp_path, monkeypatch):
    # Adam lr 0.5 on a softmax-output MLP: seed 000's collapse in seconds (loss frozen near ln 10).
    d = real_run(tmp_path, model={"softmax_output": True}, train={"lr": 0.5, "epochs": 7})
    f = diagnose(d)
    assert {"collapse", "softmax_before_loss", "plateau", "lr_schedule"} <= ids(f)
    c = by_id(f, "collapse")
    assert c.severity == "error" and c.data["top_share"] >= 0.5
    assert abs(c.data["train_loss"] - math.log(10)) < 0.1 * math.log(10)
    assert "epoch 7" in c.evidence and c.remedies and c.why
    saved = json.loads((d / DIAGNOSTICS).read_text())["findings"]
    assert {"id", "severity", "evidence", "remedies", "title", "why"} <= set(saved[0])
    assert saved[0]["id"] == "collapse"  # errors first
    # With many classes metrics.json keeps no confusion matrix: the counts come from the predictions.
    monkeypatch.setattr("cnnlab.metrics.CONFUSION_JSON_MAX_CLASSES", 5)  # digits' 10 classes count as many
    metrics = json.loads((d / rd.METRICS).read_text())
    for m in metrics.values():
        m["confusion_matrix"] = None
    (d / rd.METRICS).write_text(json.dumps(metrics))
    again = by_id(diagnose(d), "collapse")
    assert again.severity == "error" and again.data["top_share"] == c.data["top_share"]


def test_divergence_nan(tmp_path):
    d = real_run(tmp_path, train={"optimizer": "sgd", "lr": 1e8, "epochs": 3})
    f = diagnose(d)
    assert by_id(f, "divergence").severity == "error" and by_id(f, "divergence").data["failed"]
    assert by_id(f, "exploding_gradients").severity == "error"  # non-finite gradient norms


def test_overfitting_with_the_epoch_it_began(tmp_path):
    d = real_run(tmp_path, data={"per_class": 30, "val_fraction": 0.3}, model={"hidden_size": 256},
                 train={"lr": 1e-2, "epochs": 15, "batch_size": 32, "early_stopping": {"restore_best": False}})
    o = by_id(diagnose(d), "overfitting")
    assert o.severity == "warning" and f"after epoch {o.data['began_after_epoch']}" in o.title
    assert o.data["final_val_loss"] >= 1.1 * o.data["best_val_loss"]


def test_underfitting_still_improving(tmp_path):
    d = real_run(tmp_path, train={"optimizer": "sgd", "lr": 3e-3, "momentum": 0.0, "epochs": 3})
    u = by_id(diagnose(d), "underfitting")
    assert u.severity == "warning" and u.data["train_accuracy"] < u.data["limit"]


def test_vanishing_gradients_in_a_deep_sigmoid_mlp(tmp_path):
    d = real_run(tmp_path, model={"hidden_layers": 8, "hidden_size": 32, "activation": "sigmoid"},
                 train={"epochs": 2})
    v = by_id(diagnose(d), "vanishing_gradients")
    assert v.data["median_ratio"] < 1e-3 and v.data["first_layer"] == "features.fc0"


def test_dead_relu_after_a_too_high_lr(tmp_path):
    d = real_run(tmp_path, train={"lr": 0.1})
    dr = by_id(diagnose(d), "dead_relu")
    assert dr.data["layers"]["features.act0"] >= 0.5 and "features.act0" in dr.evidence


def test_saturated_tanh(tmp_path):
    d = real_run(tmp_path, model={"activation": "tanh"}, train={"lr": 0.3})
    s = by_id(diagnose(d), "saturation")
    assert s.data["layers"]["features.act0"] >= 0.3


def test_weak_class_from_a_tiny_class_weight(tmp_path):
    d = real_run(tmp_path, train={"class_weights": [0.001] + [1.0] * 9})
    w = by_id(diagnose(d), "weak_class")
    assert [c["name"] for c in w.data["classes"]] == ["0"] and "class '0'" in w.evidence


# ---------------------------------------------------------------------- synthetic runs
def test_divergence_by_a_sharp_rise(tmp_path):
    d = write_run(tmp_path / "r", hist([2.0, 1.0, 0.8, 2.5]), {"test": split_metrics([0.5] * 10, [0.8] * 10, [20] * 10)})
    dv = by_id(diagnose(d), "divergence")
    assert dv.data["epoch"] == 4 and dv.data["best_epoch"] == 3


def test_exploding_gradients_growth(tmp_path):
    layers = lambda g: [{"name": "a", "grad_norm": g, "update_ratio": 0.01}, {"name": "b", "grad_norm": g, "update_ratio": 0.01}]
    stats = [{"epoch": e, "grad_norm": g, "layers": layers(g), "activations": []} for e, g in ((1, 1.0), (2, 30.0), (3, 500.0))]
    d = write_run(tmp_path / "r", hist([2.0, 1.9, 2.6]), stats=stats)
    ex = by_id(diagnose(d), "exploding_gradients")
    assert ex.severity == "warning" and ex.data["growth"] == pytest.approx(500) and "epoch 3" in ex.evidence


def test_gradients_growing_from_a_tiny_start_while_loss_falls_are_not_explosion(tmp_path):
    # seed000_net1 on CIFAR-10 (healthy, 120 epochs): 0.14 at epoch 1, up to 14 later, loss falling.
    layers = lambda g: [{"name": "a", "grad_norm": g, "update_ratio": 0.01}, {"name": "b", "grad_norm": g, "update_ratio": 0.01}]
    stats = [{"epoch": e, "grad_norm": g, "layers": layers(g), "activations": []}
             for e, g in ((1, 0.143), (2, 0.86), (3, 14.3))]
    d = write_run(tmp_path / "r", hist([2.2, 1.9, 1.7]), stats=stats)
    assert "exploding_gradients" not in [f.id for f in diagnose(d)]


def test_class_imbalance_with_and_without_measures(tmp_path):
    support_train = [300, 30, 300]
    metrics = {"train": split_metrics([0.9, 0.9, 0.9], [0.95] * 3, support_train),
               "test": split_metrics([0.9, 0.85, 0.9], [0.95] * 3, [100, 10, 100])}
    plain = by_id(diagnose(write_run(tmp_path / "a", hist([1.0, 0.5]), metrics)), "class_imbalance")
    assert plain.severity == "warning" and plain.data["ratio"] == pytest.approx(10) and plain.data["rarest"] == "1"
    weighted = by_id(diagnose(write_run(tmp_path / "b", hist([1.0, 0.5]), metrics,
                                        config='[train]\nclass_weights = "balanced"\n')), "class_imbalance")
    assert weighted.severity == "info" and "class weights" in weighted.evidence
    # Class weights that do not fix it (seed 004): the rare class is still weak -> warning.
    metrics["test"] = split_metrics([0.9, 0.2, 0.9], [0.95, 0.55, 0.95], [100, 10, 100])
    unfixed = by_id(diagnose(write_run(tmp_path / "c", hist([1.0, 0.5]), metrics,
                                       config='[data]\nsampler = "balanced"\n')), "class_imbalance")
    assert unfixed.severity == "warning" and unfixed.data["unfixed"]


def test_early_stop_noise(tmp_path):
    # Still improving 0.015 per epoch on trend, jittering +-0.05 around it: 3 epochs of progress
    # (0.045) are well inside the noise.
    val = [1.0 - 0.015 * e + 0.05 * (-1) ** e for e in range(1, 21)]
    cfg = '[train.early_stopping]\nmonitor = "val_loss"\nmode = "min"\npatience = 3\n'
    status = {"status": "completed", "stop_reason": "early stopping: val_loss has not improved for 3 epochs"}
    d = write_run(tmp_path / "r", hist([1.0 - 0.02 * e for e in range(20)], val), config=cfg, status=status)
    es = by_id(diagnose(d), "early_stop_noise")
    assert es.data["suggested_patience"] > 3 and es.data["noise_sd"] > es.data["trend_per_epoch"] * 3
    # The same history without an early stop (or with a patience that covers the noise): no finding.
    quiet = write_run(tmp_path / "q", hist([1.0 - 0.02 * e for e in range(20)], val), config=cfg)
    assert "early_stop_noise" not in ids(diagnose(quiet))


# --------------------------------------------------------------------------------- CLI
def test_cli_diagnose_json_and_bad_dir(tmp_path, capsys):
    d = write_run(tmp_path / "r", hist([2.0, 1.0, 0.8, 2.5]), config='[model]\nsoftmax_output = true\n')
    assert main(["diagnose", str(d), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {f["id"] for f in out["findings"]} == {"divergence", "softmax_before_loss"}
    assert main(["diagnose", str(d)]) == 0
    text = capsys.readouterr().out
    assert "divergence" in text and "try:" in text and "why:" in text
    assert main(["diagnose", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a cnnlab run directory" in err and "Traceback" not in err
