"""`cnnlab report`: the self-contained report.html of real tiny digits runs (a CNN, and an image
folder whose class names are HTML), an unfinished run, the end-of-run hook, the sweep report and
the runs index. Runs are built once per module and shared."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

import cnnlab
from cnnlab import rundir as rd
from cnnlab.errors import UserError
from cnnlab.lifecycle import write_status
from cnnlab.cli import main
from cnnlab.sweep import sweep
from cnnlab.data import load_data
from cnnlab.experiment import load_config
from cnnlab.report import report_after_run, write_report, write_runs_index, write_sweep_report
from cnnlab.report.compare import write_compare
from cnnlab.report import run as report_run
from cnnlab.rundir import REPORT
from cnnlab.report.charts import plotly_script

from .pagetext import outside_scripts

CNN = {
    "name": "rep_cnn", "seed": 0, "report": False,
    "data": {"dataset": "digits", "test_fraction": 0.2, "val_fraction": 0.1},
    "model": {"name": "cnn", "channels": [8, 16], "hidden": [32]},
    "train": {"epochs": 2, "batch_size": 64, "lr": 3e-3, "device": "cpu"},
}
# Folder names are class names: these are legal on Linux file systems ('/' is not).
EVIL = ["<img src=x onerror=alert(1)>", "<script>alert(1)<\\script>", 'a&b "quoted"']


def build_cnn(root: Path) -> Path:
    return cnnlab.run(copy.deepcopy(CNN), runs_dir=root, quiet=True).dir


def build_evil(root: Path) -> Path:
    """A digits-backed image folder whose three class folders are named by EVIL; a 1-epoch MLP."""
    from sklearn.datasets import load_digits

    d = load_digits()
    folder = root / "evil_images"
    for c, name in enumerate(EVIL):
        (folder / name).mkdir(parents=True)
        for i, img in enumerate(d.images[d.target == c][:40]):
            Image.fromarray((img * 255 / 16).astype(np.uint8)).save(folder / name / f"{i:03d}.png")
    cfg = {"name": "<em>evil<em> & run", "seed": 0, "report": {"enabled": False, "explain_images": 0},
           "data": {"dataset": "imagefolder", "path": str(folder), "cache": False, "val_fraction": 0.1},
           "model": {"name": "mlp", "hidden_size": 16}, "train": {"epochs": 1, "device": "cpu"}}
    return cnnlab.run(cfg, runs_dir=root / "runs", quiet=True).dir


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory) -> Path:
    run_dir = build_cnn(tmp_path_factory.mktemp("report_runs"))
    write_report(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory) -> Path:
    run_dir = build_evil(tmp_path_factory.mktemp("evil"))
    write_report(run_dir)
    return run_dir


def page(run_dir: Path) -> str:
    return (run_dir / REPORT).read_text(encoding="utf-8")


def inline_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def section(text: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert m, f"no section {sid}"
    return m.group(1)


# ------------------------------------------------------------------------------- the run report
def test_report_has_every_section_and_its_figures_saved_and_inlined(cnn_run):
    text = page(cnn_run)
    for sid in ("summary", "curves", "metrics", "examples", "model", "diagnostics", "config"):
        assert f'<section id="{sid}">' in text and f'href="#{sid}"' in text
    figs = {p.stem: p.read_bytes() for p in (cnn_run / "figures").glob("*.png")}
    assert {"curves", "confusion_test", "roc_test", "examples_right"} <= set(figs)
    for data in figs.values():  # every saved figure decodes
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.width > 100 and im.height > 50
    inlined = inline_pngs(text)
    # Each figure of the page is inlined byte-for-byte as its figures/<key>.png.
    assert len(inlined) == len(figs) and sorted(inlined) == sorted(figs.values())
    # Inside the model: the explain figures (feature maps, saliency, ...) and gradient flow from stats.jsonl.
    assert len(inline_pngs(section(text, "model"))) >= 2
    assert "gradient_flow" in figs


def test_report_shows_the_metric_values_of_metrics_json(cnn_run):
    text = page(cnn_run)
    metrics = rd.read_json(cnn_run / rd.METRICS)
    summary = section(text, "summary")
    for split in ("train", "val", "test"):
        m = metrics[split]
        assert f"<td>{split}</td><td>{m['n']:,}</td><td>{m['accuracy']:.4f}</td><td>{m['loss']:.4f}</td>" in summary
    body = section(text, "metrics")
    t = metrics["test"]
    pc = t["per_class"]
    for i, name in enumerate(t["class_names"]):
        cells = [name] + [f"{pc[c][i]:.4f}" for c in ("precision", "recall", "specificity", "f1", "auc")] \
            + [str(pc["support"][i])]
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" in body
    assert f"<td>{t['macro']['f1']:.4f}</td>" in body and f"<td>{t['weighted']['precision']:.4f}</td>" in body
    # Summary facts: the parameter count of the model and the resolved config.
    model = cnnlab.Run(cnn_run).model
    assert f"{sum(p.numel() for p in model.parameters()):,}" in summary
    assert escape((cnn_run / rd.CONFIG).read_text()) in section(text, "config")


def test_report_is_self_contained(cnn_run):
    full = page(cnn_run)
    # plotly.js once (the curves chart), and no script or link of anyone else's.
    assert full.count(plotly_script()) == 1 and 'class="cnnlab-chart" id="chart-curves"' in full
    text = outside_scripts(full)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text
    assert '<meta name="viewport"' in text
    for src in re.findall(r'src="([^"]*)"', text):
        assert src.startswith("data:image/png;base64,")


def test_class_and_run_names_are_escaped(evil_run):
    text = page(evil_run)
    for name in EVIL + ["<em>evil<em> & run"]:
        assert name not in text
        assert escape(name) in text
    assert "<script" not in outside_scripts(text).lower() and "<img src=x" not in text
    # The per-class rows carry the escaped names next to their metrics.
    t = rd.read_json(evil_run / rd.METRICS)["test"]
    assert f"<td>{escape(EVIL[0])}</td><td>{t['per_class']['precision'][0]:.4f}</td>" in text
    assert (evil_run / "figures" / "confusion_test.png").exists()


def test_every_page_shows_user_strings_as_text(evil_run, cnn_run, tmp_path):
    """Class names, the run name, diagnostics and config values that are HTML: the run report, the
    comparison and the runs index show each as text, and nothing of them runs or loads."""
    d = tmp_path / "runs" / "x" / "run"
    shutil.copytree(evil_run, d)
    script = "<script>alert(1)</script>"
    rd.atomic_write_json(d / rd.DIAGNOSTICS, {"created": script, "counts": {script: 1}, "findings": [
        {"id": script, "severity": script, "title": script, "evidence": script, "why": script, "remedies": [script]}]})
    env = rd.read_json(d / rd.ENV)
    rd.atomic_write_json(d / rd.ENV, {**env, script: script})
    pages = {"report": write_report(d), "compare": write_compare([d, cnn_run], tmp_path / "cmp"),
             "index": write_runs_index(tmp_path / "runs")}
    for name, path in pages.items():
        text = path.read_text()
        for raw in (script, "<img src=x", "<em>evil", EVIL[1]):
            assert raw not in text, (name, raw)
        assert "<script" not in outside_scripts(text).lower(), name
        assert str(escape("<em>evil<em> & run")) in text, name
    report, compare = (pages[k].read_text() for k in ("report", "compare"))
    assert section(report, "diagnostics").count(str(escape(script))) >= 6  # every field of the finding
    assert str(escape(script)) in section(report, "config")  # env.json keys and values
    for name in EVIL:
        assert str(escape(name)) in report and str(escape(name)) in compare  # class names


def test_given_data_is_used_instead_of_loading_it(cnn_run, tmp_path, monkeypatch):
    cfg = load_config(cnn_run / rd.CONFIG)
    splits = load_data(cfg.data, cfg.seed)
    copy_dir = tmp_path / "run"
    shutil.copytree(cnn_run, copy_dir)
    monkeypatch.setattr(report_run, "load_data", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no loading")))
    write_report(copy_dir, data=splits)
    assert (copy_dir / "figures" / "examples_right.png").exists()
    assert "no loading" not in page(copy_dir)
    # Without the data (and loading broken) the examples are left out with a visible note.
    shutil.rmtree(copy_dir / "figures")
    write_report(copy_dir)
    assert "example images left out" in section(page(copy_dir), "examples")
    assert not (copy_dir / "figures" / "examples_right.png").exists()


def test_unfinished_run_renders_what_exists(cnn_run, tmp_path):
    d = tmp_path / "running"
    shutil.copytree(cnn_run, d)
    for name in (rd.METRICS, "diagnostics.json", REPORT):
        (d / name).unlink()
    shutil.rmtree(d / "predictions")
    shutil.rmtree(d / "checkpoints")
    shutil.rmtree(d / "figures")
    write_status(d, "running")
    text = page(d) if write_report(d) else ""
    assert "no metrics.json" in section(text, "summary")
    assert "running" in section(text, "summary")
    assert (d / "figures" / "curves.png").exists()  # history.jsonl is there: its curves are drawn
    assert "diagnose" in section(text, "diagnostics")


def test_per_step_figure_only_with_two_or_more_steps(cnn_run, tmp_path):
    assert not (cnn_run / "figures" / "steps.png").exists()  # no [log] every_steps: no steps.jsonl
    d = tmp_path / "run"
    shutil.copytree(cnn_run, d)
    rows = [{"step": s, "epoch": 1 + (s - 1) // 20, "loss": 2.0 / s, "acc": min(1.0, s / 40)} for s in range(5, 45, 5)]
    (d / rd.STEPS).write_text(json.dumps(rows[0]) + "\n")
    write_report(d)
    assert not (d / "figures" / "steps.png").exists()  # one step is not a curve
    (d / rd.STEPS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(d)
    assert (d / "figures" / "steps.png").is_file()
    assert "steps.jsonl" in section(page(d), "curves") and len(inline_pngs(section(page(d), "curves"))) == 2
    (d / rd.STEPS).write_text("{not json\n")
    with pytest.raises(UserError, match="steps.jsonl is damaged"):
        write_report(d)


def test_report_after_run_respects_the_switch_and_never_raises(cnn_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CNNLAB_REPORT")  # conftest switches end-of-run reports off for the suite
    d = tmp_path / "run"
    shutil.copytree(cnn_run, d)
    (d / REPORT).unlink()
    report_after_run(d, quiet=True)  # config.toml says report = false
    assert not (d / REPORT).exists()
    cfg_text = (d / rd.CONFIG).read_text()
    (d / rd.CONFIG).write_text(cfg_text.replace("enabled = false", "enabled = true"))
    report_after_run(d, quiet=False)
    assert (d / REPORT).exists() and f"report: {d / REPORT}" in capsys.readouterr().out
    report_after_run(tmp_path / "missing", quiet=True)  # must not raise
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: report not written")


def test_cli_report(cnn_run, tmp_path, capsys):
    d = tmp_path / "run"
    shutil.copytree(cnn_run, d)
    assert main(["report", str(d)]) == 0
    assert f"report: {d / REPORT}" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "not a cnnlab run directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------- runs index, sweep
def test_runs_index_links_every_report(cnn_run, tmp_path, capsys):
    root = tmp_path / "runs"
    a = root / "rep_cnn" / "a"
    b = root / "other <x>" / "b"
    shutil.copytree(cnn_run, a)
    shutil.copytree(cnn_run, b)
    (b / REPORT).unlink()
    write_status(b, "failed", name="other <x>")
    assert main(["runs", "--runs-dir", str(root), "--html"]) == 0
    assert f"index: {root / 'index.html'}" in capsys.readouterr().out
    text = (root / "index.html").read_text()
    assert 'href="rep_cnn/a/report.html"' in text
    assert "other &lt;x&gt;" in text and "other <x>" not in text
    assert text.count("no report yet") == 1  # b has none; it is listed without a dead link
    assert 'href="other%20%3Cx%3E/b/report.html"' not in text
    metrics = rd.read_json(a / rd.METRICS)
    assert f"<td>{metrics['test']['accuracy']:.4f}</td>" in text


SWEEP_EXP = """
name = "tiny"
seed = 0
report = false
[data]
dataset = "digits"
[model]
name = "mlp"
hidden_size = 16
[train]
epochs = 1
device = "cpu"
"""
SWEEP = """
name = "tiny_grid"
base = "exp.toml"
strategy = "grid"
metric = "val.accuracy"
[space]
"train.lr" = [1e-3, 3e-2]
"""


def test_sweep_report_ranks_trials_and_draws_its_figures(tmp_path, capsys):
    (tmp_path / "exp.toml").write_text(SWEEP_EXP)
    (tmp_path / "sweep.toml").write_text(SWEEP)
    result = sweep(tmp_path / "sweep.toml", runs_dir=tmp_path / "sweeps", quiet=True)
    assert main(["report", str(result.dir)]) == 0
    assert f"report: {result.dir / REPORT}" in capsys.readouterr().out
    text = (result.dir / REPORT).read_text()
    ranked = result.ranked
    assert len(ranked) == 2
    # Ranked rows in order: rank, trial, lr, metric value as results.csv has them.
    pos = [text.index(f"<td>{i}</td><td>{r['trial']}</td><td>{r['train.lr']:.4g}</td><td>{r['val.accuracy']:.4f}</td>")
           for i, r in enumerate(ranked, 1)]
    assert pos == sorted(pos)
    for key in ("sweep_objective", "sweep_params"):
        im = Image.open(result.dir / "figures" / f"{key}.png")
        im.load()
    assert len(inline_pngs(text)) >= 2
    for r in ranked:  # each trial links its run directory (relative)
        rel = Path(r["run_dir"]).relative_to(result.dir).as_posix()
        assert f'href="{rel}"' in text
    # The same page from the Python API, and the runs index finds the sweep and its trials.
    assert write_sweep_report(result.dir) == result.dir / REPORT
    index = write_runs_index(tmp_path / "sweeps")
    itext = index.read_text()
    assert "tiny_grid" in itext and itext.count("trial-") >= 2


def test_a_new_report_removes_figures_it_no_longer_draws(cnn_run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(cnn_run, d)
    assert (d / "figures" / "saliency.png").is_file()
    cfg = (d / rd.CONFIG).read_text()
    assert "explain_images = 4" in cfg
    (d / rd.CONFIG).write_text(cfg.replace("explain_images = 4", "explain_images = 0"))
    write_report(d)
    left = {p.stem for p in (d / "figures").glob("*.png")}
    assert "saliency" not in left and "gradcam" not in left and "feature_maps" not in left
    assert "curves" in left  # the figures this page still draws stay


def test_augmented_training_images_are_shown_when_augmentation_is_on(cnn_run, tmp_path):
    assert '<section id="augmentation">' not in page(cnn_run)  # no [data.augment]: no section
    cfg = copy.deepcopy(CNN) | {"name": "rep_aug"}
    cfg["train"]["epochs"] = 1
    cfg["data"]["augment"] = {"crop_padding": 1, "rotation": 20, "brightness": 0.3, "mixup": 0.4}
    d = cnnlab.run(cfg, runs_dir=tmp_path, quiet=True).dir
    write_report(d)
    text = section(page(d), "augmentation")
    assert "through this run&#39;s augmentation (crop, affine, colour, mixup)" in text or "augmentation (" in text
    assert "mixed targets" in text and len(inline_pngs(text)) == 1
    im = Image.open(d / "figures" / "augmentation.png")
    assert im.width > 100 and im.height > 50


def test_the_report_says_how_many_of_its_sections_are_drawn(cnn_run, tmp_path):
    """write_report(on_section=...) counts the sections as it draws them: 0 of n first, n of n last,
    one step at a time (what the progress line of `cnnlab run` and `cnnlab report` shows)."""
    d = tmp_path / "run"
    shutil.copytree(cnn_run, d)
    calls: list[tuple[int, int]] = []
    write_report(d, on_section=lambda done, total: calls.append((done, total)))
    n = len(list(report_run.SECTIONS))
    assert n >= 5 and calls == [(i, n) for i in range(n + 1)]
