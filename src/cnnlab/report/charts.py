"""Interactive charts for the HTML pages: plotly.js figures a reader can hover, zoom and toggle.

The pages keep their static PNGs (``figures/``, papers, a page opened without scripts); these
charts go where a person wants the exact value under the cursor: a run's curves, a sweep's
objective per trial and against each parameter, and the runs of a comparison.

A page holds ``plotly_script()`` once (plotly.js inlined from the installed ``plotly`` package,
about 4.8 MB, so the page works offline and fetches nothing) and any number of fragments from the
``*_chart`` functions. A fragment is a ``<div>`` and a small inline ``<script>`` drawing into it;
it never holds plotly.js, and draws at once when ``plotly_script()`` came before it on the page,
else when the document has loaded. Each chart fills its container's width (no fixed pixel width)
and, in a container narrower than ``NARROW_PX`` (a phone), stacks its panels in one column.

Escaping, by construction rather than by care at each call site: every string that came from a
user (run, metric and parameter names, parameter values) goes through ``text``: as entities for
plotly's text renderer, which reads a few HTML tags such as ``<b>``, ``<br>`` and ``<a href>`` in
every label, legend entry and hover box, so they show literally, with ``%`` escaped too, so a name
cannot add a ``%{...}`` placeholder to a hover template. The figure's JSON inside the inline script
has ``<``, ``>`` and ``&`` as ``\\u`` escapes: no string can close the script element.

Output is deterministic: the same data gives the same string (ids derive from the content).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from ._style import PALETTE, fmt_param

TRAIN, VAL, BEST, STOP, LR = PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[7], PALETTE[4]  # as in plots.curves_figure

NARROW_PX = 600  # container width (px) below which panels stack in one column: a phone's page
PANEL_HEIGHT = 300  # px per row of panels side by side
NARROW_PANEL_HEIGHT = 260  # px per panel when stacked
MAX_COLUMNS = 3  # panels side by side at most (a 1,120 px page: ~340 px each)
LEGEND_LIMIT = 40  # characters of a name in a legend; the hover box shows the whole name
MARKERS_UP_TO = 30  # points per line drawn with markers, as plots.curves_figure
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'  # the pages' font

DIRECTIONS = {"maximize": max, "minimize": min}  # a sweep's direction -> the better of two values

# plotly.js config: fill the container, and a mode bar that offers nothing that goes online (no
# plotly logo link, no "edit in Chart Studio", no send-to-cloud) and no pop-up tips.
CONFIG: dict[str, Any] = {
    "responsive": True, "displaylogo": False, "showLink": False, "showSendToCloud": False,
    "showEditInChartStudio": False, "showTips": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"],
}

_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,79}\Z")  # an id safe as an HTML attribute and a JS string

# Runs in the fragment's script, with ``id`` and ``spec`` ({data, layout, config, narrow, wide})
# defined before it. Draws once; re-lays out when the container crosses NARROW_PX.
_DRAW_JS = """\
function isNarrow(el) { return (el.clientWidth || window.innerWidth) < spec.below; }
function layoutFor(narrow) { return Object.assign({}, spec.layout, narrow ? spec.narrow : spec.wide); }
function draw() {
  var el = document.getElementById(id);
  if (!el || !window.Plotly || el.getAttribute("data-drawn")) return;
  el.setAttribute("data-drawn", "1");
  var narrow = isNarrow(el);
  Plotly.newPlot(el, spec.data, layoutFor(narrow), spec.config);
  window.addEventListener("resize", function () {
    if (isNarrow(el) === narrow) return;
    narrow = !narrow;
    Plotly.react(el, spec.data, layoutFor(narrow), spec.config);
  });
}
if (window.Plotly) draw(); else document.addEventListener("DOMContentLoaded", draw);
"""


@lru_cache(maxsize=1)
def plotly_script() -> str:
    """The ``<script>`` element with plotly.js inlined, once per page before or after its charts.
    Nothing is loaded from the network: no CDN, no MathJax, no fonts (the charts use the page's)."""
    # Imported here, not at module level: plotly's import and the 4.8 MB read are only needed when a
    # page with charts is written (commands that import the report package for other reasons skip it).
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    # The bundle has no "</script" today; if a version ever has one in a string, "<\/" reads the same.
    js = re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)
    return f"<script>{js}</script>"


def text(value: Any, limit: int | None = None) -> str:
    """``value`` as literal plotly text, cut to ``limit`` characters: ``& < >`` as entities, which
    plotly decodes after reading its tags; ``$`` (LaTeX where MathJax is loaded) and ``%`` (a
    hovertemplate's ``%{...}``) as numeric entities too, so the text is safe in a template."""
    s = str(value)
    if limit is not None and len(s) > limit:
        s = s[: max(1, limit - 1)] + "…"
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("$", "&#36;").replace("%", "&#37;")


def to_json(obj: Any) -> str:
    """``obj`` as JSON safe inside an HTML ``<script>``: ``< > &`` as ``\\u003c \\u003e \\u0026`` (and,
    by ``ensure_ascii``, U+2028/U+2029, line ends to older JavaScript), keys in insertion order."""
    s = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------------------------------- charts

def curves_chart(history: Sequence[Mapping[str, Any]], best_epoch: int | None = None,
                 stop_epoch: int | None = None, chart_id: str | None = None) -> str:
    """A run's curves from history.jsonl records (``epoch``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc``, ``lr``; a missing or null key leaves a gap, a run without a
    validation split has train lines only): loss, accuracy and, when recorded, the learning rate
    (log axis) per epoch, as ``plots.curves_figure`` draws them; the best epoch (dashed) and an
    early stop (dotted) marked. Hovering a point shows its epoch and value."""
    panels, data = [], []
    for what, title, fmt in (("loss", "loss", ".4g"), ("acc", "accuracy", ".4f")):
        axis = len(panels)
        for split, color in (("train", TRAIN), ("val", VAL)):
            x, y = _series(history, f"{split}_{what}")
            if x:
                data.append(_line(x, y, axis, name=split, color=color, group=split,
                                  legend=not any(t.get("legendgroup") == split for t in data),
                                  hover=f"epoch %{{x}}<br>{split} {title} %{{y:{fmt}}}<extra></extra>"))
        panels.append(_panel("epoch", title, integer_x=_epochs(history)))
    x, y = _series(history, "lr")
    if x:
        # A log axis where the schedule spans a decade or more (warmup, decay); a flat or nearly flat
        # rate on a log axis gets a cluttered scale of minor ticks around one value.
        logy = min(y) > 0 and max(y) / min(y) >= 10
        data.append(_line(x, y, len(panels), name="learning rate", color=LR, legend=False,
                          hover="epoch %{x}<br>learning rate %{y:.3g}<extra></extra>"))
        panel = _panel("epoch", "learning rate (epoch end)", integer_x=_epochs(history),
                       y_type="log" if logy else "linear", log_y=y if logy else ())
        if not logy:  # 3e-3, not "0.003" rounded to "0" by a ±1 range around a constant rate
            panel["yaxis"].update(exponentformat="e", rangemode="tozero")
        panels.append(panel)
    shapes, notes = [], []
    for epoch, label, color, dash, side, why in (
            (best_epoch, "best", BEST, "dash", "right", "best epoch {}: best.pt holds its weights"),
            (stop_epoch, "stop", STOP, "dot", "left", "early stop after epoch {}")):
        if not epoch:
            continue
        for axis in range(2):  # loss and accuracy, as the static figure
            xr, yr = _ref("x", axis), _ref("y", axis) + " domain"
            shapes.append({"type": "line", "xref": xr, "yref": yr, "x0": epoch, "x1": epoch, "y0": 0, "y1": 1,
                           "line": {"color": color, "width": 1, "dash": dash}})
            notes.append({"xref": xr, "yref": yr, "x": epoch, "y": 1, "text": label, "showarrow": False,
                          "xanchor": side, "yanchor": "bottom", "font": {"size": 10, "color": color},
                          "hovertext": why.format(int(epoch))})
    return _fragment("curves", data, panels, chart_id, shapes=shapes, annotations=notes)


def objective_chart(trials: Sequence[Mapping[str, Any]], metric: str, direction: str,
                    params: Sequence[str] | None = None, chart_id: str | None = None) -> str:
    """A sweep's objective per completed trial and the best so far (a step line), from the rows
    of results.csv as ``report.sweep.read_sweep`` gives them (``trial``, ``state``, [``stage``],
    the parameters, ``metric``). Trials are in the sweep report's order (stage, trial) and x is
    each trial's number exactly as its table shows it (from 0, with gaps where a trial failed);
    where numbers repeat (across a staged sweep's stages) x counts the completed trials from 0, as
    ``plots.sweep_history_figure``. Hovering a trial shows its number, objective and ``params``
    (default: results.csv's parameter columns, those between ``state`` and ``metric``)."""
    better = _direction(direction)
    done = _completed(trials, metric)
    keys = list(params) if params is not None else _param_keys(trials, metric)
    numbers = [r.get("trial") for r in done]
    whole = all(isinstance(n, int) and not isinstance(n, bool) for n in numbers)
    numbered = whole and len(set(numbers)) == len(numbers)
    x = numbers if numbered else list(range(len(done)))
    y = [float(r[metric]) for r in done]
    best, best_at, best_hover = [], [], []
    for i, v in enumerate(y):
        b = v if not best else better(best[-1], v)
        best_at.append(i if not best or b != best[-1] else best_at[-1])
        best.append(b)
        lead = done[best_at[-1]]
        best_hover.append(f"best so far: {text(metric)} {b:.4g}<br>from trial {text(lead.get('trial'))}")
    data = [
        {"type": "scatter", "mode": "markers", "name": "trial", "x": x, "y": y, "xaxis": "x", "yaxis": "y",
         "marker": {"color": PALETTE[0], "size": 8, "opacity": 0.85},
         "hovertext": [_trial_hover(r, keys, metric) for r in done], "hovertemplate": "%{hovertext}<extra></extra>"},
        {"type": "scatter", "mode": "lines", "name": "best so far", "x": x, "y": best, "xaxis": "x", "yaxis": "y",
         "line": {"color": PALETTE[1], "shape": "hv", "width": 2},
         "hovertext": best_hover, "hovertemplate": "%{hovertext}<extra></extra>"},
    ]
    title = "trial (as numbered in the table)" if numbered else "completed trial (from 0)"
    return _fragment("objective", data, [_panel(title, text(metric), integer_x=x)], chart_id)


def params_chart(trials: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str,
                 log: Iterable[str] = (), order: Mapping[str, Sequence[str]] | None = None,
                 chart_id: str | None = None) -> str:
    """The objective against each searched parameter, one panel per key of ``params``, over the
    completed trials of ``trials`` (results.csv rows). Numbers go on a numeric axis, log for the
    keys in ``log`` (the sweep file's log ranges, when known) or when they span two decades or more;
    anything else on a category axis: ``order[key]`` (the sweep file's listed values as strings)
    first, then values in order of first appearance, as ``plots.sweep_params_figure``. Hovering a
    point shows its trial, objective and parameters. No parameters: "" (nothing to draw)."""
    keys = list(params)
    if not keys:
        return ""
    done = _completed(trials, metric)
    log, order = set(log), dict(order or {})
    hover = [_trial_hover(r, keys, metric) for r in done]
    data, panels = [], []
    for axis, key in enumerate(keys):
        pts = [(r.get(key), float(r[metric]), h) for r, h in zip(done, hover) if r.get(key) not in (None, "")]
        numeric = key not in order and all(_number(v) is not None for v, _, _ in pts)
        if numeric:
            xs = [float(v) for v, _, _ in pts]
            logx = bool(xs) and min(xs) > 0 and (key in log or max(xs) / min(xs) >= 100)
            panel = _panel(text(key), text(metric), x_type="log" if logx else "linear", log_x=xs if logx else ())
        else:
            labels = list(dict.fromkeys([*(str(v) for v in order.get(key, [])), *(fmt_param(v) for v, _, _ in pts)]))
            xs = [text(fmt_param(v)) for v, _, _ in pts]
            panel = _panel(text(key), text(metric), x_type="category", categories=[text(c) for c in labels])
        data.append({"type": "scatter", "mode": "markers", "name": text(key, LEGEND_LIMIT), "x": xs,
                     "y": [v for _, v, _ in pts], "xaxis": _ref("x", axis), "yaxis": _ref("y", axis),
                     "marker": {"color": PALETTE[0], "size": 8, "opacity": 0.8}, "showlegend": False,
                     "hovertext": [h for _, _, h in pts], "hovertemplate": "%{hovertext}<extra></extra>"})
        panels.append(panel)
    return _fragment("params", data, panels, chart_id)


def compare_curves_chart(runs: Mapping[str, Sequence[Mapping[str, Any]]], chart_id: str | None = None) -> str:
    """Several runs' curves overlaid, as ``plots.compare_curves_figure``: train loss, val loss and
    val accuracy per epoch (a run without a validation split shows its training values there), one
    color per run (dashed after seven runs), one legend entry per run toggling all its lines."""
    panels, data = [], []
    for axis, (key, title) in enumerate((("train_loss", "train loss"), ("val_loss", "val loss"),
                                         ("val_acc", "val accuracy"))):
        epochs: list[int] = []
        for i, (run, history) in enumerate(runs.items()):
            x, y = _series(history, key)
            shown = title
            if not x and key.startswith("val_"):  # a run without a validation split
                x, y = _series(history, key.replace("val_", "train_"))
                shown = title.replace("val", "train") + " (no val split)"
            if not x:
                continue
            epochs += x
            group = f"run{i}"
            data.append(_line(x, y, axis, name=text(run, LEGEND_LIMIT), color=PALETTE[i % 7], group=group,
                              dash="solid" if i < 7 else "dash",
                              legend=not any(t.get("legendgroup") == group for t in data),
                              hover=f"{text(run)}<br>epoch %{{x}}<br>{shown} %{{y:.4g}}<extra></extra>"))
        panels.append(_panel("epoch", title, integer_x=epochs))
    return _fragment("compare", data, panels, chart_id)


# --------------------------------------------------------------------------------------- helpers

def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None (missing, not a number, a bool, NaN or infinite)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one history.jsonl key, skipping epochs where it is missing, null or not
    finite (a diverged loss), as plots._series."""
    pts = [(int(h["epoch"]), _number(h.get(key))) for h in history if "epoch" in h]
    pts = [(e, v) for e, v in pts if v is not None]
    return [e for e, _ in pts], [v for _, v in pts]


def _epochs(history: Sequence[Mapping[str, Any]]) -> list[int]:
    return [int(h["epoch"]) for h in history if "epoch" in h]


def _direction(direction: str) -> Any:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    return DIRECTIONS[direction]


def _completed(trials: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """The completed trials with a finite objective, in the sweep report's order (stage, trial)."""
    done = [r for r in trials if r.get("state", "complete") == "complete" and _number(r.get(metric)) is not None]
    return sorted(done, key=lambda r: (str(r.get("stage") or ""), _number(r.get("trial")) or 0))


def _param_keys(trials: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """results.csv's parameter columns: [stage], trial, state, <parameters>, <metric>, ..."""
    cols = list(trials[0]) if trials else []
    if "state" not in cols or metric not in cols or cols.index(metric) < cols.index("state"):
        return []
    return cols[cols.index("state") + 1: cols.index(metric)]


def _trial_hover(row: Mapping[str, Any], keys: Sequence[str], metric: str) -> str:
    stage = f" (stage {text(row['stage'])})" if row.get("stage") else ""
    lines = [f"trial {text(row.get('trial'))}{stage}", f"{text(metric)} {float(row[metric]):.4g}"]
    lines += [f"{text(k)} = {text(fmt_param(row.get(k)))}" for k in keys]
    return "<br>".join(lines)


def _ref(axis: str, i: int) -> str:
    """Plotly's name of panel i's axis in a trace or a shape: x, x2, x3, ..."""
    return axis if i == 0 else f"{axis}{i + 1}"


def _line(x: list[int], y: list[float], axis: int, *, name: str, color: str, hover: str, legend: bool,
          group: str | None = None, dash: str = "solid") -> dict[str, Any]:
    trace: dict[str, Any] = {
        "type": "scatter", "mode": "lines+markers" if len(x) <= MARKERS_UP_TO else "lines", "name": name,
        "x": x, "y": y, "xaxis": _ref("x", axis), "yaxis": _ref("y", axis),
        "line": {"color": color, "width": 2, "dash": dash}, "marker": {"color": color, "size": 5},
        "showlegend": legend, "hovertemplate": hover,
    }
    if group is not None:
        trace["legendgroup"] = group
    return trace


def _panel(x_title: str, y_title: str, *, x_type: str = "linear", y_type: str = "linear",
           integer_x: Sequence[Any] = (), categories: list[str] | None = None,
           log_x: Sequence[float] = (), log_y: Sequence[float] = ()) -> dict[str, Any]:
    """One panel's x and y axis (titles already ``text``-escaped where they came from users);
    ``integer_x``: the whole numbers on x (epochs, trials); ``log_x``/``log_y``: the values on a
    log axis (all > 0), for its ticks."""
    xaxis: dict[str, Any] = {"title": {"text": x_title}, "type": x_type, "automargin": True}
    yaxis: dict[str, Any] = {"title": {"text": y_title}, "type": y_type, "automargin": True}
    if categories is not None:
        xaxis.update(categoryorder="array", categoryarray=categories)
    ints = [v for v in integer_x if _number(v) is not None]
    if ints:  # epochs and trial numbers: ticks on whole numbers only, at most ~8 of them
        xaxis.update(tickmode="linear", tick0=0, dtick=_whole_step(max(ints) - min(ints)))
    for axis, values in ((xaxis, log_x), (yaxis, log_y)):
        if axis["type"] == "log":  # 1e-4, not plotly's SI "100μ"; one tick per decade across two or more
            axis["exponentformat"] = "e"
            if values and max(values) / min(values) >= 100:
                axis["dtick"] = 1
    return {"xaxis": xaxis, "yaxis": yaxis}


def _whole_step(span: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that cuts ``span`` into at most 8 steps."""
    step = 1
    while span / step > 8:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2  # 1 -> 2 -> 5 -> 10 -> 20 -> 50
    return step


def _fragment(kind: str, data: list[dict[str, Any]], panels: list[dict[str, Any]], chart_id: str | None,
              shapes: list[dict[str, Any]] | None = None, annotations: list[dict[str, Any]] | None = None) -> str:
    """The ``<div>`` and its drawing ``<script>`` for traces on a grid of panels: up to MAX_COLUMNS
    side by side, one column below NARROW_PX."""
    n = max(1, len(panels))
    columns = min(n, MAX_COLUMNS)
    rows = -(-n // columns)
    legend = any(t.get("showlegend", True) for t in data)
    top = 56 if legend else 24  # room for the legend above the panels
    layout: dict[str, Any] = {
        "autosize": True, "font": {"family": FONT, "size": 12}, "paper_bgcolor": "white", "plot_bgcolor": "white",
        "margin": {"l": 8, "r": 8, "t": top, "b": 8}, "hovermode": "closest", "hoverlabel": {"namelength": -1},
        "showlegend": legend,
        "legend": {"orientation": "h", "x": 0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"},
    }
    for i, panel in enumerate(panels):
        suffix = "" if i == 0 else str(i + 1)
        layout["xaxis" + suffix] = {**panel["xaxis"], "gridcolor": "#e6e6e6", "zeroline": False}
        layout["yaxis" + suffix] = {**panel["yaxis"], "gridcolor": "#e6e6e6", "zeroline": False}
    if shapes:
        layout["shapes"] = shapes
    if annotations:
        layout["annotations"] = annotations
    wide = {"grid": {"rows": rows, "columns": columns, "pattern": "independent", "xgap": 0.25, "ygap": 0.3},
            "height": rows * PANEL_HEIGHT + top}
    narrow = {"grid": {"rows": n, "columns": 1, "pattern": "independent", "ygap": 0.3},
              "height": n * NARROW_PANEL_HEIGHT + top}
    spec = {"data": data, "layout": layout, "config": CONFIG, "below": NARROW_PX, "wide": wide, "narrow": narrow}
    body = to_json(spec)
    if chart_id is None:
        chart_id = f"chart-{kind}-{hashlib.sha256(body.encode()).hexdigest()[:12]}"
    elif not _ID.match(chart_id):
        raise ValueError(f"chart id {chart_id!r} is not a letter followed by up to 79 letters, digits, '-' or '_'")
    return (f'<div class="cnnlab-chart" id="{chart_id}" style="width:100%;max-width:100%"></div>\n'
            f'<script>\n(function () {{\nvar id = "{chart_id}";\nvar spec = {body};\n{_DRAW_JS}}})();\n</script>\n')
