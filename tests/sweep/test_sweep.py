"""Sweeps on scikit-learn's digits with a tiny MLP (2 epochs, ~1 s a trial): grid with two worker
processes, kill and resume, two workers sharing one PostgreSQL study, sequential stages, repeats,
a failing trial, Optuna with pruning, and bad sweep files."""

from __future__ import annotations

import csv
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from cnnlab.cli import main
from cnnlab.report import write_sweep_report
from cnnlab.sweep import sweep as run_sweep
from cnnlab.sweep.results import TRIAL_REPORTS, absolute_paths
from cnnlab.sweep.storage import _driver_url

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

EXPERIMENT = """
name = "tiny"
seed = 0
[data]
dataset = "digits"
[model]
name = "mlp"
hidden_size = 32
[train]
epochs = 2
device = "cpu"
"""


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """One torch thread per trial here and in the worker processes: these models are tiny, and on busy
    cores a second OpenMP thread makes a 0.3 s trial take seconds (threads spin waiting for a core)."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_sweep(tmp_path: Path, body: str, name: str = "sweep.toml") -> Path:
    (tmp_path / "exp.toml").write_text(EXPERIMENT)
    p = tmp_path / name
    p.write_text(body)
    return p


def rows_of(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def only_dir(root: Path) -> Path:
    dirs = [d for d in root.iterdir() if (d / "sweep.json").is_file()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def complete_configs(rows: list[dict], keys: list[str]) -> list[tuple]:
    return [tuple(r[k] for k in keys) for r in rows if r["state"] == "complete"]


GRID8 = """
name = "grid8"
base = "exp.toml"
strategy = "grid"
[space]
train.lr = [1e-3, 3e-3]
train.batch_size = [32, 64]
"model.hidden_layers" = [1, 2]
"""


@pytest.mark.slow
def test_grid_with_two_workers(tmp_path, capsys):
    sweep = write_sweep(tmp_path, GRID8)
    code = main(["sweep", str(sweep), "--workers", "2", "--runs-dir", str(tmp_path / "sweeps")])
    out = capsys.readouterr().out
    assert code == 0
    d = only_dir(tmp_path / "sweeps" / "grid8")
    rows = rows_of(d)
    assert len(rows) == 8 and all(r["state"] == "complete" for r in rows)
    keys = ["train.lr", "train.batch_size", "model.hidden_layers"]
    assert len(set(complete_configs(rows, keys))) == 8
    assert "rank" in out and "test.accuracy" in out and "best.toml" in out
    assert (d / "figures" / "sweep_objective.png").is_file() and (d / "figures" / "sweep_params.png").is_file()
    assert not (d / "figures" / "history.png").exists()  # one set of figures: the report shows these files
    import cnnlab

    run = cnnlab.run(d / "best.toml", runs_dir=tmp_path / "runs", quiet=True)  # runnable as is
    assert run.metrics["test"]["accuracy"] > 0.3


@pytest.mark.slow
def test_killed_sweep_resumes_without_repeating_or_losing_trials(tmp_path):
    body = GRID8.replace('name = "grid8"', 'name = "killme"').replace('"model.hidden_layers" = [1, 2]\n', "")
    body = body.replace("train.batch_size = [32, 64]", "train.batch_size = [16, 32, 64]")  # 6 configurations
    sweep = write_sweep(tmp_path, body)
    cmd = [PY, "-m", "cnnlab", "sweep", str(sweep), "--runs-dir", str(tmp_path / "sweeps"), "-q"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    trials = tmp_path / "sweeps" / "killme"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if len(list(trials.glob("*/trials/*/*/metrics.json"))) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {m.parent for m in trials.glob("*/trials/*/*/metrics.json")}
    assert 2 <= len(before) < 6

    assert main(cmd[3:]) == 0  # the same command again, in this process (saves a start-up)
    d = only_dir(trials)
    rows = rows_of(d)
    configs = complete_configs(rows, ["train.lr", "train.batch_size"])
    assert len(configs) == 6 and len(set(configs)) == 6
    after = {m.parent for m in d.glob("trials/*/*/metrics.json")}
    complete = {Path(r["run_dir"]) for r in rows if r["state"] == "complete"}
    # Nothing recorded is lost: every run that finished before the kill is still there.
    assert before <= after
    # Every finished run belongs to a complete trial, or to a trial that was killed after its run
    # finished but before the sweep recorded it (marked failed "interrupted", with no run_dir).
    assert len(after - complete) <= sum(r["state"] == "fail" for r in rows)
    # The rerun trained exactly the configurations that were not complete yet: none twice.
    assert len(after - before) == 6 - len(before & complete)
    assert all(r["error"].startswith("interrupted") for r in rows if r["state"] == "fail")


# ------------------------------------------------------------------------------ PostgreSQL
def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    cands = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return cands[-1].parent if cands else None


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 and a free port, stopped at the end."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install 'cnnlab[postgres]')")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql); .ci/run installs it")
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else None
        if prefix is None:
            pytest.skip("running as root without runuser, cannot start postgres as another user")
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-pg-"))
    data = tmp / "data"
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp / "log"
    try:
        r = subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            pytest.skip(f"initdb failed, no PostgreSQL server: {r.stderr.strip()[:300]}")
        r = subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                                     "-o", f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1", "start"],
                           capture_output=True, text=True, timeout=90)
        if r.returncode != 0:
            pytest.skip(f"postgres did not start: {r.stderr.strip()[:300]} {log.read_text()[-300:] if log.exists() else ''}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, postgres_url):
    import json

    import optuna

    body = GRID8.replace('name = "grid8"', 'name = "pg"').replace('"model.hidden_layers" = [1, 2]\n', "")
    sweep = write_sweep(tmp_path, body)  # 4 configurations
    # Two "machines": separate commands with their own local sweep directories, one study.
    procs = [subprocess.Popen([PY, "-m", "cnnlab", "sweep", str(sweep), "--storage", postgres_url,
                               "--runs-dir", str(tmp_path / f"machine{i}"), "-q"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    meta = json.loads((only_dir(tmp_path / "machine0" / "pg") / "sweep.json").read_text())

    study = optuna.load_study(study_name=meta["study"], storage=_driver_url(postgres_url))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 4 and len(done) == 4
    assert len({(t.params["train.lr"], t.params["train.batch_size"]) for t in done}) == 4
    for i in range(2):  # each machine's results.csv shows the whole study
        assert len(rows_of(only_dir(tmp_path / f"machine{i}" / "pg"))) == 4


# ------------------------------------------------------------------------------ strategies
def test_sequential_fixes_the_best_of_the_stage_before(tmp_path):
    body = """
name = "chain"
base = "exp.toml"
strategy = "sequential"
[[stages]]
name = "lr"
space = { "train.lr" = [1e-4, 5e-3] }
[[stages]]
name = "batch"
space = { "train.batch_size" = [32, 64] }
"""
    res = run_sweep(write_sweep(tmp_path, body), runs_dir=tmp_path / "sweeps", quiet=True)
    first = [r for r in res.rows if r["stage"] == "lr"]
    second = [r for r in res.rows if r["stage"] == "batch"]
    assert len(first) == 2 and len(second) == 2
    best_lr = max(first, key=lambda r: r["val.accuracy"])["train.lr"]
    assert best_lr == 5e-3  # 1e-4 barely trains in two epochs
    assert all(r["train.lr"] == best_lr for r in second)
    assert res.best["stage"] == "batch"
    assert "lr = 0.005" in (res.dir / "best.toml").read_text()


def test_repeats_give_mean_and_std_and_a_failing_trial_does_not_stop_the_sweep(tmp_path):
    body = """
name = "rep"
base = "exp.toml"
repeats = 2
[space]
"data.per_class" = [60, 5000]   # digits has ~180 per class: 5000 fails when the data loads
"""
    res = run_sweep(write_sweep(tmp_path, body), runs_dir=tmp_path / "sweeps", quiet=True)
    ok = [r for r in res.rows if r["state"] == "complete"]
    bad = [r for r in res.rows if r["state"] == "fail"]
    assert len(ok) == 1 and len(bad) == 1 and "5000" in bad[0]["error"]
    assert ok[0]["repeats"] == 2 and ok[0]["val.accuracy.std"] > 0
    assert len(ok[0]["run_dir"].split(";")) == 2
    assert "±" in (res.dir / "ranking.md").read_text()


def test_a_per_class_metric_is_found_by_class_name_or_index(tmp_path):
    body = """
name = "pc"
base = "exp.toml"
metric = "val.per_class.{cls}.recall"
[overrides]
train.epochs = 1
[space]
"train.lr" = [0.01]
"""
    by_name = run_sweep(write_sweep(tmp_path, body.format(cls="3"), "a.toml"), runs_dir=tmp_path / "sweeps", quiet=True)
    # digits' classes are named "0".."9": keep "5" and "6", and ask for the second one by its index
    subset = body.format(cls="1").replace('"pc"', '"pc1"').replace("epochs = 1", "epochs = 1\ndata.classes = [5, 6]")
    by_index = run_sweep(write_sweep(tmp_path, subset, "b.toml"), runs_dir=tmp_path / "sweeps", quiet=True)
    for res, metric, index in ((by_name, "val.per_class.3.recall", 3), (by_index, "val.per_class.1.recall", 1)):
        metrics = json.loads((Path(res.best["run_dir"]) / "metrics.json").read_text())["val"]
        assert res.best[metric] == metrics["per_class"]["recall"][index]
    assert metrics["class_names"] == ["5", "6"]


def test_a_sweep_where_no_trial_completes_exits_1(tmp_path, capsys):
    sweep = write_sweep(tmp_path, 'name = "none"\nbase = "exp.toml"\n[space]\n"data.per_class" = [5000]\n')
    code = main(["sweep", str(sweep), "--runs-dir", str(tmp_path / "sweeps"), "-q"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "no trial of the sweep completed (1 tried" in err and "5000" in err, err


def test_optuna_tpe_with_median_pruning(tmp_path):
    body = """
name = "tpe"
base = "exp.toml"
strategy = "optuna"
pruner = "median"
trials = 5
[overrides]
train.epochs = 3
[space]
train.lr = { low = 1e-4, high = 1e-2, log = true }
"model.hidden_size" = { low = 16, high = 48, step = 16 }
"""
    res = run_sweep(write_sweep(tmp_path, body), runs_dir=tmp_path / "sweeps", quiet=True)
    assert len(res.rows) == 5
    assert {r["state"] for r in res.rows} <= {"complete", "pruned"} and res.best is not None
    assert all(r["model.hidden_size"] in (16, 32, 48) for r in res.rows)
    # The same command again continues the finished sweep: nothing more to run.
    again = run_sweep(tmp_path / "sweep.toml", runs_dir=tmp_path / "sweeps", quiet=True)
    assert again.dir == res.dir and len(again.rows) == 5


# ------------------------------------------------------------------------------ bad files
BAD = {
    "unknown key path": ('[space]\n"train.lrr" = [0.1, 0.01]\n', ["train.lrr", "unknown key"]),
    "key of another model": ('[space]\n"model.kernel_size" = [3, 5]\n', ["model.kernel_size"]),
    "value the experiment refuses": ('[space]\n"model.activation" = ["relu", "swish"]\n', ["swish", "activation"]),
    "empty space": ("[space]\n", ["empty"]),
    "empty list": ('[space]\n"train.lr" = []\n', ["empty list"]),
    "low above high": ('[space]\n"train.lr" = { low = 0.1, high = 0.01 }\n', ["low", "high", "train.lr"]),
    "unknown strategy": ('strategy = "bayes"\n[space]\n"train.lr" = [0.1]\n', ["bayes", "grid", "sequential"]),
    "unknown sweep key": ('strategie = "grid"\n[space]\n"train.lr" = [0.1]\n', ["strategie", "unknown key"]),
    "grid over a continuous range": ('[space]\n"train.lr" = { low = 0.001, high = 0.1 }\n', ["step"]),
    "random without trials": ('strategy = "random"\n[space]\n"train.lr" = [0.1, 0.2]\n', ["trials"]),
    "bad metric": ('metric = "val.acc"\n[space]\n"train.lr" = [0.1]\n', ["val.acc", "val.accuracy"]),
    "missing base": ('[space]\n"train.lr" = [0.1]\n', ["nope.toml"]),
    "per-class metric without a class": ('metric = "val.per_class.f1"\n[space]\n"train.lr" = [0.1]\n',
                                         ["val.per_class.f1", "<class name or index>"]),
    "per-class metric that is not one": ('metric = "val.per_class.0.support"\n[space]\n"train.lr" = [0.1]\n',
                                         ["support", "f1"]),
    "average with a class": ('metric = "val.macro.0.f1"\n[space]\n"train.lr" = [0.1]\n', ["val.macro.0.f1"]),
    "half steps over an integer key": ('[space]\n"train.epochs" = { low = 1, high = 2, step = 0.5 }\n',
                                       ["train.epochs", "1.5"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sweep_file_exits_2(tmp_path, capsys, case):
    text, needles = BAD[case]
    base = "nope.toml" if case == "missing base" else "exp.toml"
    sweep = write_sweep(tmp_path, f'name = "bad"\nbase = "{base}"\n' + text)
    code = main(["sweep", str(sweep), "--runs-dir", str(tmp_path / "sweeps")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    assert not (tmp_path / "sweeps").exists()  # nothing is created for a bad file


def test_a_finished_sweep_writes_its_report_and_the_best_trials_theirs(tmp_path, monkeypatch):
    """The end of a sweep: report.html in the sweep directory (the ranked table and figures); its
    trials write no report while training, the best TRIAL_REPORTS get one at the end (here: both)."""
    monkeypatch.delenv("CNNLAB_REPORT")  # conftest switches reports off for the suite
    body = GRID8.replace('name = "grid8"', 'name = "rep"').replace('"model.hidden_layers" = [1, 2]\n', "")
    body = body.replace("train.batch_size = [32, 64]", "")
    sweep = write_sweep(tmp_path, body)
    assert main(["sweep", str(sweep), "--runs-dir", str(tmp_path / "sweeps"), "-q"]) == 0
    d = only_dir(tmp_path / "sweeps" / "rep")
    page = (d / "report.html").read_text()
    assert "trial" in page and "data:image/png;base64," in page
    assert len(list((d / "trials").glob("*/*/report.html"))) == 2


@pytest.mark.slow
def test_best_trials_get_reports_links_resolve_and_best_toml_runs_from_anywhere(tmp_path, monkeypatch):
    """The sweep report links each trial to a page or folder that exists (the best TRIAL_REPORTS
    trials get report.html, the others their run directory), and best.toml's data paths do not
    depend on the folder the sweep was started from."""
    monkeypatch.delenv("CNNLAB_REPORT")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    body = GRID8.replace('name = "grid8"', 'name = "linked"').replace('"model.hidden_layers" = [1, 2]\n', "")
    res = run_sweep(write_sweep(work, body), runs_dir="sweeps", quiet=True)  # a relative sweep dir
    ranked_dirs = [Path(r["run_dir"]) for r in res.ranked]
    assert len(ranked_dirs) == 4 > TRIAL_REPORTS
    assert all((d / "report.html").is_file() for d in ranked_dirs[:TRIAL_REPORTS])
    assert not any((d / "report.html").exists() for d in ranked_dirs[TRIAL_REPORTS:])  # drawn on demand

    page = res.dir.resolve() / "report.html"
    local = local_links(page)
    assert len(local) >= 4
    assert all((page.parent / h).exists() for h in local), [h for h in local if not (page.parent / h).exists()]
    assert sum(h.endswith("report.html") for h in local) >= TRIAL_REPORTS

    best = res.dir.resolve() / "best.toml"
    text = best.read_text()
    assert f'root = "{(work / "data").resolve()}"' in text  # absolute: "data" was relative to work/
    assert tomllib.loads(text)["report"]["enabled"] is True  # the sweep's speed-up (no trial reports) is not the experiment's
    monkeypatch.chdir(tmp_path)  # elsewhere: the file still says where the data is ...
    assert tomllib.loads(text)["data"]["root"] == str((work / "data").resolve())
    write_sweep_report(page.parent)  # ... and the page drawn again from here still links every trial
    assert local_links(page) == local


def local_links(page: Path) -> list[str]:
    """The targets of the page's links that are files (relative, percent-decoded, fragment dropped)."""

    class Links(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.hrefs: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.hrefs += [v for k, v in attrs if tag == "a" and k == "href"]

    links = Links()
    links.feed(page.read_text())
    return [unquote(h.split("#")[0]) for h in links.hrefs if h and not h.startswith(("#", "http", "data:"))]


def test_best_toml_paths_are_absolute_but_pretrained_names_stay_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "src").mkdir(parents=True)
    cfg = {"data": {"root": "data", "path": "imgs.tar"}, "transfer": {"init_from": "runs/src", "weights_path": "w.pt"}}
    absolute_paths(cfg)
    assert cfg == {"data": {"root": str(tmp_path / "data"), "path": str(tmp_path / "imgs.tar")},
                   "transfer": {"init_from": str(tmp_path / "runs" / "src"), "weights_path": str(tmp_path / "w.pt")}}
    for name in ("torchvision:resnet18", "timm:resnet18", "resnet18"):
        cfg = {"transfer": {"init_from": name}}
        absolute_paths(cfg)
        assert cfg == {"transfer": {"init_from": name}}
