"""Every input is hostile until checked: data files run no code, limits come before allocations,
a damaged run never breaks the others, and every refusal is one paragraph (exit 2, no traceback)
that names what is wrong. Each test also checks that nothing was written outside the run, sweep
and cache folders.

Most cases drive the command line in this process (`cnnlab.cli.main`); the ones about real
processes (a hang, the exit status seen by a shell) run `python -m cnnlab`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import cnnlab
from cnnlab import rundir as rd
from cnnlab.cli import main
from cnnlab.errors import UserError

from .data.writers import cifar_pixels, dump, make_cifar10, make_folder

SMALL = '''name = "small"
[data]
dataset = "digits"
per_class = 20
[model]
name = "cnn"
channels = [4]
hidden = [8]
[train]
epochs = 1
device = "cpu"
'''

# Folders a command may write into (runs, sweeps, compare pages, the decode cache): everything
# else in the test's folder must be byte-identical after a refused command.
WRITABLE = ("runs", "sweeps", "cache", "compare")


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in WRITABLE:
            continue
        out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A working folder as cwd, with the decode cache inside it (so it counts as writable)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "small.toml").write_text(SMALL)
    return tmp_path


def refused(ws: Path, capsys, args: list[str], *words: str, code: int = 2) -> str:
    """Run the CLI; assert the exit status, one clean paragraph naming ``words``, and no file
    written outside the writable folders. Returns the message."""
    before = _snapshot(ws)
    got = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err and "\x1b[" not in err, err
    lines = err.splitlines()
    assert all(line.startswith(("error:", "failed:", "warning:")) for line in lines), err  # nothing split a line
    message = [line for line in lines if line.startswith(("error:", "failed:"))]
    assert len(message) == 1, err  # one paragraph (warnings aside)
    for w in words:
        assert w in message[0], (w, message[0])
    assert _snapshot(ws) == before
    return message[0]


# ------------------------------------------------------------------ code execution from a data file
class _Payload:
    """Unpickling this creates a marker file: what a hostile data_batch_1 would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_cifar_pickle_that_would_run_code_is_refused_and_runs_nothing(ws, capsys):
    folder = make_cifar10(ws / "data")
    marker = ws / "PWNED"
    dump(folder / "data_batch_1", {b"data": cifar_pixels(10, 1), b"labels": [0] * 10, b"x": _Payload(marker)})
    refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="cifar10"', "--set", 'data.root="data"',
                         "--set", "data.per_class=1", "--runs-dir", "runs"],
            "data_batch_1", "not a CIFAR data file", "pathlib", "could run code")
    assert not marker.exists()
    assert not list((ws / "runs").rglob("run.json"))  # refused before any run directory


def test_object_arrays_and_other_numpy_types_are_refused_too(ws, capsys):
    folder = make_cifar10(ws / "data")
    dump(folder / "test_batch", {b"data": np.array([[1, "x"]], dtype=object), b"labels": [0]})
    refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="cifar10"', "--set", 'data.root="data"',
                         "--runs-dir", "runs"], "test_batch", "object arrays are refused")


def test_the_official_format_still_loads(ws):
    """Python 2's cPickle wrote the official files with numpy.core names and protocol 2."""
    folder = make_cifar10(ws / "data")
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [j % 10 for j in range(10)],
             b"data": cifar_pixels(10, 1), b"filenames": [b"x.png"] * 10}
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (folder / "data_batch_1").write_bytes(raw)
    run = cnnlab.run({"name": "c", "data": {"dataset": "cifar10", "root": "data", "per_class": 2},
                      "model": {"name": "cnn", "channels": [4], "hidden": [8]}, "train": {"epochs": 1}},
                     runs_dir=ws / "runs", quiet=True)
    assert run.status["status"] == "completed"


# ------------------------------------------------------------------------- damaged run directories
@pytest.fixture
def runs(ws):
    """Three finished runs under ws/runs."""
    for i in range(3):
        cnnlab.run(ws / "small.toml", overrides={"name": f"r{i}"}, runs_dir=ws / "runs", quiet=True)
    return {p.parent.parent.name: p.parent for p in (ws / "runs").glob("*/*/run.json")}


DAMAGE = {
    "truncated history": (rd.HISTORY, lambda p: p.write_text(p.read_text()[:-20])),
    "metrics that are a list": (rd.METRICS, lambda p: p.write_text("[1, 2, 3]")),
    "run.json that is not an object": (rd.STATUS, lambda p: p.write_text('"completed"')),
    "run.json that is binary": (rd.STATUS, lambda p: p.write_bytes(b"\xff\xfe\x00garbage")),
    "run.json linked to an endless device": (rd.STATUS, lambda p: (p.unlink(), p.symlink_to("/dev/zero"))),
    "metrics that are a FIFO": (rd.METRICS, lambda p: (p.unlink(), os.mkfifo(p))),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_run_is_listed_as_such_and_commands_aimed_at_it_name_the_file(runs, ws, capsys, case):
    name, damage = DAMAGE[case]
    bad = runs["r1"]
    damage(bad / name)
    assert main(["runs", "--runs-dir", "runs"]) == 0
    out = capsys.readouterr().out
    assert "r0" in out and "r2" in out and "damaged" in out and name in out, out
    assert main(["runs", "--runs-dir", "runs", "--group", "--html"]) == 0
    assert "damaged" in (ws / "runs" / "index.html").read_text()
    capsys.readouterr()
    for command in (["report", bad], ["compare", bad, runs["r0"]], ["diagnose", bad]):
        refused(ws, capsys, command, name, "damaged")
    if name == rd.STATUS:
        refused(ws, capsys, ["resume", bad], name, "damaged")


# ---------------------------------------------------------------------- limits before allocations
def test_an_image_size_that_cannot_fit_is_refused_before_resizing(ws, capsys):
    refused(ws, capsys, ["run", "small.toml", "--set", "data.image_size=1000000"], "data.image_size", "8192")
    refused(ws, capsys, ["run", "small.toml", "--set", "data.image_size=8192", "--set", "data.per_class=170"],
            "1,700 images resized to 8192x8192", "would need about", "data.image_size")


def test_the_memory_limit_is_what_the_machine_has(ws, capsys, monkeypatch):
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", str(10**6))  # a 1 MB machine
    refused(ws, capsys, ["run", "small.toml", "--set", "data.image_size=64"], "1.0 MB available")


def test_the_splits_are_counted_with_the_images_they_are_cut_from(ws, capsys, monkeypatch):
    # digits: 1,797 images of 8x8 = 115 kB loaded, and the 200 sampled (12.8 kB) copied into splits
    monkeypatch.setenv("CNNLAB_MEMORY_LIMIT", "120000")
    refused(ws, capsys, ["run", "small.toml", "--runs-dir", "runs"],
            "the 115.0 kB of loaded images with their train/val/test splits", "127.8 kB", "120.0 kB available")


def test_metrics_that_cannot_fit_are_refused_before_training(ws, capsys, monkeypatch):
    # 10,000 classes x 20,000 images need ~4 GB for the final metrics (metrics_memory, checked
    # against sklearn-sized inputs in tests/test_metrics.py); here the estimate is inflated instead.
    monkeypatch.setattr("cnnlab.runner.metrics_memory", lambda n, k: 10**15)
    refused(ws, capsys, ["run", "small.toml", "--runs-dir", "runs"], "the metrics of", "10 classes",
            "confusion matrix", "data.classes")
    assert not (ws / "runs").exists() or not any((ws / "runs").rglob("run.json"))


def test_a_model_or_batch_that_cannot_fit_is_refused_before_it_is_built(ws, capsys):
    refused(ws, capsys, ["run", "small.toml", "--set", "model.channels=[100000]"], "model.channels.0", "65536")
    refused(ws, capsys, ["run", "small.toml", "--set", "model.channels=[60000, 60000]", "--set",
                         "model.hidden=[60000]"], "parameters", "would need about", "smaller")
    refused(ws, capsys, ["run", "small.toml", "--set", "model.channels=[2048, 2048]", "--set", "data.image_size=256",
                         "--set", "train.batch_size=256"], "batches of", "lower train.batch_size")


def test_a_grid_too_large_to_plan_is_refused_with_its_size(ws, capsys):
    (ws / "sweep.toml").write_text('name = "g"\nbase = "small.toml"\n[space]\n"train.lr" = {low = 0.001, high = 1.0, '
                                   'step = 0.0000001}\n"train.batch_size" = {low = 1, high = 1000000}\n')
    refused(ws, capsys, ["sweep", "sweep.toml", "--runs-dir", "sweeps"], "combinations", "10,000", "trials = N")


# ------------------------------------------------------------------- valid TOML, invalid numbers
NUMBERS = {
    "infinite learning rate": (["train.lr=inf"], ["train.lr", "finite"]),
    "nan momentum": (["train.momentum=nan"], ["train.momentum"]),
    "seed beyond 64 bits": (["seed=18446744073709551616"], ["seed", "9223372036854775807"]),
    "negative seed": (["seed=-1"], ["seed"]),
    "run name of 300 characters": ([f'name="{"x" * 300}"'], ["name", "at most 100"]),
    "run name with a NUL byte": (['name="a\\u0000b"'], ["name", "control characters"]),
    "run name with a slash": (['name="a/b"'], ["name", "path separators"]),
    "negative class weight": (["train.class_weights=[1.0, -1.0]"], ["class_weights"]),
    "crop padding larger than the image": (["data.augment.crop_padding=100"], ["crop_padding", "8-pixel"]),
    "collective timeout of centuries": (["distributed.timeout_s=99999999999"], ["timeout_s"]),
    "a million threads": (["train.threads=1000000"], ["train.threads"]),
    "more processes than cores": (["distributed.devices=10000"], ["devices", "CPU core"]),
}


@pytest.mark.parametrize("case", list(NUMBERS))
def test_numbers_are_checked_where_they_are_declared(ws, capsys, case):
    sets, words = NUMBERS[case]
    args = ["run", "small.toml", "--runs-dir", "runs"]
    for s in sets:
        args += ["--set", s]
    refused(ws, capsys, args, *words)
    assert not (ws / "runs").exists() or not any((ws / "runs").rglob("run.json"))


def test_sweep_ranges_and_seeds_are_checked(ws, capsys):
    (ws / "nan.toml").write_text('name = "s"\nbase = "small.toml"\n[space]\n"train.lr" = {low = nan, high = 0.1}\n')
    refused(ws, capsys, ["sweep", "nan.toml", "--runs-dir", "sweeps"], "space.train.lr", "finite")
    (ws / "seed.toml").write_text('name = "s"\nbase = "small.toml"\nseed = 4294967296\n[space]\n"train.lr" = [0.1]\n')
    refused(ws, capsys, ["sweep", "seed.toml", "--runs-dir", "sweeps"], "seed", "2147483647")


def test_counts_on_the_command_line_must_be_positive(ws, capsys, runs):
    for args in (["predict", runs["r0"], "x.png", "--top", "0"], ["resume", runs["r0"], "--epochs", "0"],
                 ["sweep", "x.toml", "--workers", "0"]):
        with pytest.raises(SystemExit) as e:  # argparse refuses it, exit status 2
            main([str(a) for a in args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "less than 1" in err and "Traceback" not in err
    with pytest.raises(UserError, match="at least 1"):  # the API refuses too
        cnnlab.predict(runs["r0"], ["x.png"], k=0, quiet=True)


# ------------------------------------------------------------------------ file-system oddities
def _two_classes(root: Path) -> Path:
    return make_folder(root, classes=("cat", "dog"), n=4, size=(8, 8))


@pytest.mark.slow
def test_a_fifo_in_an_image_folder_is_skipped_not_read(ws):
    """A FIFO opened for reading blocks until someone writes: the loader must not open it."""
    folder = _two_classes(ws / "imgs")
    os.mkfifo(folder / "cat" / "pipe.png")
    r = subprocess.run([sys.executable, "-m", "cnnlab", "run", "small.toml", "--set", 'data.dataset="imagefolder"',
                        "--set", 'data.path="imgs"', "--set", "data.per_class=3", "--runs-dir", "runs", "-q"],
                       cwd=ws, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CNNLAB_CACHE": str(ws / "cache")})
    assert r.returncode == 0, r.stderr
    assert "skipped 1 special file" in r.stderr and "cat/pipe.png" in r.stderr


def test_a_dangling_link_is_an_unreadable_image(ws, capsys):
    folder = _two_classes(ws / "imgs")
    (folder / "dog" / "gone.png").symlink_to(ws / "nowhere.png")
    base = ["run", "small.toml", "--set", 'data.dataset="imagefolder"', "--set", 'data.path="imgs"', "--runs-dir", "runs"]
    refused(ws, capsys, base, "dog/gone.png", "does not exist", "on_bad_image")
    assert main(base + ["--set", 'data.on_bad_image="skip"', "--set", "data.per_class=3", "-q"]) == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().err


def test_archive_members_with_absolute_or_parent_paths_are_refused(ws, capsys):
    _two_classes(ws / "src")
    for member in ("/etc/cat/x.png", "../cat/x.png", "train//cat/x.png"):
        with tarfile.open(ws / "a.tar", "w") as tf:
            tf.add(ws / "src", arcname="train")
            data = (ws / "src" / "cat" / "000.png").read_bytes()
            info = tarfile.TarInfo(member)  # as written by hand: tarfile.add itself strips a leading /
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="imagefolder"', "--set", 'data.path="a.tar"',
                             "--set", "data.cache=false", "--runs-dir", "runs"], "absolute, empty or parent-folder path")


def test_one_class_is_not_a_classification_problem(ws, capsys):
    make_folder(ws / "one", classes=("cat",), n=6, size=(8, 8))
    refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="imagefolder"', "--set", 'data.path="one"',
                         "--runs-dir", "runs"], "one class folder", "at least two")
    refused(ws, capsys, ["run", "small.toml", "--set", "data.classes=[3]", "--runs-dir", "runs"], "1 class", "at least two")


def test_a_data_path_that_is_a_fifo_is_refused(ws, capsys):
    os.mkfifo(ws / "data.tar.gz")
    refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="imagefolder"', "--set", 'data.path="data.tar.gz"',
                         "--runs-dir", "runs"], "neither a directory nor a regular file")


# ----------------------------------------------------------------------------- where runs go
def test_a_runs_directory_that_is_a_file_is_refused_before_the_data_loads(ws, capsys):
    (ws / "runs").write_text("a file")
    refused(ws, capsys, ["run", "small.toml", "--runs-dir", "runs"], "--runs-dir", "is a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders: the check cannot fail as root")
def test_a_read_only_runs_directory_is_refused(ws, capsys):
    (ws / "runs").mkdir()
    (ws / "runs").chmod(0o555)
    try:
        refused(ws, capsys, ["run", "small.toml", "--runs-dir", "runs"], "--runs-dir", "permission denied")
    finally:
        (ws / "runs").chmod(0o755)


def test_a_full_disk_is_refused_before_the_data_loads(ws, capsys, monkeypatch):
    real_open = open

    def full(path, mode="r", *a, **k):
        if ".cnnlab-write-test." in str(path):
            raise OSError(28, "No space left on device", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full)
    refused(ws, capsys, ["run", "small.toml", "--runs-dir", "runs"], "--runs-dir", "disk is full")


def test_a_run_listing_shows_hostile_names_literally(runs, ws, capsys):
    status = ws / runs["r1"] / rd.STATUS
    record = json.loads(status.read_text())
    record |= {"name": "evil\x1b[2J\nrow [red]x[/red]", "model": "\x07bell"}
    status.write_text(json.dumps(record))
    assert main(["runs", "--runs-dir", "runs"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, out  # nothing reaches the terminal as a control code
    assert "evil\\x1b[2J\\nrow [red]x[/red]" in out and "\\x07bell" in out, out  # shown escaped and literal
    (ws / "afile").write_text("")
    refused(ws, capsys, ["runs", "--runs-dir", "afile"], "is a file, not a folder of runs")


# ---------------------------------------------------------------------------------- messages
class Evil:
    """Any object a hostile checkpoint might unpickle."""


def test_a_refused_checkpoint_says_why_without_torchs_advice(ws, capsys, runs):
    torch.save({"model": {}, "x": Evil()}, ws / "evil.pt")
    msg = refused(ws, capsys, ["evaluate", runs["r0"], "--checkpoint", "evil.pt"], "evil.pt", "could run code", "Evil")
    assert "weights_only" not in msg and "Re-running" not in msg


def test_a_file_that_is_not_an_archive_is_one_line(ws, capsys):
    (ws / "data.tar.gz").write_text("this is not gzip\n" * 10)
    refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="imagefolder"', "--set", 'data.path="data.tar.gz"',
                         "--runs-dir", "runs"], "cannot read archive", "not tar data")


def test_newlines_and_escapes_in_paths_and_folder_names_stay_in_one_escaped_paragraph(ws, capsys):
    msg = refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="imagefolder"', "--set",
                               'data.path="no\\nsuch\\u001b[2Jdir"', "--runs-dir", "runs"], "no\\nsuch\\x1b[2Jdir")
    assert "\x1b" not in msg
    root = _two_classes(ws / "imgs" / "train")
    make_folder(ws / "imgs" / "test", classes=("cat", "evil\nclass"), n=2, size=(8, 8))
    refused(ws, capsys, ["run", "small.toml", "--set", 'data.dataset="imagefolder"', "--set",
                         f'data.path="{root.parent}"', "--runs-dir", "runs"], "evil\\nclass")


def test_predict_on_a_folder_says_it_is_a_folder(ws, capsys, runs):
    (ws / "pics").mkdir()
    refused(ws, capsys, ["predict", runs["r0"], "pics"], "is a directory, not an image file")
