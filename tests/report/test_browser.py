"""Every page cnnlab writes, in a real headless Chromium driven by Playwright (tests/report/browser.py):
the run report (a CNN run, and a run whose class names are HTML), the comparison, the sweep
report, the sweep's trial reports, and the runs index. At 1280 px and at 390 px (a phone) each
loads offline with no console or page error, requests nothing but itself and data: URLs, decodes
every image, does not scroll sideways (wide tables scroll inside their own box), and every link it
holds to a local file leads to one that exists. The sweep page's trial numbers agree with
results.csv and with its interactive objective chart.

Screenshots of each page at each width go to $CNNLAB_ARTIFACTS (else pytest's tmp dir); with
CNNLAB_UPDATE_SCREENSHOTS=1 the tops of the run and sweep reports at 1280 px also replace the
README's docs/screenshots/run-report.png and sweep-report.png. Skipped with the reason when
Playwright or a system Chromium is missing."""

from __future__ import annotations

import csv
import os
import urllib.parse
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright (a dev extra) is not installed")

from playwright.sync_api import sync_playwright  # noqa: E402

from .browser import DESKTOP, PHONE, launch, open_page  # noqa: E402
from .test_run import EVIL, SWEEP, SWEEP_EXP, build_cnn, build_evil  # noqa: E402

import cnnlab  # noqa: E402
from cnnlab import rundir as rd  # noqa: E402
from cnnlab.report import write_report, write_runs_index, write_sweep_report  # noqa: E402
from cnnlab.report.compare import write_compare  # noqa: E402
from cnnlab.sweep import sweep  # noqa: E402

pytestmark = pytest.mark.slow  # a headless browser

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "screenshots"  # the README's pictures
README_SHOTS = {"run_report": "run-report.png", "sweep": "sweep-report.png"}
README_SHOT_HEIGHT = 1400  # CSS px from the top: the whole page would be several screens long
EVIL_RUN_NAME = "<em>evil<em> & run"  # build_evil's run name
WIDTHS = [DESKTOP, PHONE]
# Fewest <img>s each page must show: the run reports' confusion matrices, ROC curves and examples
# and the comparison's per-class bars stay PNGs; the sweep page and the index may have none.
MIN_IMAGES = {"run_report": 2, "run_report_evil": 2, "compare": 1, "sweep": 0, "runs_index": 0}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = launch(pw)
        if isinstance(b, str):
            pytest.skip(f"no headless browser: {b}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    d = Path(os.environ["CNNLAB_ARTIFACTS"]) if os.environ.get("CNNLAB_ARTIFACTS") else tmp_path_factory.mktemp("shots")
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    """Every kind of page, in one runs folder (so the index lists runs, the sweep and its trials,
    and the comparison)."""
    root = tmp_path_factory.mktemp("browser_runs")
    cnn = build_cnn(root)
    evil = build_evil(root)
    mlp = cnnlab.run({"name": "mlp", "seed": 0, "report": False, "data": {"dataset": "digits"},
                      "model": {"name": "mlp", "hidden_size": 16}, "train": {"epochs": 2, "device": "cpu"}},
                     runs_dir=root, quiet=True).dir
    (root / "exp.toml").write_text(SWEEP_EXP.replace("report = false\n", ""))  # the sweep decides: the best get one
    (root / "sweep.toml").write_text(SWEEP)
    with pytest.MonkeyPatch.context() as mp:  # reports on (conftest turns them off): the best trials get theirs
        mp.delenv("CNNLAB_REPORT", raising=False)
        sw = sweep(root / "sweep.toml", runs_dir=root / "sweeps", quiet=True).dir
    out = {"run_report": write_report(cnn), "run_report_evil": write_report(evil),
           "compare": write_compare([cnn, mlp], root / "compare"), "sweep": write_sweep_report(sw)}
    out["runs_index"] = write_runs_index(root)  # last: it lists the pages above
    return out


@pytest.fixture(scope="module")
def sweep_dir(pages) -> Path:
    return pages["sweep"].parent


def local_links(page) -> list[str]:
    """The file: URLs (fragment dropped) of the page's links and anchors' targets."""
    hrefs = page.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
    return sorted({h.split("#")[0] for h in hrefs if h.startswith("file:")})


def url_path(url: str) -> Path:
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))


def assert_page_is_sound(check, page, min_images: int) -> None:
    assert check.errors == []
    assert check.network == []
    assert check.dialogs == [] and page.evaluate("window.__pwned") is None
    assert check.images >= min_images and check.broken_images == [], f"images that did not decode: {check.broken_images}"
    assert check.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    # No sideways page scroll: compared with the width asked for, since a phone's layout viewport
    # (and innerWidth) grows to the content's width when the content overflows.
    assert check.client_width == check.width
    assert check.scroll_width <= check.width, f"the page is {check.scroll_width} px wide at {check.width} px"
    missing = [u for u in local_links(page) if not url_path(u).exists()]
    assert missing == [], "links to files that do not exist"
    # Self-contained: no script or stylesheet is loaded from anywhere (inline scripts are fine).
    assert page.evaluate("document.querySelectorAll('script[src], link[rel=stylesheet][href]').length") == 0


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(MIN_IMAGES))
def test_page_loads_offline_decodes_every_image_and_fits_the_width(browser, pages, artifacts, name, width):
    with open_page(browser, pages[name], width) as (check, page):
        (artifacts / f"{name}_{width}.png").write_bytes(check.screenshot)
        if width == DESKTOP and name in README_SHOTS and os.environ.get("CNNLAB_UPDATE_SCREENSHOTS") == "1":
            height = min(README_SHOT_HEIGHT, page.evaluate("document.documentElement.scrollHeight"))
            shot = page.screenshot(full_page=True, type="png", clip={"x": 0, "y": 0, "width": width, "height": height})
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            rd.atomic_write_bytes(SCREENSHOTS / README_SHOTS[name], shot)
        assert_page_is_sound(check, page, MIN_IMAGES[name])


def trial_reports(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.rglob(rd.REPORT) if p != sweep_dir / rd.REPORT)


@pytest.mark.parametrize("width", WIDTHS)
def test_every_trial_report_of_the_sweep_loads_and_is_linked(browser, pages, sweep_dir, artifacts, width):
    reports = trial_reports(sweep_dir)
    assert len(reports) == 2, f"the tiny grid's two trials are its best and get {rd.REPORT} (under {sweep_dir})"
    with open_page(browser, pages["sweep"], DESKTOP) as (_, page):
        linked = {url_path(u).resolve() for u in local_links(page)}
    assert {p.resolve() for p in reports} <= linked  # the sweep report links each trial's page
    for i, p in enumerate(reports):
        with open_page(browser, p, width) as (check, page):
            (artifacts / f"sweep_trial{i}_{width}.png").write_bytes(check.screenshot)
            assert_page_is_sound(check, page, MIN_IMAGES["run_report"])


def test_html_class_names_show_as_text_and_inject_nothing(browser, pages):
    with open_page(browser, pages["run_report_evil"], DESKTOP) as (check, page):
        for name in EVIL + [EVIL_RUN_NAME]:
            assert name in check.text  # shown literally ...
        # ... and nothing was injected, with the page's own inline scripts (charts) present.
        assert page.evaluate("document.querySelectorAll('[onerror], img[src=\"x\"]').length") == 0
        assert page.evaluate("[...document.images].every(i => i.getAttribute('src').startsWith('data:image/'))")
        assert page.evaluate("[...document.scripts].filter(s => s.text.trim().startsWith('alert(')).length") == 0
        assert page.evaluate("[...document.querySelectorAll('em')].filter(e => e.textContent.startsWith('evil')).length") == 0
        assert page.evaluate("window.__pwned") is None and check.dialogs == []


# The objective chart's trial numbers: the first trace's x of the chart whose x axis counts trials
# (else the first chart). Plotly may keep arrays base64-encoded in .data; _fullData has them decoded.
CHART_TRIALS = """() => {
  const charts = [...document.querySelectorAll('div[class*="plotly"]')].filter(d => Array.isArray(d.data) && d.data.length);
  if (!charts.length) return null;
  const title = (d) => { const t = (d.layout && d.layout.xaxis && d.layout.xaxis.title) || ''; return String(t.text ?? t); };
  const gd = charts.find(d => /trial/i.test(title(d))) || charts[0];
  let x = gd.data[0].x;
  if (x && x.bdata !== undefined) x = gd._fullData[0].x;
  return Array.from(x || []).map(Number);
}"""
TABLE_TRIALS = """() => {
  const table = [...document.querySelectorAll('table')].find(t => [...t.querySelectorAll('th')].some(th => th.textContent.trim() === 'trial'));
  if (!table) return null;
  const col = [...table.querySelectorAll('th')].findIndex(th => th.textContent.trim() === 'trial');
  return [...table.querySelectorAll('tbody tr')].map(tr => tr.cells[col].textContent.trim());
}"""


def test_sweep_page_numbers_trials_as_its_table_and_results_csv(browser, pages, sweep_dir):
    with (sweep_dir / rd.SWEEP_RESULTS).open(newline="") as f:
        complete = sorted(int(r["trial"]) for r in csv.DictReader(f) if r["state"] == "complete")
    assert len(complete) == 2  # the tiny grid: trials 0 and 1
    with open_page(browser, pages["sweep"], DESKTOP) as (_, page):
        table = page.evaluate(TABLE_TRIALS)
        chart = page.evaluate(CHART_TRIALS)
    assert table is not None, "the sweep page has no table with a 'trial' column"
    assert sorted(int(t) for t in table) == complete  # the ranked table lists results.csv's trial ids
    assert chart is not None, "the sweep page has no interactive objective chart"
    assert sorted(chart) == complete  # the objective chart's x is the trial id, not a count from 1


GIVEN = [p for p in os.environ.get("CNNLAB_BROWSER_PAGES", "").split(os.pathsep) if p]


@pytest.mark.skipif(not GIVEN, reason="CNNLAB_BROWSER_PAGES is not set (pages of real runs to check, "
                    "separated by ':', e.g. a CIFAR-10 report and a compare page; docs/report.md)")
@pytest.mark.parametrize("page_path", GIVEN)
def test_given_pages_load_offline_with_every_figure(browser, artifacts, page_path):
    """Pages of real runs (docs/report.md: a seed001_cnn CIFAR-10 report and its comparison with a
    resnet18 run): the same checks, and every figure the page's directory saved is on the page."""
    path = Path(page_path)
    with open_page(browser, path, DESKTOP) as (check, page):
        (artifacts / f"given_{path.parent.name}_{path.stem}.png").write_bytes(check.screenshot)
        assert_page_is_sound(check, page, 2)
        # A figure is on the page as an image or as the interactive chart drawn from the same data.
        charts = page.evaluate("[...document.querySelectorAll('div[class*=\"plotly\"]')].filter(d => Array.isArray(d.data)).length")
        figures = list((path.parent / rd.FIGURES).glob("*.png"))
        assert check.images + charts >= len(figures)
