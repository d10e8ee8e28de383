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
    assert r["probe_size"] == 256  # probe_size of the 1,293 training images


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
    monkeypatch.setattr("cnnlab.rundir.CONFUSION_JSON_MAX_CLASSES", 5)  # digits' 10 classes count as many
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


# ------------------------------------------------------- the whole history, not the restored checkpoint
def _mlp_that_memorises(n: int = 20):
    """Issue 17's wide MLP on 1,000 CIFAR-10 images: train accuracy to 100 %, val 25-30 %, val loss
    2.1 -> 6.4, the run restoring its epoch-1 checkpoint (eval-mode train accuracy 37.3 %)."""
    ta = [min(1.0, 0.30 + 0.07 * e) for e in range(n)]
    va = [0.25 + 0.05 * (e % 2) for e in range(n)]
    vl = [2.1 + (6.4 - 2.1) * e / (n - 1) for e in range(n)]
    tl = [max(0.01, 2.0 - 0.1 * e) for e in range(n)]
    metrics = {"train": split_metrics([0.373] * 10, [0.7] * 10, [80] * 10, acc=0.373),
               "val": split_metrics([0.3] * 10, [0.6] * 10, [10] * 10, acc=0.3),
               "test": split_metrics([0.28] * 10, [0.6] * 10, [20] * 10, acc=0.28)}
    # a probe of 25 images with half of head.act0 silent on them
    stats = [{"epoch": n, "grad_norm": 1.0, "probe_size": 25, "layers": [],
              "activations": [{"name": "head.act0", "type": "ReLU", "dead": 0.54, "mean": 0.1, "std": 0.2}]}]
    return hist(tl, vl, ta, va), metrics, stats


def test_overfitting_is_a_warning_even_when_the_best_checkpoint_was_restored(tmp_path):
    history, metrics, stats = _mlp_that_memorises()
    cfg = f"[train]\nepochs = {len(history)}\n[train.early_stopping]\nrestore_best = true\nmonitor = \"val_loss\"\n"
    f = diagnose(write_run(tmp_path / "r", history, metrics, stats, config=cfg))
    o = by_id(f, "overfitting")
    assert o.severity == "warning" and o.data["restored_epoch"] == 1 and "epoch-1 checkpoint" in o.evidence
    assert o.data["largest_gap"] >= 0.7 and "not more capacity" in o.evidence
    # the model fit its training data (100 % at some epoch): not underfitting, whatever was restored
    assert "underfitting" not in ids(f)
    # half of a layer silent on 25 images is not shown to be dead: info, with the caveat
    dr = by_id(f, "dead_relu")
    assert dr.severity == "info" and "only 25 probe images" in dr.evidence
    assert ids(f, ("warning", "error")) == {"overfitting"}


def test_a_large_train_val_gap_alone_is_overfitting(tmp_path):
    # val loss flat (no 10 % rise), but 99 % train against 60 % val from epoch 4 on
    ta = [0.6, 0.8, 0.95, 0.99, 0.99, 0.99]
    va = [0.5, 0.58, 0.6, 0.6, 0.61, 0.6]
    d = write_run(tmp_path / "r", hist([1.5, 0.8, 0.3, 0.1, 0.05, 0.04], [1.2, 1.1, 1.1, 1.12, 1.1, 1.1], ta, va),
                  config="[train.early_stopping]\nrestore_best = false\n")
    o = by_id(diagnose(d), "overfitting")
    assert o.severity == "warning" and o.data["began_after_epoch"] == 3 and o.data["largest_gap"] == pytest.approx(0.39)
    assert o.data["restored_epoch"] is None and "restored" not in o.evidence


def test_a_run_cut_short_while_still_learning_says_so(tmp_path):
    # 8 of 120 epochs, +1.0 % per epoch: "still learning", not "flat"
    ta = [0.30 + 0.01 * e for e in range(8)]
    status = {"status": "completed", "stop_reason": "early_stopping",
              "stop_message": "early stopping: val_loss has not improved for 3 epochs"}
    d = write_run(tmp_path / "r", hist([2.0 - 0.02 * e for e in range(8)], [2.0] * 8, ta, [0.3] * 8),
                  {"test": split_metrics([0.3] * 10, [0.6] * 10, [20] * 10)},
                  config="[train]\nepochs = 120\n", status=status)
    u = by_id(diagnose(d), "underfitting")
    assert u.data["improving"] and u.data["slope_per_epoch"] == pytest.approx(0.01)
    assert "stopped at epoch 8 of 120" in u.title and "early stopping" in u.evidence
    assert "+1.0% per epoch" in u.evidence and "flat" not in u.evidence
    assert any("resume" in r for r in u.remedies)


def test_a_flat_run_that_never_fit_is_underfitting_with_capacity_remedies(tmp_path):
    ta = [0.30, 0.31, 0.30, 0.31, 0.30, 0.31]
    d = write_run(tmp_path / "r", hist([2.0] * 6, [2.0] * 6, ta, [0.3] * 6),
                  {"test": split_metrics([0.3] * 10, [0.6] * 10, [20] * 10)}, config="[train]\nepochs = 6\n")
    u = by_id(diagnose(d), "underfitting")
    assert not u.data["improving"] and not u.data["cut_short"] and "flat" in u.evidence
    assert any("bigger model" in r for r in u.remedies)


def test_still_improving_at_the_end_says_train_longer(tmp_path):
    va = [0.50, 0.60, 0.68, 0.74, 0.79, 0.83, 0.86]  # +3 points per epoch at the end
    d = write_run(tmp_path / "r", hist([1.0 - 0.1 * e for e in range(7)], [1.0 - 0.1 * e for e in range(7)],
                                       [v + 0.05 for v in va], va), config="[train]\nepochs = 7\n")
    si = by_id(diagnose(d), "still_improving")
    assert si.severity == "warning" and "train longer" in si.title and si.data["best_epoch"] == 7
    gentle = [0.90 + 0.006 * e for e in range(7)]  # +0.6 point per epoch: info
    d2 = write_run(tmp_path / "g", hist([0.3] * 7, [0.3] * 7, [0.95] * 7, gentle), config="[train]\nepochs = 7\n")
    assert by_id(diagnose(d2), "still_improving").severity == "info"
    done = [0.90, 0.93, 0.94, 0.94, 0.941, 0.94, 0.94]  # converged: nothing
    d3 = write_run(tmp_path / "c", hist([0.3] * 7, [0.3] * 7, [0.95] * 7, done), config="[train]\nepochs = 7\n")
    assert "still_improving" not in ids(diagnose(d3))


def test_a_transfer_run_far_below_its_source_is_not_converged(tmp_path):
    src = write_run(tmp_path / "src", hist([1.0, 0.8]),
                    {"train": split_metrics([0.6] * 10, [0.9] * 10, [50] * 10, acc=0.6),
                     "test": split_metrics([0.54] * 10, [0.9] * 10, [20] * 10, acc=0.54)})
    ta = [0.15, 0.18, 0.20, 0.22, 0.24]  # frozen backbone, lr 1e-4: crawling
    cfg = f'[train]\nlr = 1e-4\nepochs = 5\n[transfer]\ninit_from = "{src}"\nfreeze = "features"\n'
    d = write_run(tmp_path / "t", hist([2.2, 2.15, 2.1, 2.05, 2.0], [2.2] * 5, ta, [0.2] * 5),
                  {"test": split_metrics([0.26] * 10, [0.6] * 10, [40] * 10, acc=0.26)}, config=cfg)
    t = by_id(diagnose(d), "transfer_not_converged")
    assert t.severity == "warning" and "raise transfer.head_lr / train.lr or train longer" in t.title
    assert t.data["source_accuracy"] == pytest.approx(0.6) and "train.lr = 0.0001" in t.evidence
    # the same history without a transfer source: no such finding
    plain = write_run(tmp_path / "p", hist([2.2, 2.15, 2.1, 2.05, 2.0], [2.2] * 5, ta, [0.2] * 5),
                      {"test": split_metrics([0.26] * 10, [0.6] * 10, [40] * 10, acc=0.26)})
    assert "transfer_not_converged" not in ids(diagnose(plain))


@pytest.mark.parametrize("family", ["mlp", "resnet18"])
def test_healthy_runs_of_each_model_family_get_no_warning(tmp_path, family):
    """The quickstart (cnn) is checked above; an MLP and a ResNet-18 trained sensibly on digits."""
    model = {"mlp": {"name": "mlp", "hidden_size": 128}, "resnet18": {"name": "resnet18"}}[family]
    epochs = {"mlp": 15, "resnet18": 4}[family]
    cfg = _merge({k: v for k, v in MLP.items() if k != "model"}, {"name": family, "model": model, "train": {
        "epochs": epochs, "lr": 2e-3, "scheduler": "cosine"}})
    d = cnnlab.run(cfg, runs_dir=tmp_path, quiet=True).dir
    f = diagnose(d)
    assert not ids(f, ("error", "warning")), [(x.id, x.evidence) for x in f]


def test_every_threshold_is_in_the_docs_table_with_its_value():
    """docs/diagnostics.md's threshold table and the named constants of the checks agree."""
    from cnnlab.diagnose import checks
    from cnnlab.train import stats

    text = (REPO / "docs" / "diagnostics.md").read_text().split("## Thresholds", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            table[cells[0].split("`")[1]] = (float(cells[1]), cells[2])
    code = {n: v for n, v in vars(checks).items()
            if n.isupper() and isinstance(v, (int, float)) and not isinstance(v, bool)}
    code["SATURATION_MARGIN"] = stats.SATURATION_MARGIN
    assert set(code) == set(table), (set(code) ^ set(table))
    for name, value in code.items():
        assert table[name][0] == pytest.approx(value), name
        assert table[name][1], f"{name} has no unit"


@pytest.mark.parametrize("fits", [True, False])
def test_dead_relu_severity_follows_whether_the_run_fit(tmp_path, fits):
    stats = [{"epoch": 6, "grad_norm": 1.0, "probe_size": 256, "layers": [],
              "activations": [{"name": "head.act0", "type": "ReLU", "dead": 0.8, "mean": 0.1, "std": 0.2}]}]
    ta = [0.9, 0.95, 0.97, 0.98, 0.99, 0.99] if fits else [0.20, 0.21, 0.20, 0.21, 0.20, 0.21]
    d = write_run(tmp_path / "r", hist([1.0 - 0.1 * e for e in range(6)] if fits else [2.2] * 6, [1.0] * 6, ta,
                                       [0.95] * 6 if fits else [0.2] * 6),
                  {"test": split_metrics([0.9] * 10, [0.9] * 10, [20] * 10)}, stats, config="[train]\nepochs = 6\n")
    dr = by_id(diagnose(d), "dead_relu")
    assert dr.severity == ("info" if fits else "warning") and dr.data["fit_anyway"] == fits
    assert ("width to spare" in dr.evidence) == fits


def test_two_epochs_are_too_few_to_call_a_model_flat(tmp_path):
    d = write_run(tmp_path / "r", hist([2.3, 2.3], [2.3, 2.3], [0.11, 0.08], [0.1, 0.1]),
                  {"test": split_metrics([0.1] * 10, [0.6] * 10, [20] * 10)}, config="[train]\nepochs = 2\n")
    u = by_id(diagnose(d), "underfitting")
    assert u.data["too_few_epochs"] and "too few to tell" in u.evidence and "flat" not in u.evidence
    assert any("train longer" in r for r in u.remedies)
