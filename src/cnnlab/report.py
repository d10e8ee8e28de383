"""See a run: one self-contained ``report.html`` per run directory, sweep directory and runs folder.

``write_report(run_dir)`` reads what a run directory holds (config.toml, env.json, run.json,
history.jsonl, metrics.json, predictions/, stats.jsonl, diagnostics.json, the best checkpoint and,
for the example images, the run's data set) and writes ``report.html`` beside it, with every
figure inlined as a base64 PNG and also saved as ``figures/<key>.png``. The page needs no network,
no script and no font download: CSS is inline, images are ``data:`` URLs, links are relative.

Design:

* Sections are entries of the ``SECTIONS`` registry, drawn in registration order; each is
  ``fn(report: RunReport) -> Markup | None`` (None: nothing to show). A section that raises is
  replaced by a visible note, so a failed or still-running run renders what exists.
* HTML is built from ``Markup`` (trusted fragments made here) and plain strings, which are always
  escaped by ``esc``/``tag``: run names, class names, file names, config values and diagnostics
  come from users, and a class named ``<script>alert(1)</script>`` must show as text.
* Metrics are read from metrics.json (computed once by ``cnnlab.metrics``), never recomputed.
* Figures come from ``cnnlab.plots`` (one colorblind-safe style); the inside-the-model figures
  from ``cnnlab.explain``, imported lazily: any error there leaves the figure out with a note.
* Findings of ``cnnlab diagnose`` fill the diagnostics section; ``FINDING_FIGURES`` is the hook
  through which a check can add a figure to its finding.

``write_sweep_report(sweep_dir)`` ranks a sweep's trials (results.csv) and draws its figures;
``write_runs_index(root)`` links every report under a folder; comparisons are in
``cnnlab.compare``. The commands: ``cnnlab report DIR``, ``cnnlab runs --html`` (docs/report.md).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import os
import re
import sys
import warnings
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import quote

import numpy as np

from . import rundir as rd
from .config import flatten
from .errors import UserError
from .registry import Registry

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .data import DataSplits

REPORT = "report.html"
INDEX = "index.html"
FIGURES = "figures"
SWEEP_JSON = "sweep.json"  # the marker file of a sweep directory (cnnlab.sweep.SWEEP_JSON)

# Per-class tables longer than this fold into a <details> element (CIFAR-100: 100 rows per split),
# and are cut at PER_CLASS_MAX_ROWS rows (the figures and metrics.json hold every class).
PER_CLASS_OPEN_ROWS = 30
PER_CLASS_MAX_ROWS = 200
# Splits whose confusion matrices and ROC curves are drawn: the test split, the one a run is judged
# by. Train and val get their tables: each split's two figures cost ~0.5 s of CPU, and the report
# is written at the end of every run (sweeps included).
FIGURE_SPLITS = ("test",)


# =========================================================================================== HTML
class Markup(str):
    """A trusted HTML fragment built by this module. Every other string is escaped on output."""


def esc(x: Any) -> Markup:
    """``x`` as HTML text: escaped (``< > & " '``) unless it already is ``Markup``."""
    return x if isinstance(x, Markup) else Markup(html.escape(str(x), quote=True))


def join(parts: Iterable[Any], sep: str = "") -> Markup:
    return Markup(sep.join(esc(p) for p in parts))


def tag(name: str, *children: Any, **attrs: Any) -> Markup:
    """``<name attrs>children</name>``; attribute values and children are escaped (children that
    are Markup are kept). ``class_`` gives ``class``; an attribute set to None is left out."""
    at = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return Markup(f"<{name}{at}>{join(children)}</{name}>")


def note(text: Any) -> Markup:
    """A visible note: what is left out of the page and why."""
    return tag("p", text, class_="note")


def table(head: list[Any], rows: list[list[Any]], caption: str | None = None, cls: str | None = None) -> Markup:
    """A table inside a horizontally scrollable box (wide tables stay usable on a phone)."""
    thead = tag("thead", tag("tr", *[tag("th", h) for h in head]))
    tbody = tag("tbody", *[tag("tr", *[tag("td", c) for c in r]) for r in rows])
    return tag("div", tag("table", *([tag("caption", caption)] if caption else []), thead, tbody, class_=cls),
               class_="scroll")


def kv_table(items: list[tuple[Any, Any]]) -> Markup:
    """A two-column key/value table."""
    return tag("div", tag("table", tag("tbody", *[tag("tr", tag("th", k), tag("td", v)) for k, v in items]),
                          class_="kv"), class_="scroll")


def href(target: Path, base: Path) -> str:
    """A relative URL from the folder ``base`` to ``target`` (percent-encoded; escaped by ``tag``)."""
    return quote(Path(os.path.relpath(target, base)).as_posix())


def fmt(v: Any, spec: str = ".4f") -> str:
    """A number for a table: ``-`` for None/NaN, ``spec`` for floats, thousands separators for ints."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


CSS = """
:root { color-scheme: light; -webkit-text-size-adjust: 100%; text-size-adjust: 100%; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1120px; margin: 0 auto; padding: 1rem 1.25rem 3rem; line-height: 1.45; color: #1d1d1d; }
h1 { font-size: 1.5rem; margin: .2rem 0 .3rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin-top: 2.2rem; border-bottom: 2px solid #0072B2; padding-bottom: .2rem; }
h3 { font-size: 1.02rem; margin: 1.4rem 0 .4rem; }
.sub { color: #555; margin: 0 0 .8rem; overflow-wrap: anywhere; }
nav { position: sticky; top: 0; background: #fff; padding: .4rem 0; border-bottom: 1px solid #ddd; z-index: 1;
      display: flex; flex-wrap: wrap; gap: .2rem .9rem; }
nav a { white-space: nowrap; color: #0072B2; text-decoration: none; }
img { max-width: 100%; height: auto; display: block; }
figure { margin: .8rem 0 1.2rem; }
figcaption { font-size: .85rem; color: #444; margin-top: .3rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; margin: .4rem 0 .8rem; }
table { border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; }
th, td { padding: .22rem .55rem; border-bottom: 1px solid #e2e2e2; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #999; background: #f7f7f7; }
table.kv th { text-align: left; font-weight: 600; background: none; white-space: nowrap; }
table.kv td { text-align: left; overflow-wrap: anywhere; }
tr.avg td { font-weight: 600; background: #f7f7f7; }
caption { text-align: left; font-weight: 600; padding: .2rem 0; }
pre { background: #f6f6f6; padding: .6rem .8rem; overflow-x: auto; font-size: .82rem; }
details > summary { cursor: pointer; color: #0072B2; margin: .3rem 0; }
.note { color: #6b4500; background: #fff4dc; border-left: 4px solid #E69F00; padding: .35rem .7rem; }
.finding { border-left: 4px solid #56B4E9; padding: .2rem .8rem; margin: .8rem 0; background: #f8fbfd; }
.finding.error { border-color: #D55E00; background: #fdf5f0; }
.finding.warning { border-color: #E69F00; background: #fffaf0; }
.sev { font-weight: 700; text-transform: uppercase; font-size: .78rem; letter-spacing: .04em; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: .8rem; }
a { color: #0072B2; }
p, li, code, figcaption { overflow-wrap: anywhere; }  /* long paths and commands wrap on a phone */
@media (max-width: 640px) {
  body { padding: .6rem .6rem 2rem; }
  h1 { font-size: 1.25rem; }
  table { font-size: .78rem; }
  th, td { padding: .18rem .35rem; }
}
""".strip()


def _safe_key(key: str) -> str:
    """A figure key as a file name: letters, digits, ``._-``; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip("._") or "figure"


class Page:
    """One HTML page under construction: its figures go to ``<out_dir>/figures/<key>.png`` and
    inline into the page as base64 PNG."""

    def __init__(self, title: str, out_dir: Path, subtitle: Any = ""):
        self.title, self.subtitle = title, subtitle
        self.out_dir = Path(out_dir)
        self.fig_dir = self.out_dir / FIGURES
        self.figure_keys: list[str] = []

    def figure(self, key: str, fig: "Figure", caption: Any = "", alt: str | None = None) -> Markup:
        """Save ``fig`` as figures/<key>.png (atomically) and return it as an inline <figure>.
        A key used twice on one page gets a numbered suffix."""
        from . import plots

        base = _safe_key(key)
        name, i = base, 2
        while name in self.figure_keys:
            name, i = f"{base}-{i}", i + 1
        self.figure_keys.append(name)
        data = plots.save_png(fig, self.fig_dir / f"{name}.png")
        fig.clear()  # a Figure not made by pyplot is freed when unreferenced; clear() drops its artists now
        return self.png(data, caption, alt or (str(caption) or name))

    @staticmethod
    def png(data: bytes, caption: Any = "", alt: str = "") -> Markup:
        """PNG bytes as an inline <figure> with an optional caption."""
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        cap = [tag("figcaption", caption)] if caption else []
        return tag("figure", Markup(f'<img src="{esc(src)}" alt="{esc(alt)}">'), *cap)

    def render(self, sections: list[tuple[str, str, Markup]], head_extra: Markup = Markup("")) -> str:
        """The whole page: header, a navigation bar and the (id, title, body) sections."""
        from . import __version__

        nav = tag("nav", *[tag("a", title, href=f"#{sid}") for sid, title, _ in sections]) if len(sections) > 1 else ""
        body = join(tag("section", tag("h2", title), content, id=sid) for sid, title, content in sections)
        made = datetime.now().isoformat(timespec="seconds")
        return ("<!DOCTYPE html>\n"
                + '<html lang="en"><head><meta charset="utf-8">'
                + '<meta name="viewport" content="width=device-width, initial-scale=1">'
                # A data: icon: the browser asks for no /favicon.ico (no request, no console error).
                + '<link rel="icon" href="data:,">'
                + f"<title>{esc(self.title)}</title><style>{CSS}</style>{head_extra}</head><body>"
                + tag("header", tag("h1", self.title), tag("p", self.subtitle, class_="sub") if self.subtitle else "")
                + nav + body
                + tag("footer", tag("p", f"written by cnnlab {__version__} at {made}", class_="sub"))
                + "</body></html>\n")


# ===================================================================================== run report
SECTIONS: Registry[Callable[["RunReport"], "Markup | None"]] = Registry("report section")
# Finding id (diagnostics.json) -> fn(report, finding dict) -> Figure | None: a figure drawn under
# that finding in the diagnostics section. The hook through which a check illustrates itself.
FINDING_FIGURES: Registry[Callable[["RunReport", dict], "Figure | None"]] = Registry("finding figure")


class _Missing:
    """A lazily loaded value that failed: the exception, kept so the load is tried once."""

    def __init__(self, error: BaseException):
        self.error = error


class RunReport:
    """What the report's sections read: one run directory's files, loaded once; the data, the
    model and the predictions on first use. ``page`` takes the figures."""

    def __init__(self, run_dir: Path, page: Page, data: "DataSplits | None" = None):
        from .diagnose import DIAGNOSTICS
        from .stats import read_stats

        self.dir, self.page = Path(run_dir), page
        self.status: dict[str, Any] = rd.read_status(self.dir)
        self.env: dict[str, Any] = self._json("env.json") or {}
        self.metrics: dict[str, Any] = self._json(rd.METRICS) or {}
        self.diagnostics: dict[str, Any] | None = self._json(DIAGNOSTICS)
        self.history = self._lines(lambda: rd.read_history(self.dir))
        self.stats = self._lines(lambda: read_stats(self.dir))
        self.config_text = (self.dir / rd.CONFIG).read_text(encoding="utf-8", errors="replace")
        self.cfg = None
        self.cfg_error: str | None = None
        try:
            from .config import load_config

            self.cfg = load_config(self.dir / rd.CONFIG)
        except Exception as e:  # an older or hand-edited config: the page still shows the files
            self.cfg_error = str(e)
        self._cache: dict[str, Any] = {}
        if data is not None:
            self._cache["data"] = data

    # ------------------------------------------------------------------------- file reading
    def _json(self, name: str) -> Any:
        p = self.dir / name
        try:
            return rd.read_json(p) if p.exists() else None
        except (OSError, json.JSONDecodeError):
            return None

    @staticmethod
    def _lines(read: Callable[[], list]) -> list:
        try:
            return read()
        except (OSError, json.JSONDecodeError):  # a run killed mid-write of an older, non-atomic file
            return []

    def _lazy(self, key: str, load: Callable[[], Any]) -> Any:
        """``load()`` once; its exception is kept and raised again on every later call."""
        if key not in self._cache:
            try:
                self._cache[key] = load()
            except Exception as e:
                self._cache[key] = _Missing(e)
        v = self._cache[key]
        if isinstance(v, _Missing):
            raise v.error
        return v

    # ---------------------------------------------------------------------------- accessors
    @property
    def name(self) -> str:
        return str(self.status.get("name") or (self.cfg.name if self.cfg else self.dir.parent.name))

    @property
    def class_names(self) -> list[str]:
        for m in self.metrics.values():
            if isinstance(m, dict) and m.get("class_names"):
                return [str(c) for c in m["class_names"]]
        try:
            return [str(c) for c in self.checkpoint_meta()["class_names"]]
        except Exception:
            return []

    def predictions(self, split: str) -> dict[str, np.ndarray]:
        """``predictions/<split>.npz`` as arrays: y_true (N,), y_prob (N, K), index (N,)."""
        def load() -> dict[str, np.ndarray]:
            with np.load(self.dir / "predictions" / f"{split}.npz") as z:
                return {k: z[k] for k in z.files}
        return self._lazy(f"pred:{split}", load)

    def model(self):
        """(model in eval mode on the CPU, checkpoint dict, config) of the best checkpoint."""
        def load():
            import torch

            from .runner import load_model

            return load_model(self.dir, "best", torch.device("cpu"))
        return self._lazy("model", load)

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.model()[1]["meta"]

    def data(self) -> "DataSplits":
        """The run's data splits, loaded as the run loaded them (no download; a relative data path
        is also tried from the folder the run was started in)."""
        def load():
            from .data import load_data

            if self.cfg is None:
                raise UserError(f"config.toml does not load: {self.cfg_error}")
            d = self.cfg.data.model_copy(update={"download": False})
            cwd = self.env.get("cwd")
            upd = {}
            for key in ("path", "root"):
                v = getattr(d, key)
                if v and not Path(v).expanduser().is_absolute() and not Path(v).exists() and cwd \
                        and (Path(cwd) / v).exists():
                    upd[key] = str(Path(cwd) / v)
            return load_data(d.model_copy(update=upd), self.cfg.seed)
        return self._lazy("data", load)

    def split_images(self, split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(uint8 images (N, C, H, W) in the order of predictions/<split>.npz, the predictions).
        Raises when the loaded data's rows are not the ones the run predicted."""
        pred = self.predictions(split)
        part = getattr(self.data(), split)
        if part is None or not np.array_equal(np.asarray(part.index), pred["index"]):
            raise RuntimeError(f"the {split} images loaded now are not the ones the run predicted "
                               f"(the data set changed since the run)")
        return part.x.numpy(), pred

    def best_epoch(self) -> int | None:
        """The epoch of the best checkpoint: the first best value of the monitored metric."""
        if not self.history:
            return None
        es = self.cfg.train.early_stopping if self.cfg else None
        monitor, mode = (es.monitor, es.mode) if es else ("val_loss", "min")
        if not any(h.get(monitor) is not None for h in self.history):
            monitor = monitor.replace("val_", "train_")  # no validation split: the runner watches train_*
        pts = [(h[monitor], h["epoch"]) for h in self.history if h.get(monitor) is not None
               and math.isfinite(h[monitor])]
        if not pts:
            return None
        best = max(pts, key=lambda p: p[0]) if mode == "max" else min(pts, key=lambda p: p[0])
        return next(e for v, e in pts if v == best[0])

    def stop_epoch(self) -> int | None:
        """The last epoch when early stopping ended the run, else None."""
        reason = self.status.get("stop_reason")
        if reason and reason != "nan" and self.history:
            return int(self.history[-1]["epoch"])
        return None

    def train_seconds(self) -> float | None:
        if self.status.get("train_seconds") is not None:
            return float(self.status["train_seconds"])
        secs = [h.get("seconds") for h in self.history if h.get("seconds") is not None]
        return float(sum(secs)) if secs else None

    def images_per_s(self) -> float | None:
        v = [h["images_per_s"] for h in self.history if h.get("images_per_s")]
        return float(np.mean(v)) if v else None


def _split_sizes(run_dir: Path) -> dict[str, int]:
    p = Path(run_dir) / "splits.npz"
    if not p.exists():
        return {}
    with np.load(p) as z:
        return {k: int(z[k].shape[0]) for k in z.files}


def parameter_count(run_dir: Path, report: RunReport | None = None) -> tuple[int, int] | None:
    """(total, trainable) parameters of the run's model, built from its best checkpoint; None
    when there is no checkpoint (the run stopped before its first epoch)."""
    from .models import count_parameters

    try:
        model = (report.model() if report else _load_model_cpu(run_dir))[0]
    except Exception:
        return None
    return count_parameters(model)


def _load_model_cpu(run_dir: Path):
    import torch

    from .runner import load_model

    return load_model(run_dir, "best", torch.device("cpu"))


# ----------------------------------------------------------------------------------- sections
@SECTIONS.register("summary", summary="name, data, model, device, duration, final metrics")
def section_summary(r: RunReport) -> Markup:
    st, env, cfg = r.status, r.env, r.cfg
    status = str(st.get("status", "unknown"))
    if st.get("error"):
        status += f" ({st['error']})"
    elif st.get("stop_reason"):
        status += f" ({st['stop_reason']})"
    epochs = f"{r.history[-1]['epoch']}" if r.history else "0"
    if cfg:
        epochs += f" of {cfg.train.epochs}"
    sizes = _split_sizes(r.dir)
    names = r.class_names
    params = parameter_count(r.dir, r)
    try:
        meta = r.checkpoint_meta()
    except Exception:
        meta = {}
    device = env.get("device", "-") + (f" ({env['device_name']})" if env.get("device_name") else "")
    best = r.best_epoch()
    items: list[tuple[Any, Any]] = [
        ("run", r.name),
        ("status", status),
        ("directory", str(r.dir)),
        ("data set", (cfg.data.dataset if cfg else "-") + (f": {meta['source']}" if meta.get("source") else "")),
        ("classes", f"{len(names)}: " + ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "-"),
        ("split sizes", ", ".join(f"{k} {v:,}" for k, v in sizes.items()) or "-"),
        ("image shape", " x ".join(str(v) for v in meta["input_shape"]) + " (C x H x W)" if meta.get("input_shape") else "-"),
        ("model", (cfg.model.name if cfg else str(st.get("model", "-")))),
        ("parameters", f"{params[0]:,} ({params[1]:,} trainable)" if params else "-"),
        ("device", device),
        ("epochs run", epochs + (f"; best epoch {best}" if best else "")),
        ("training time", fmt_seconds(r.train_seconds())
         + (f", {r.images_per_s():,.0f} images/s (mean of epochs)" if r.images_per_s() else "")),
        ("started", st.get("started", env.get("started", "-"))),
        ("finished", st.get("finished", st.get("updated", "-"))),
        ("seed", cfg.seed if cfg else env.get("seed", "-")),
    ]
    out = [kv_table(items)]
    if r.cfg_error:
        out.append(note(f"config.toml does not load with this cnnlab: {r.cfg_error}"))
    if r.metrics:
        rows = []
        for split, m in r.metrics.items():
            if not isinstance(m, dict) or "accuracy" not in m:
                continue
            mac = m.get("macro", {})
            rows.append([split, fmt(m.get("n")), fmt(m["accuracy"]), fmt(m.get("loss")), fmt(mac.get("precision")),
                         fmt(mac.get("recall")), fmt(mac.get("f1")), fmt(mac.get("auc"))])
        out.append(tag("h3", "final metrics"))
        out.append(table(["split", "images", "accuracy", "loss", "macro precision", "macro recall", "macro F1",
                          "macro AUC"], rows))
    else:
        out.append(note("no metrics.json: the run has not finished its final evaluation (still running, "
                        "interrupted, or failed before it)."))
    return join(out)


@SECTIONS.register("curves", summary="loss, accuracy and learning rate per epoch")
def section_curves(r: RunReport) -> Markup:
    from .plots import curves_figure

    if not r.history:
        return note("no epoch has finished yet: history.jsonl is empty.")
    best, stop = r.best_epoch(), r.stop_epoch()
    fig = curves_figure(r.history, best, stop)
    marks = []
    if best:
        marks.append(f"the dashed line marks the best epoch ({best}, whose weights best.pt holds)")
    if stop:
        marks.append(f"the dotted line the early stop after epoch {stop}")
    caption = ("Loss and accuracy of the training split (as trained: augmented, dropout on) and the validation "
               "split per epoch; the learning rate at each epoch's end. " + "; ".join(marks) + ("." if marks else ""))
    return r.page.figure("curves", fig, caption)


def _per_class_table(m: dict[str, Any]) -> Markup:
    pc, names = m["per_class"], [str(c) for c in m["class_names"]]
    k = len(names)
    cols = ("precision", "recall", "specificity", "f1", "auc")
    head = ["class", "precision", "recall (sensitivity)", "specificity", "F1", "AUC", "support"]
    rows = [[names[i], *[fmt(pc[c][i]) for c in cols], fmt(pc["support"][i])] for i in range(min(k, PER_CLASS_MAX_ROWS))]
    total = int(sum(pc["support"]))
    avg = [[Markup(f"<b>{label} avg</b>"), *[fmt(m[label].get(c)) for c in cols], fmt(total)]
           for label in ("macro", "weighted")]
    t = table(head, rows + avg, cls="per-class")
    extra = [note(f"the first {PER_CLASS_MAX_ROWS} of {k} classes are listed; metrics.json holds all.")] \
        if k > PER_CLASS_MAX_ROWS else []
    if k > PER_CLASS_OPEN_ROWS:
        return tag("details", tag("summary", f"per-class metrics of {k} classes"), t, *extra)
    return join([t, *extra])


@SECTIONS.register("metrics", summary="per-class metrics, confusion matrices and ROC curves per split")
def section_metrics(r: RunReport) -> Markup:
    from .plots import confusion_figure, roc_figure

    if not r.metrics:
        return note("no metrics.json yet: the run has not finished its final evaluation.")
    out: list[Any] = [tag("p", "Per class from the confusion matrix (rows: true class): precision = TP/(TP+FP), "
                               "recall (sensitivity) = TP/(TP+FN), specificity = TN/(TN+FP), F1 = 2TP/(2TP+FP+FN), "
                               "one-vs-rest ROC AUC from the predicted probabilities; support = true images of the "
                               "class. Macro averages weight every class equally, weighted averages by support.")]
    for split, m in r.metrics.items():
        if not isinstance(m, dict) or "per_class" not in m:
            continue
        out.append(tag("h3", f"{split}: accuracy {fmt(m['accuracy'])}, {fmt(m.get('n'))} images"))
        out.append(_per_class_table(m))
        if split not in FIGURE_SPLITS:
            continue
        figs = [r.page.figure(f"confusion_{split}", confusion_figure(m["confusion_matrix"], m["class_names"]),
                              f"{split} confusion matrix: counts, and each row divided by the class's support "
                              f"(the diagonal is the recall of each class).")]
        try:
            pred = r.predictions(split)
            figs.append(r.page.figure(f"roc_{split}", roc_figure(pred["y_true"], pred["y_prob"], m["class_names"],
                                                                 m["per_class"].get("auc"), f"{split}: one-vs-rest ROC"),
                                      f"{split} ROC curves, one class against the rest; AUC values from metrics.json "
                                      f"(macro {fmt(m['macro'].get('auc'))})."))
        except Exception as e:
            figs.append(note(f"{split} ROC curves left out: {_why(e)}"))
        out.extend(figs)
    return join(out)


def _why(e: BaseException) -> str:
    """An exception as one short line for a note."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:300]}" if not isinstance(e, (UserError, FileNotFoundError)) else msg[:300] or type(e).__name__


def _choose_examples(y: np.ndarray, prob: np.ndarray, n_wrong: int, per_class: int, n_right: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the most confidently wrong predictions (confidence = predicted class's probability,
    highest first) and of correct ones: the ``per_class`` most confident of each class, at most
    ``n_right`` in all, in class order."""
    pred = prob.argmax(axis=1)
    conf = prob[np.arange(len(y)), pred]
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:n_wrong]
    right: list[int] = []
    for c in range(prob.shape[1]):
        rows = np.flatnonzero((pred == y) & (y == c))
        right.extend(rows[np.argsort(-conf[rows], kind="stable")][:per_class].tolist())
        if len(right) >= n_right:
            break
    return wrong, np.asarray(right[:n_right], dtype=np.int64)


def _examples_cfg(r: RunReport) -> tuple[int, int, int]:
    rc = r.cfg.report if r.cfg else None
    return (rc.examples, rc.explain_images, rc.probe_images) if rc else (16, 4, 256)


@SECTIONS.register("examples", summary="the most confidently wrong test images and correct ones per class")
def section_examples(r: RunReport) -> Markup | None:
    from .plots import image_grid_figure

    n, _, _ = _examples_cfg(r)
    if n == 0:
        return None
    split = "test"
    if not (r.dir / "predictions" / f"{split}.npz").exists():
        return note("no test predictions yet: the run has not finished its final evaluation.")
    try:
        x, pred = r.split_images(split)
    except Exception as e:
        return note(f"example images left out: the run's images could not be loaded ({_why(e)}).")
    y, prob = pred["y_true"], pred["y_prob"].astype(np.float64)
    names = r.class_names
    wrong, right = _choose_examples(y, prob, n, 2, n)
    out = []
    if len(wrong):
        caps = [f"true {names[y[i]]}\npred {names[prob[i].argmax()]} {prob[i].max():.0%}" for i in wrong]
        fig = image_grid_figure(x[wrong], [_short(c) for c in caps], [True] * len(wrong))
        out.append(r.page.figure("examples_wrong", fig, f"The {len(wrong)} most confidently wrong test images "
                                 f"(of {int((prob.argmax(1) != y).sum()):,} wrong): true class, predicted class and "
                                 f"the predicted class's probability."))
    else:
        out.append(tag("p", "Every test image is classified correctly."))
    if len(right):
        caps = [f"{names[y[i]]}\n{prob[i].max():.0%}" for i in right]
        fig = image_grid_figure(x[right], [_short(c) for c in caps], [False] * len(right))
        out.append(r.page.figure("examples_right", fig, "Correct test images, the two most confident of each class "
                                 "(in class order): class and its predicted probability."))
    return join(out)


def _short(caption: str, width: int = 18) -> str:
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in caption.split("\n"))


def _explain_inputs(r: RunReport, k: int, probe_n: int):
    """Images for the explanations: up to k test images, half the most confidently wrong, the rest
    correct (one per class first), with their labels and predictions; and the probe batch (the
    first ``probe_n`` training images)."""
    import torch

    x, pred = r.split_images("test")
    y, prob = pred["y_true"], pred["y_prob"].astype(np.float64)
    wrong, right = _choose_examples(y, prob, k // 2, 1, k)
    rows = np.concatenate([wrong, right[: k - len(wrong)]]).astype(np.int64)
    probe = r.data().train.x[:probe_n]  # uint8 (P, C, H, W) torch tensor, CPU
    return torch.from_numpy(x[rows]), y[rows], prob[rows].argmax(axis=1), probe


@SECTIONS.register("model", summary="feature maps, saliency, Grad-CAM, weights, activations, gradient flow")
def section_model(r: RunReport) -> Markup | None:
    _, k, probe_n = _examples_cfg(r)
    out: list[Any] = []
    if k > 0:
        try:
            from .augment import Normalizer
            from .explain import model_figures

            model, state, _ = r.model()
            meta = state["meta"]
            import torch

            images, labels, preds, probe = _explain_inputs(r, k, probe_n)
            norm = Normalizer(meta["mean"], meta["std"], torch.device("cpu"))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                figs = model_figures(model, norm, images, labels, preds, list(meta["class_names"]), probe)
            # explain leaves out a figure it cannot draw with a warning: show it on the page.
            out.extend(note(str(w.message)) for w in caught if str(w.message).startswith("explain:"))
            for mf in figs:
                out.append(tag("h3", mf.title))
                out.append(r.page.figure(mf.key, mf.figure, mf.caption, alt=mf.title))
            if not figs:
                out.append(note("this model gives no inside-the-model figures."))
        except Exception as e:
            out.append(note(f"feature maps, saliency and Grad-CAM, weight and activation distributions left out: "
                            f"{_why(e)}"))
    try:
        from .explain import gradient_flow_figures

        if not r.stats:
            out.append(note("no stats.jsonl: gradient flow was not recorded ([diagnostics] stats_every = 0, or no "
                            "epoch finished)."))
        else:
            for mf in gradient_flow_figures(r.stats):
                out.append(tag("h3", mf.title))
                out.append(r.page.figure(mf.key, mf.figure, mf.caption, alt=mf.title))
    except Exception as e:
        out.append(note(f"gradient flow left out: {_why(e)}"))
    return join(out) if out else None


@SECTIONS.register("diagnostics", summary="the findings of cnnlab diagnose")
def section_diagnostics(r: RunReport) -> Markup:
    d = r.diagnostics
    if d is None:
        return note(f"no diagnostics.json: run `cnnlab diagnose {r.dir}` to write it.")
    findings = d.get("findings", [])
    counts = d.get("counts", {})
    out: list[Any] = [tag("p", ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (checked {d.get('created', '-')}; "
                                f"`cnnlab diagnose` prints the same with its evidence)." if counts else "")]
    if not findings:
        out.append(tag("p", "No findings: nothing in this run's history, statistics or metrics looks wrong."))
    for f in findings:
        sev = str(f.get("severity", "info"))
        parts: list[Any] = [
            tag("p", tag("span", sev, class_="sev"), " ", tag("b", f.get("title", "")), " ", tag("code", f.get("id", ""))),
            tag("p", tag("b", "evidence: "), f.get("evidence", "")),
            tag("p", tag("b", "why: "), f.get("why", "")),
        ]
        if f.get("remedies"):
            parts.append(tag("p", tag("b", "try:")))
            parts.append(tag("ul", *[tag("li", x) for x in f["remedies"]]))
        fid = str(f.get("id", ""))
        if fid in FINDING_FIGURES:
            try:
                fig = FINDING_FIGURES.get(fid)(r, f)
                if fig is not None:
                    parts.append(r.page.figure(f"diagnostic_{fid}", fig, f.get("title", "")))
            except Exception as e:
                parts.append(note(f"figure left out: {_why(e)}"))
        out.append(tag("div", *parts, class_=f"finding {sev}"))
    return join(out)




@SECTIONS.register("config", summary="the resolved config.toml and env.json")
def section_config(r: RunReport) -> Markup:
    env = [(k, json.dumps(v) if isinstance(v, (list, dict)) else ("-" if v is None else v))
           for k, v in flatten(r.env).items()]
    return join([
        tag("p", "config.toml: the fully resolved experiment; ", tag("code", f"cnnlab run {r.dir / rd.CONFIG}"),
            " repeats the run."),
        tag("pre", r.config_text),
        tag("h3", "environment (env.json)"),
        kv_table(env) if env else note("no env.json."),
    ])


SECTION_TITLES = {"summary": "Summary", "curves": "Curves", "metrics": "Metrics", "examples": "Examples",
                  "model": "Inside the model", "diagnostics": "Diagnostics", "config": "Config and environment"}


def _draw_sections(ctx: Any, registry: Registry) -> list[tuple[str, str, Markup]]:
    sections = []
    for entry in registry:
        try:
            body = entry.obj(ctx)
        except Exception as e:  # one broken section must not cost the page
            body = note(f"this section could not be drawn: {_why(e)}")
        if body is not None:
            sections.append((entry.name, SECTION_TITLES.get(entry.name, entry.name.replace("_", " ").capitalize()), body))
    return sections


# ================================================================================== entry points
def is_sweep_dir(path: str | Path) -> bool:
    return (Path(path) / SWEEP_JSON).is_file()


def write_report(run_dir: str | Path, data: "DataSplits | None" = None, quiet: bool = True) -> Path:
    """Write ``report.html`` (and ``figures/*.png``) in a run directory, or the sweep report in a
    sweep directory; returns the page's path. ``data``: the run's splits when the caller has them
    (saves loading the data set again). A folder that is neither raises a UserError."""
    path = Path(run_dir)
    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist; give a run directory (runs/<name>/<timestamp>) or a "
                        f"sweep directory (sweeps/<name>/<timestamp>).")
    if is_sweep_dir(path) and not rd.is_run_dir(path):
        return write_sweep_report(path, quiet=quiet)
    rd.require_run_dir(path)
    page = Page("", path)
    r = RunReport(path, page, data)
    page.title = f"{r.name}: cnnlab run report"
    page.subtitle = f"{path.resolve()}"
    sections = _draw_sections(r, SECTIONS)
    out = path / REPORT
    rd.atomic_write_text(out, page.render(sections))
    # figures/ of a run directory holds this page's figures only: drop those an earlier report
    # drew and this one did not (a section that now fails, fewer explain images), so the folder
    # never shows a stale picture beside a new page. After the page: a crash keeps the old set.
    for old in page.fig_dir.glob("*.png"):
        if old.stem not in page.figure_keys:
            old.unlink(missing_ok=True)
    if not quiet:
        print(f"report: {out}")
    return out


def reports_enabled() -> bool:
    """False when the environment says ``CNNLAB_REPORT=0``: end-of-run and end-of-sweep reports off
    for a whole session (the test suite, batch jobs) without editing experiment files;
    ``cnnlab report DIR`` still draws one on demand."""
    return os.environ.get("CNNLAB_REPORT", "").strip().lower() not in {"0", "false", "off", "no"}


def report_after_run(run_dir: Path, quiet: bool, data: "DataSplits | None" = None) -> None:
    """The end of ``cnnlab run``: write the report unless ``[report] enabled = false``. Never
    raises (a finished run stays finished): a failure prints one warning line."""
    if not reports_enabled():
        return
    try:
        from .config import load_config

        if not load_config(Path(run_dir) / rd.CONFIG).report.enabled:
            return
        path = write_report(run_dir, data=data, quiet=True)
        if not quiet:
            print(f"report: {path}", flush=True)
    except Exception as e:
        print(f"warning: report not written for {run_dir}: {_why(e)}", file=sys.stderr, flush=True)


# =================================================================================== sweep report
# results.csv columns that are not searched parameters (cnnlab.sweep._collect writes them).
_SWEEP_FIXED_COLUMNS = {"stage", "trial", "state", "seconds", "repeats", "run_dir", "error"}


def _cell(v: str) -> Any:
    """A results.csv cell as a value: "" -> None, numbers as numbers, JSON lists as lists."""
    if v == "":
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        pass
    if v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            pass
    return {"True": True, "False": False}.get(v, v)


def read_sweep(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(sweep.json, the rows of results.csv as typed values)."""
    meta = rd.read_json(sweep_dir / SWEEP_JSON)
    p = sweep_dir / "results.csv"
    rows = [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(p.open(encoding="utf-8"))] \
        if p.exists() else []
    return meta, rows


def _sweep_columns(cols: list[str], metric: str) -> tuple[list[str], list[str]]:
    """(searched parameters, summary metrics) of results.csv, whose columns are
    [stage], trial, state, <parameters>, <metric>, <metric>.std, <summary metrics>, seconds, ..."""
    if "state" not in cols or metric not in cols:
        return [], []
    keys = cols[cols.index("state") + 1: cols.index(metric)]
    rest = [c for c in cols[cols.index(metric) + 1:] if c not in _SWEEP_FIXED_COLUMNS and c != metric + ".std"]
    return keys, rest


def write_sweep_report(sweep_dir: str | Path, quiet: bool = True) -> Path:
    """Write ``report.html`` in a sweep directory: the ranked trials (results.csv) with links to
    each trial's run report, the objective per trial with the best so far, the objective against
    each parameter, and the sweep's own figures (parameter importance). Returns the page's path."""
    from .plots import sweep_history_figure, sweep_params_figure

    sweep_dir = Path(sweep_dir)
    if not is_sweep_dir(sweep_dir):
        raise UserError(f"{str(sweep_dir)!r} is not a sweep directory (it has no {SWEEP_JSON}); give a folder "
                        f"written by `cnnlab sweep`, for example sweeps/<name>/<timestamp>.")
    meta, rows = read_sweep(sweep_dir)
    cfg = meta.get("config", {})
    name = cfg.get("name", sweep_dir.parent.name)
    metric, direction = cfg.get("metric", "val.accuracy"), cfg.get("direction", "maximize")
    page = Page(f"{name}: cnnlab sweep report", sweep_dir, f"{sweep_dir.resolve()}")
    keys, summaries = _sweep_columns(list(rows[0]) if rows else [], metric)
    done = [r for r in rows if r.get("state") == "complete" and isinstance(r.get(metric), (int, float))]
    sign = -1 if direction == "maximize" else 1
    ranked = sorted(done, key=lambda r: (sign * r[metric], r["trial"]))

    def report_link(row: dict[str, Any]) -> Any:
        links = []
        for d in str(row.get("run_dir") or "").split(";"):
            if not d:
                continue
            p = Path(d)
            target = p / REPORT if (p / REPORT).exists() else p
            links.append(tag("a", "report" if (p / REPORT).exists() else "run", href=href(target, sweep_dir)))
        return join(links, " ") if links else "-"

    staged = any(r.get("stage") for r in rows)
    head = ["rank", *(["stage"] if staged else []), "trial", *keys, metric, *summaries, "seconds", "run"]
    body = []
    for i, r in enumerate(ranked, 1):
        std = r.get(metric + ".std")
        val = fmt(r[metric]) + (f" ± {fmt(std)}" if (r.get("repeats") or 1) > 1 and std is not None else "")
        body.append([str(i), *([r.get("stage") or "-"] if staged else []), str(r["trial"]),
                     *[_param(r.get(k)) for k in keys], val, *[fmt(r.get(k)) for k in summaries],
                     fmt(r.get("seconds"), ".1f"), report_link(r)])
    states: dict[str, int] = {}
    for r in rows:
        states[str(r.get("state"))] = states.get(str(r.get("state")), 0) + 1
    intro = tag("p", f"{len(done)} of {len(rows)} trials complete ("
                     + ", ".join(f"{v} {k}" for k, v in sorted(states.items())) + f"), ranked by {metric} ({direction}). "
                     f"Strategy: {cfg.get('strategy', '-')}; study {meta.get('study', '-')} at {meta.get('storage', '-')}.")
    best = [tag("p", "Best configuration: ", tag("code", "best.toml"), " (", tag("code", f"cnnlab run {sweep_dir / 'best.toml'}"),
                ").")] if (sweep_dir / "best.toml").exists() else []
    sections = [("ranking", "Ranked trials", join([intro, table(head, body) if body else note("no trial has completed yet."),
                                                   *best]))]
    figs: list[Any] = []
    if done:
        # The sweep draws these two itself when it finishes (with its ranges' log scales and listed
        # values' order); the page shows those files, and draws them only where they are missing.
        in_order = sorted(done, key=lambda r: (str(r.get("stage") or ""), r["trial"]))
        values = [float(r[metric]) for r in in_order]
        drawn = {
            "sweep_objective": (lambda: sweep_history_figure(values, direction, metric, f"{name}: {metric} per trial"),
                                f"{metric} of each completed trial in trial order, and the best so far."),
            "sweep_params": (lambda: sweep_params_figure({k: [r.get(k) for r in in_order] for k in keys}, values, metric),
                             f"{metric} against each searched parameter."),
        }
        for key, (draw, caption) in drawn.items():
            if key == "sweep_params" and not keys:
                continue
            png = sweep_dir / FIGURES / f"{key}.png"
            figs.append(page.png(png.read_bytes(), caption, key) if png.is_file() else page.figure(key, draw(), caption))
    for p in sorted((sweep_dir / FIGURES).glob("importance*.png")):  # drawn by the sweep itself (fANOVA)
        figs.append(page.png(p.read_bytes(), f"parameter importance (Optuna fANOVA): {p.name}", p.name))
    failed = [r for r in rows if r.get("state") == "fail" and r.get("error")]
    if failed:
        figs.append(tag("h3", "failed trials"))
        figs.append(table(["trial", "error"], [[str(r["trial"]), str(r["error"])[:500]] for r in failed[:50]]))
    sections.append(("figures", "Figures", join(figs) if figs else note("no trial has completed yet.")))
    out = sweep_dir / REPORT
    rd.atomic_write_text(out, page.render(sections))
    if not quiet:
        print(f"report: {out}")
    return out


def _param(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


# ===================================================================================== runs index
def _find(root: Path, marker: str, max_depth: int = 6) -> list[Path]:
    """Folders under ``root`` (itself included) holding ``marker``, at most ``max_depth`` deep,
    without descending into checkpoints/, predictions/ or figures/."""
    found, skip = [], {"checkpoints", "predictions", FIGURES, "evaluations", "tensorboard", "mlruns"}
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith(".")) if depth < max_depth else []
        if marker in filenames:
            found.append(Path(dirpath))
    return found


def write_runs_index(root: str | Path) -> Path:
    """Write ``<root>/index.html``: one row per run directory under ``root`` (also the trials of
    sweeps) with its name, date, data set, model, best val and test accuracy, status and a link to
    its report; then the sweep reports and comparison pages found there. Returns the page's path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"runs folder {str(root)!r} does not exist (give --runs-dir DIR).")
    rows = []
    for d in _find(root, rd.STATUS):
        if not rd.is_run_dir(d):
            continue
        st = rd.read_status(d)
        try:
            hist = rd.read_history(d)
        except (OSError, json.JSONDecodeError):
            hist = []
        vals = [h["val_acc"] for h in hist if h.get("val_acc") is not None]
        try:
            m = rd.read_json(d / rd.METRICS) if (d / rd.METRICS).exists() else {}
        except (OSError, json.JSONDecodeError):
            m = {}
        test = m.get("test", {}).get("accuracy")
        rel = Path(os.path.relpath(d, root)).as_posix()
        link = tag("a", "report", href=href(d / REPORT, root)) if (d / REPORT).exists() \
            else Markup(f'<span title="{esc("cnnlab report " + str(d))}">no report yet</span>')
        rows.append((str(st.get("started", d.name)), [st.get("name", d.parent.name), str(st.get("started", d.name))[:19].replace("T", " "),
                     st.get("dataset", "-"), st.get("model", "-"), fmt(max(vals)) if vals else "-", fmt(test),
                     st.get("status", "-"), rel, link]))
    rows.sort(key=lambda t: t[0], reverse=True)
    page = Page(f"cnnlab runs in {root.name or root}", root, f"{root.resolve()}")
    head = ["name", "date", "data set", "model", "best val acc", "test acc", "status", "directory", "report"]
    sections = [("runs", f"Runs ({len(rows)})", table(head, [r for _, r in rows]) if rows else
                 note(f"no runs under {root} (start one with `cnnlab run EXPERIMENT.toml`)."))]
    sweeps = [d for d in _find(root, SWEEP_JSON)]
    if sweeps:
        srows = []
        for d in sorted(sweeps):
            link = tag("a", "report", href=href(d / REPORT, root)) if (d / REPORT).exists() else "no report yet"
            srows.append([Path(os.path.relpath(d, root)).as_posix(), link])
        sections.append(("sweeps", "Sweeps", table(["directory", "report"], srows)))
    compares = sorted(_find(root, "compare.html"))
    if compares:
        sections.append(("comparisons", "Comparisons", table(
            ["directory", "page"], [[Path(os.path.relpath(d, root)).as_posix(),
                                     tag("a", "compare", href=href(d / "compare.html", root))] for d in compares])))
    out = root / INDEX
    rd.atomic_write_text(out, page.render(sections))
    return out
