"""Interactive charts (report/charts.py): each fragment is a div with its id and one script whose
figure JSON decodes to the expected traces, is valid for plotly (checked by plotly's own figure
validation), cannot be broken out of by user strings, and is the same string for the same data; the
page script inlines plotly.js and loads nothing. A slow test draws them in headless Chromium."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from cnnlab.report import charts
from cnnlab.report.charts import (
    compare_curves_chart,
    curves_chart,
    objective_chart,
    params_chart,
    plotly_script,
)

# User strings that would break out of a script, inject markup into plotly's text renderer, start
# LaTeX or a hovertemplate placeholder if they were not escaped.
BREAKOUT = "</script><script>alert(1)</script>"
MARKUP = "<b>bold</b> & <img src=x onerror=alert(2)>"
TEMPLATE = "$x$ %{y} 100%"
EVIL = [BREAKOUT, MARKUP, TEMPLATE]


def history(epochs: int = 4, val: bool = True, lr: bool = True) -> list[dict]:
    rows = []
    for e in range(1, epochs + 1):
        h = {"epoch": e, "train_loss": 2.0 / e, "train_acc": 0.5 + e / 20, "seconds": 1.0}
        if val:
            h.update(val_loss=2.2 / e, val_acc=0.45 + e / 20)
        if lr:
            h["lr"] = 0.1 * 0.5 ** e
        rows.append(h)
    return rows


def trials(metric: str = "val.accuracy") -> list[dict]:
    """results.csv rows as read_sweep gives them: trial 1 failed, trial 4 pruned."""
    values = {0: 0.5, 1: None, 2: 0.8, 3: 0.7, 4: None, 5: 0.9}
    states = {1: "fail", 4: "pruned"}
    return [{"trial": t, "state": states.get(t, "complete"), "lr": [1e-4, 1e-3, 1e-2, 1e-1, 1e-3, 1e-2][t],
             "optimizer": ["sgd", "adam", "adamw", "sgd", "adam", "adamw"][t], "width": 16 * (t + 1),
             metric: v, "seconds": 3.0, "run_dir": f"trials/{t}"} for t, v in values.items()]


class _Fragment(HTMLParser):
    """The tags, attributes and script texts of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(fragment: str) -> tuple[str, dict]:
    """(the chart's id, its spec) after checking the fragment's shape: one div, one script."""
    p = _Fragment()
    p.feed(fragment)
    p.close()
    assert [t for t, _ in p.tags] == ["div", "script"]
    div = p.tags[0][1]
    assert "style" in div and "width:100%" in div["style"] and "px" not in div["style"]  # no fixed width
    assert len(p.scripts) == 1 and f'var id = "{div["id"]}";' in p.scripts[0]
    assert "Plotly.newPlot" in p.scripts[0] and get_plotlyjs()[:200] not in fragment  # draws; no plotly.js
    line = next(ln for ln in p.scripts[0].splitlines() if ln.startswith("var spec = "))
    body = line[len("var spec = "):-1]
    assert not set("<>&") & set(body)  # escaped: nothing in the JSON can end the script element
    return div["id"], json.loads(body)


def figure(spec: dict, mode: str) -> go.Figure:
    """The chart as plotly's Python API validates it (raises on any unknown property or bad value),
    in its wide or narrow layout."""
    return go.Figure(data=spec["data"], layout={**spec["layout"], **spec[mode]})


def strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


ALL_CHARTS = {
    "curves": lambda: curves_chart(history(), best_epoch=3, stop_epoch=4),
    "objective": lambda: objective_chart(trials(), "val.accuracy", "maximize"),
    "params": lambda: params_chart(trials(), ["lr", "optimizer", "width"], "val.accuracy", log=["lr"]),
    "compare": lambda: compare_curves_chart({"a": history(), "b": history(3, val=False)}),
}


# ------------------------------------------------------------------------------------ structure

@pytest.mark.parametrize("name", ALL_CHARTS)
def test_fragment_is_valid_plotly_and_responsive(name):
    chart_id, spec = parse(ALL_CHARTS[name]())
    assert chart_id.startswith(f"chart-{name}-")
    for mode in ("wide", "narrow"):
        fig = figure(spec, mode)
        assert fig.layout.width is None and fig.layout.autosize  # fills its container
    assert spec["narrow"]["grid"]["columns"] == 1 and spec["below"] == charts.NARROW_PX
    config = spec["config"]
    assert config["responsive"] is True and config["displaylogo"] is False
    assert not (config["showLink"] or config["showSendToCloud"] or config["showEditInChartStudio"])


def test_curves_chart_panels_values_and_marks():
    h = history(4)
    h[1]["val_loss"] = float("nan")  # a diverged value: a gap, and the JSON stays valid
    _, spec = parse(curves_chart(h, best_epoch=3, stop_epoch=4))
    traces = {(t["name"], t["yaxis"]): t for t in spec["data"]}
    assert set(traces) == {("train", "y"), ("val", "y"), ("train", "y2"), ("val", "y2"), ("learning rate", "y3")}
    assert traces["train", "y"]["x"] == [1, 2, 3, 4] and traces["train", "y"]["y"] == [2.0, 1.0, 2 / 3, 0.5]
    assert traces["val", "y"]["x"] == [1, 3, 4]
    assert traces["val", "y2"]["y"] == pytest.approx([0.5, 0.55, 0.6, 0.65])
    assert "epoch %{x}" in traces["val", "y"]["hovertemplate"] and "val loss %{y" in traces["val", "y"]["hovertemplate"]
    assert [t["showlegend"] for t in spec["data"]] == [True, True, False, False, False]  # one entry per split
    assert spec["layout"]["yaxis3"]["type"] == "linear"  # lr 0.05 -> 0.006: under a decade
    long = parse(curves_chart(history(5)))[1]  # lr 0.05 -> 0.003: a decade and more
    assert long["layout"]["yaxis3"]["type"] == "log"
    assert [s["x0"] for s in spec["layout"]["shapes"]] == [3, 3, 4, 4]
    assert spec["layout"]["xaxis"]["dtick"] == 1  # whole epochs only


def test_curves_chart_without_validation_or_lr():
    _, spec = parse(curves_chart(history(3, val=False, lr=False)))
    assert [(t["name"], t["yaxis"]) for t in spec["data"]] == [("train", "y"), ("train", "y2")]
    assert "xaxis3" not in spec["layout"] and spec["wide"]["grid"]["columns"] == 2
    assert "shapes" not in spec["layout"]


def test_objective_x_is_the_tables_trial_numbers_and_best_is_monotone():
    _, spec = parse(objective_chart(trials(), "val.accuracy", "maximize"))
    points, best = spec["data"]
    assert points["x"] == [0, 2, 3, 5]  # as numbered in the table, from 0; failed and pruned trials absent
    assert points["y"] == [0.5, 0.8, 0.7, 0.9]
    assert best["x"] == points["x"] and best["y"] == [0.5, 0.8, 0.8, 0.9]
    assert best["line"]["shape"] == "hv"
    assert spec["layout"]["xaxis"]["title"]["text"] == "trial (as numbered in the table)"
    # Hover: the trial's number, objective and parameters (results.csv's columns between state and metric).
    assert points["hovertext"][1] == "trial 2<br>val.accuracy 0.8<br>lr = 0.01<br>optimizer = adamw<br>width = 48"
    assert "from trial 2" in best["hovertext"][2]

    _, spec = parse(objective_chart(trials(), "val.accuracy", "minimize"))
    assert spec["data"][1]["y"] == [0.5, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="maximize, minimize"):
        objective_chart(trials(), "val.accuracy", "max")


def test_objective_of_a_staged_sweep_counts_completed_trials():
    rows = [{"stage": s, "trial": t, "state": "complete", "lr": 0.1, "val.accuracy": 0.1 * (i + 1)}
            for i, (s, t) in enumerate([("b", 0), ("a", 0), ("a", 1), ("b", 1)])]
    _, spec = parse(objective_chart(rows, "val.accuracy", "maximize"))
    points = spec["data"][0]
    assert points["x"] == [0, 1, 2, 3]  # trial numbers repeat across stages
    assert points["y"] == pytest.approx([0.2, 0.3, 0.1, 0.4])  # the report's order: stage, then trial
    assert points["hovertext"][0].startswith("trial 0 (stage a)")
    assert spec["layout"]["xaxis"]["title"]["text"] == "completed trial (from 0)"


def test_params_chart_axes():
    _, spec = parse(params_chart(trials(), ["lr", "optimizer", "width"], "val.accuracy", log=["lr"],
                                 order={"optimizer": ["sgd", "adam", "adamw"]}))
    lr, opt, width = spec["data"]
    assert lr["x"] == [1e-4, 1e-2, 1e-1, 1e-2] and lr["y"] == [0.5, 0.8, 0.7, 0.9]
    assert spec["layout"]["xaxis"]["type"] == "log"
    assert opt["x"] == ["sgd", "adamw", "sgd", "adamw"]
    assert spec["layout"]["xaxis2"]["type"] == "category"
    assert spec["layout"]["xaxis2"]["categoryarray"] == ["sgd", "adam", "adamw"]  # the sweep file's order
    assert spec["layout"]["xaxis3"]["type"] == "linear" and width["x"] == [16, 48, 64, 96]
    assert spec["wide"]["grid"]["columns"] == 3
    # Log without being told, when the values span two decades; linear below that.
    _, spec = parse(params_chart(trials(), ["lr"], "val.accuracy"))
    assert spec["layout"]["xaxis"]["type"] == "log"
    _, spec = parse(params_chart([{**r, "lr": 0.01 * (1 + r["trial"])} for r in trials()], ["lr"], "val.accuracy"))
    assert spec["layout"]["xaxis"]["type"] == "linear"
    assert params_chart(trials(), [], "val.accuracy") == ""


def test_compare_curves_chart_one_legend_entry_per_run():
    _, spec = parse(compare_curves_chart({"a": history(4), "b": history(3, val=False)}))
    by_run = {}
    for t in spec["data"]:
        by_run.setdefault(t["name"], []).append(t)
    assert [len(v) for v in by_run.values()] == [3, 3]
    assert [sum(t["showlegend"] for t in v) for v in by_run.values()] == [1, 1]
    b_val_loss = by_run["b"][1]
    assert b_val_loss["yaxis"] == "y2" and b_val_loss["y"] == pytest.approx([2.0, 1.0, 2 / 3])  # train values
    assert "train loss (no val split)" in b_val_loss["hovertemplate"]
    assert by_run["a"][0]["line"]["color"] != by_run["b"][0]["line"]["color"]


def test_charts_import_neither_torch_nor_matplotlib():
    """charts and the one module of ours it imports (_style: the palette and the parameter format,
    shared with the static plots) import no torch, matplotlib or numpy."""
    for module in ("charts", "_style"):
        tree = ast.parse((Path(charts.__file__).parent / f"{module}.py").read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        relative = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
        assert not names & {"torch", "torchvision", "matplotlib", "numpy"}, module
        assert relative <= ({"_style"} if module == "charts" else set()), (module, relative)


# ----------------------------------------------------------------------------------- escaping

def evil_charts() -> dict[str, str]:
    rows = [{"trial": i, "state": "complete", name: value, "val.accuracy": 0.1 * i}
            for i, (name, value) in enumerate(zip(EVIL, reversed(EVIL)))]
    metric_rows = [{"trial": 0, "state": "complete", "lr": MARKUP, BREAKOUT: 0.5}]
    return {
        "objective": objective_chart(rows, "val.accuracy", "maximize", params=EVIL),
        "objective_metric": objective_chart(metric_rows, BREAKOUT, "maximize"),
        "params": params_chart(rows, EVIL, "val.accuracy", order={MARKUP: [BREAKOUT]}),
        "compare": compare_curves_chart({name: history(2) for name in EVIL}),
    }


@pytest.mark.parametrize("name", ["objective", "objective_metric", "params", "compare"])
def test_user_strings_cannot_break_out_or_inject(name):
    fragment = evil_charts()[name]
    assert fragment.lower().count("</script") == 1  # only the fragment's own closing tag
    assert "<b>" not in fragment and "<img" not in fragment and "%{y} " not in fragment
    _, spec = parse(fragment)
    figure(spec, "wide")
    texts = "\n".join(strings(spec))
    for s in EVIL:  # every user string reaches plotly as entities, which it shows literally
        assert s not in texts
    assert charts.text(BREAKOUT) in texts or charts.text(MARKUP) in texts or charts.text(TEMPLATE) in texts
    for s in strings(spec):  # markup plotly would read: only this module's own <br> and <extra>
        assert not set(re.findall(r"<(/?\w+)", s)) - {"br", "extra", "/extra"}, s
    # A hovertemplate's placeholders are this module's own: a user's "%{y}" is not one of them.
    for t in spec["data"]:
        assert set(re.findall(r"%\{([^}]*)\}", t.get("hovertemplate", ""))) <= {"x", "y:.4g", "y:.4f", "hovertext"}


def test_text_escapes_for_plotly():
    assert charts.text(MARKUP) == "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;img src=x onerror=alert(2)&gt;"
    assert charts.text(TEMPLATE) == "&#36;x&#36; &#37;{y} 100&#37;"
    assert charts.text("a" * 50, 10) == "a" * 9 + "…"


def test_to_json_is_script_safe():
    s = charts.to_json({"k": "</script>&\u2028", "n": 1.5})
    assert s == '{"k":"\\u003c/script\\u003e\\u0026\\u2028","n":1.5}'
    assert json.loads(s) == {"k": "</script>&\u2028", "n": 1.5}
    with pytest.raises(ValueError):
        charts.to_json({"n": math.nan})  # charts turn non-finite values into gaps before this


# ------------------------------------------------------------------------------ determinism, ids

@pytest.mark.parametrize("name", ALL_CHARTS)
def test_same_data_same_string(name):
    assert ALL_CHARTS[name]() == ALL_CHARTS[name]()


def test_ids_derive_from_the_content_or_are_given():
    a, b = curves_chart(history(3)), curves_chart(history(4))
    assert parse(a)[0] != parse(b)[0]
    assert parse(curves_chart(history(3), chart_id="run-curves"))[0] == "run-curves"
    for bad in ['x" onload="alert(1)', "1abc", "", "a b"]:
        with pytest.raises(ValueError, match="chart id"):
            curves_chart(history(3), chart_id=bad)


# --------------------------------------------------------------------------------- plotly.js

def test_plotly_script_inlines_plotly_and_loads_nothing():
    s = plotly_script()
    assert s.startswith("<script>") and s.endswith("</script>")
    assert s.lower().count("</script") == 1 and "<!--" not in s
    assert get_plotlyjs() in s  # the installed bundle, as is
    head = s[:200].lower()
    assert "src=" not in head and "<link" not in s.lower() and "<script src" not in s.lower()
    assert "mathjax" not in head and "cdn" not in head
    assert plotly_script() is s  # read once per process


# ------------------------------------------------------------------------------------ browser

def _artifacts(tmp_path: Path) -> Path:
    d = Path(os.environ["CNNLAB_ARTIFACTS"]) if os.environ.get("CNNLAB_ARTIFACTS") else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    return d


def _check_page(browser, url: str, width: int, shots: Path) -> None:
    """One viewport width: every chart drawn, nothing logged, loaded or popped up, no sideways
    scroll, panels in columns as wide as the page allows, user strings shown literally."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems, requests, dialogs = [], [], []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.wait_for_selector(".main-svg")
    n = len(ALL_CHARTS) + 2
    assert page.locator(".cnnlab-chart .main-svg").count() >= n
    assert page.evaluate("document.querySelectorAll('.cnnlab-chart[data-drawn]').length") == n
    assert problems == [] and dialogs == [] and requests == [url]
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # no sideways scroll
    columns = page.evaluate("Array.from(document.querySelectorAll('.cnnlab-chart')).map(e => e.layout.grid.columns)")
    assert columns == ([3, 1, 3, 3, 3, 3] if width > charts.NARROW_PX else [1] * n)
    # User strings show literally in legends and hover boxes: no markup took effect.
    legend = page.locator(".legendtext").all_text_contents()
    limit = charts.LEGEND_LIMIT
    assert all((s if len(s) <= limit else s[:limit - 1] + "…") in legend for s in EVIL)
    injected = ".cnnlab-chart img, .cnnlab-chart b, .cnnlab-chart script"
    assert page.evaluate(f"document.querySelectorAll('{injected}').length") == 0
    evil_compare = page.locator(".cnnlab-chart").nth(len(ALL_CHARTS))
    evil_compare.locator(".scatterlayer .trace .points path").first.hover(force=True)
    page.wait_for_selector(".hoverlayer .hovertext")
    hover = "".join(page.locator(".hoverlayer .hovertext").all_text_contents())
    assert any(s in hover for s in EVIL) and "epoch 1" in hover
    page.screenshot(path=str(shots / f"charts_{width}.png"), full_page=True)
    page.close()


@pytest.mark.slow  # a headless browser
def test_charts_draw_offline_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (a dev extra) is not installed")
    evil = evil_charts()
    body = "".join([*(f() for f in ALL_CHARTS.values()), evil["compare"], evil["params"]])
    page_path = tmp_path / "charts.html"
    page_path.write_text("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
                         "content='width=device-width, initial-scale=1'><title>charts</title></head><body>"
                         f"{body}{plotly_script()}</body></html>", encoding="utf-8")
    url = page_path.as_uri()
    shots = _artifacts(tmp_path)
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        except sync_api.Error as e:  # no system Chromium, or it cannot start here
            pytest.skip(f"no headless Chromium: {str(e).splitlines()[0]}")
        try:
            for width in (1280, 390):
                _check_page(browser, url, width, shots)
            # Crossing the phone width re-lays the panels out in one column and back.
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.wait_for_selector(".main-svg")
            first = "document.querySelector('.cnnlab-chart').layout.grid.columns"
            assert page.evaluate(first) == 3
            page.set_viewport_size({"width": 390, "height": 900})
            page.wait_for_function(f"{first} === 1")
            page.set_viewport_size({"width": 1280, "height": 900})
            page.wait_for_function(f"{first} === 3")
        finally:
            browser.close()
