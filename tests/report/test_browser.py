"""The pages in a real headless Chromium (tests/browser.py): the run report, the comparison and
the sweep report load offline with every image decoded, no console error and no network request,
and fit a phone's width without horizontal scrolling. Screenshots are saved as test artifacts in
$CNNLAB_ARTIFACTS (else pytest's tmp dir). Skipped with the reason when no browser can start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("websocket", reason="websocket-client (a dev extra) is not installed")

from .browser import Browser, BrowserUnavailable  # noqa: E402
from .test_run import EVIL, SWEEP, SWEEP_EXP, build_cnn, build_evil  # noqa: E402

import cnnlab  # noqa: E402
from cnnlab.report.compare import write_compare  # noqa: E402
from cnnlab.sweep import sweep  # noqa: E402
from cnnlab.report import write_report, write_sweep_report  # noqa: E402

pytestmark = pytest.mark.slow  # a headless browser


@pytest.fixture(scope="module")
def browser():
    try:
        b = Browser()
    except BrowserUnavailable as e:
        pytest.skip(f"no headless browser: {e}")
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
    root = tmp_path_factory.mktemp("browser_runs")
    cnn = build_cnn(root)
    evil = build_evil(root)
    mlp = cnnlab.run({"name": "mlp", "seed": 0, "report": False, "data": {"dataset": "digits"},
                      "model": {"name": "mlp", "hidden_size": 16}, "train": {"epochs": 2, "device": "cpu"}},
                     runs_dir=root, quiet=True).dir
    (root / "exp.toml").write_text(SWEEP_EXP)
    (root / "sweep.toml").write_text(SWEEP)
    sw = sweep(root / "sweep.toml", runs_dir=root / "sweeps", quiet=True).dir
    return {"report": write_report(cnn), "report_escaped": write_report(evil),
            "compare": write_compare([cnn, mlp], root / "compare"), "sweep": write_sweep_report(sw)}


@pytest.mark.parametrize("name", ["report", "report_escaped", "compare", "sweep"])
def test_page_loads_offline_with_every_image(browser, pages, artifacts, name):
    check = browser.open(pages[name])
    (artifacts / f"{name}.png").write_bytes(check.screenshot)
    assert check.errors == []
    assert check.network == []
    assert check.images >= 2 and check.images_ok, f"images that did not decode: {check.broken_images}"
    assert check.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    phone = browser.open(pages[name], width=390)
    (artifacts / f"{name}_phone.png").write_bytes(phone.screenshot)
    assert phone.errors == [] and phone.images_ok
    assert phone.scroll_width <= phone.viewport_width  # wide tables scroll inside their box, not the page


def test_html_class_names_show_as_text(browser, pages):
    check = browser.open(pages["report_escaped"], screenshot=False)
    for name in EVIL:
        assert name in check.text  # shown literally ...
    # ... and nothing was injected: the only images are the report's own data: PNGs.
    assert browser.evaluate("[...document.images].every(i => i.src.startsWith('data:image/png;base64,'))")
    assert browser.evaluate("document.scripts.length") == 0


GIVEN = [p for p in os.environ.get("CNNLAB_BROWSER_PAGES", "").split(os.pathsep) if p]


@pytest.mark.skipif(not GIVEN, reason="CNNLAB_BROWSER_PAGES is not set (pages of real runs to check, "
                    "separated by ':', e.g. a CIFAR-10 report and a compare page; docs/report.md)")
@pytest.mark.parametrize("page", GIVEN)
def test_given_pages_load_offline_with_every_figure(browser, artifacts, page):
    """Pages of real runs (docs/report.md: a seed001_cnn CIFAR-10 report and its comparison with a
    resnet18 run): the same checks, and every figure the page's directory saved is on the page."""
    path = Path(page)
    check = browser.open(path)
    shot = artifacts / f"given_{path.parent.name}_{path.stem}.png"
    shot.write_bytes(check.screenshot)
    assert check.errors == [] and check.network == []
    figures = list((path.parent / "figures").glob("*.png"))
    assert check.images_ok and check.images >= max(2, len(figures)), f"broken: {check.broken_images}"
