"""Progress on the console: the Reporter's three modes, and what `cnnlab run` shows on a terminal
and through a pipe (the epoch bar's time left, the run's ETA, the decode and report lines)."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab._progress import Mode, Reporter, current_reporter, fmt_duration, reporting

from .data.writers import make_folder, tar_dir

ANSI = re.compile(r"\x1b\[")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_read_as_minutes_and_seconds_then_hours():
    assert [fmt_duration(s) for s in (0, 59.4, 61, 3599, 3600, 7384)] == \
        ["0:00", "0:59", "1:01", "59:59", "1:00:00", "2:03:04"]


def test_plain_mode_prints_the_start_the_quarters_reached_and_the_end():
    clock, out = FakeClock(), io.StringIO()
    reporter = Reporter(stream=out, clock=clock)
    assert reporter.mode is Mode.PLAIN
    with reporter.task("decoding x", total=200, note=", 2 MB") as task:
        clock.now = 1.0
        task.update(20)  # 10 %: no line
        clock.now = 2.0
        task.update(60)  # 30 %: 25 % reached, 6 s left at this pace (approximately)
        clock.now = 6.0
        task.update(170)  # 85 %: only the highest quarter reached is printed
        task.update(200)  # the end has its own line
        clock.now = 7.0
        task.finish(f"decoded it in {task.seconds:.1f} s")
    assert out.getvalue().splitlines() == [
        "decoding x, 2 MB ...",
        "decoding x: 25% after 2.0 s, about 0:05 left",
        "decoding x: 75% after 6.0 s, about 0:01 left",
        "decoded it in 7.0 s",
    ]


def test_a_total_learnt_once_started_shows_as_quarters():
    """A report learns how many sections it draws only once it starts: update(done, total)."""
    clock, out = FakeClock(), io.StringIO()
    with Reporter(stream=out, clock=clock).task("writing report.html") as task:
        for done in range(9):
            clock.now = float(done)
            task.update(done, 8)
        task.finish("report: r/report.html")
    assert out.getvalue().splitlines() == [
        "writing report.html ...",
        "writing report.html: 25% after 2.0 s, about 0:06 left",
        "writing report.html: 50% after 4.0 s, about 0:04 left",
        "writing report.html: 75% after 6.0 s, about 0:02 left",
        "report: r/report.html",
    ]
    assert task.total == 8


def test_the_default_end_line_none_on_request_and_none_after_an_error():
    clock, out = FakeClock(), io.StringIO()
    reporter = Reporter(stream=out, clock=clock)
    with reporter.task("writing report.html"):
        clock.now = 2.5
    with reporter.task("skipped") as task:
        task.finish(None)
    with pytest.raises(ValueError):
        with reporter.task("failing"):
            raise ValueError
    assert out.getvalue().splitlines() == ["writing report.html ...", "writing report.html: done in 2.5 s",
                                           "skipped ...", "failing ..."]


def test_quiet_prints_nothing():
    reporter = Reporter(quiet=True, stream=FakeTerminal())  # even on a terminal
    assert reporter.mode is Mode.QUIET
    with reporter.task("decoding x", total=10) as task:
        task.update(5)
    reporter.say("a line")
    assert reporter.stream.getvalue() == ""


def test_a_terminal_gets_rich_and_then_the_end_line():
    out = FakeTerminal()
    reporter = Reporter(stream=out)
    assert reporter.mode is Mode.TERMINAL
    with reporter.task("decoding [x].tar", total=4) as task:  # brackets are not rich markup
        for i in range(1, 5):
            task.update(i)
        task.finish("decoded 4 images")
    text = out.getvalue()
    assert ANSI.search(text) and "decoding [x].tar" in text and "100%" in text
    assert text.rstrip().endswith("decoded 4 images")


def test_the_reporter_the_runner_installs_is_the_one_the_loaders_see():
    assert current_reporter().mode is Mode.QUIET  # outside any block: quiet
    mine = Reporter(stream=io.StringIO())
    with reporting(mine):
        assert current_reporter() is mine
    assert current_reporter().mode is Mode.QUIET


# ------------------------------------------------------------------------------ cnnlab run, for real
def _experiment(tmp_path: Path, name: str, data: str) -> Path:
    exp = tmp_path / f"{name}.toml"
    exp.write_text(f'name = "{name}"\nseed = 0\n\n[data]\n{data}\n\n'
                   '[model]\nname = "cnn"\nchannels = [4]\nhidden = [8]\n\n'
                   '[train]\nepochs = 3\nbatch_size = 16\ndevice = "cpu"\n\n'
                   '[train.early_stopping]\npatience = 2\n\n'
                   '[report]\nexplain_images = 0\nexamples = 2\nprobe_images = 16\n')
    return exp


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CNNLAB_REPORT"}  # the report is part of what is shown
    return {**env, **extra}


@pytest.mark.slow
def test_a_run_on_a_terminal_shows_the_bar_with_the_time_left_and_the_report_spinner(tmp_path):
    exp = _experiment(tmp_path, "tty", 'dataset = "digits"\nper_class = 30')
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "run", str(exp), "--runs-dir", str(tmp_path / "runs")],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True, cwd=tmp_path,
                            env=_env(TERM="xterm-256color", COLUMNS="250"))
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert proc.wait(timeout=60) == 0, text
    assert ANSI.search(text)  # rich drew on the terminal
    # The bar: the epoch's time left and the run's, then the epoch line with the run's ETA.
    assert re.search(r"\d+:\d\d left · run ≈ \d+:\d\d left", text)
    assert re.search(r"epoch +1/3 .*\| eta \d+:\d\d", text)
    assert "writing report.html" in text
    assert re.search(r"report: \S+report\.html \(\d+\.\d s\)", text)


@pytest.mark.slow
def test_a_run_through_a_pipe_prints_plain_lines(tmp_path):
    """No escape codes; the decode of a cold archive, each epoch with the run's ETA (not the last),
    and the report with its time."""
    archive = tar_dir(make_folder(tmp_path / "imgs", n=24), tmp_path / "set.tar.gz", top="set")
    exp = _experiment(tmp_path, "pipe", f'dataset = "imagefolder"\npath = "{archive}"\nval_fraction = 0.2')
    proc = subprocess.run([sys.executable, "-m", "cnnlab", "run", str(exp), "--runs-dir", str(tmp_path / "runs")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert not ANSI.search(out), out
    lines = out.splitlines()
    assert lines[0].startswith("decoding archive set.tar.gz, ") and lines[0].endswith("...")
    assert "later runs read the decoded images from the cache" in lines[0]
    assert re.fullmatch(r"decoded 72 images of archive set\.tar\.gz in \d+\.\d s", lines[1])
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 3
    assert all(re.search(r"\| eta \d+:\d\d", line) for line in epochs[:2]) and "eta" not in epochs[2]
    i = lines.index("writing report.html ...")
    j = next(k for k in range(i + 1, len(lines)) if not lines[k].startswith("writing report.html: "))
    # the sections drawn, by quarters (as many as were reached while the report drew), then where it is
    assert all(re.fullmatch(r"writing report\.html: (25|50|75)% after \d+\.\d s, about \d+:\d\d left", line)
               for line in lines[i + 1:j])
    assert re.fullmatch(r"report: \S+/report\.html \(\d+\.\d s\)", lines[j])
