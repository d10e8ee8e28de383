"""Figures for reports, comparisons and papers: one consistent, colorblind-safe matplotlib style.

Every figure function returns a ``matplotlib.figure.Figure`` built with ``figure(...)`` (never
``pyplot``'s global state, so figures can be drawn from worker threads and never leak, and no
backend is chosen: a notebook's own backend stays as it is; PNGs are rendered by Agg);
``save_png`` writes it atomically and ``png_bytes`` gives the PNG for inlining in HTML.

Colors: the Okabe-Ito palette (distinguishable with every common color-vision deficiency) for
lines and bars; ``viridis`` / ``cividis`` (perceptually uniform, colorblind-safe) for heatmaps.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from ..rundir import atomic_write_bytes
from ._style import PALETTE

HEATMAP_CMAP = "viridis"
OVERLAY_CMAP = "inferno"  # saliency / Grad-CAM over a grey image
DPI = 110  # PNG resolution: sharp on a laptop, a 6.4-inch-wide figure is ~700 px

STYLE: dict[str, Any] = {
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.titlesize": 11,
    "image.cmap": HEATMAP_CMAP,
    "savefig.bbox": "tight",
    "font.family": "DejaVu Sans",  # bundled with matplotlib: identical output on every machine
}


@contextmanager
def style() -> Iterator[None]:
    """The cnnlab style for the figures built inside the block."""
    with matplotlib.rc_context(STYLE):
        yield


def figure(width: float = 6.4, height: float = 4.0, **kwargs: Any) -> Figure:
    """A new Figure (inches) in the cnnlab style; use it inside ``with style():`` so the axes
    created afterwards get the style too."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for inlining in HTML as base64)."""
    buf = io.BytesIO()
    # A figure with a layout engine (every ``figure(...)``: constrained) already fits its canvas;
    # savefig.bbox = "tight" would draw it a second time only to measure it, slowing every save.
    fitted = fig.get_layout_engine() is not None
    with matplotlib.rc_context({**STYLE, "savefig.bbox": "standard"} if fitted else STYLE):
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> bytes:
    """Write the figure as a PNG atomically; returns the bytes written."""
    data = png_bytes(fig)
    atomic_write_bytes(path, data)
    return data


# ------------------------------------------------------------------------------ figure functions
# Everything below builds one Figure from plain data (lists, numpy arrays): no file reading, so
# the same function draws a run's report, a comparison and a sweep. Class names and run names
# reach matplotlib's text renderer, where "$...$" would start mathtext: ``plain`` escapes them.

WRONG = PALETTE[3]  # vermillion: a wrong prediction
RIGHT = PALETTE[0]  # blue: a right one
ANNOTATE_MAX_CLASSES = 20  # confusion matrices write each cell's value up to this many classes
TICK_LABELS_MAX_CLASSES = 40  # ... and name every row/column up to this many
LEGEND_MAX_LINES = 10  # ROC curves get one legend entry per class up to this many


def plain(text: Any, limit: int | None = None) -> str:
    """``text`` as literal matplotlib text: ``$`` escaped (no mathtext), cut to ``limit`` characters."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[: max(1, limit - 1)] + "…"
    return s.replace("$", r"\$")


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of one history.jsonl key, skipping epochs where it is missing or null."""
    pts = [(int(h["epoch"]), float(h[key])) for h in history if h.get(key) is not None and "epoch" in h]
    return [p[0] for p in pts], [p[1] for p in pts]


def _mark_epochs(ax: Any, best_epoch: int | None, stop_epoch: int | None) -> None:
    if best_epoch:
        ax.axvline(best_epoch, color=PALETTE[2], linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
    if stop_epoch:
        ax.axvline(stop_epoch, color=PALETTE[7], linestyle=":", linewidth=1, label=f"early stop (epoch {stop_epoch})")


def curves_figure(history: list[dict[str, Any]], best_epoch: int | None = None,
                  stop_epoch: int | None = None, title: str = "") -> Figure:
    """Training curves from history.jsonl records: loss (train, val), accuracy (train, val) and the
    learning rate (log scale) per epoch, with the best epoch and an early stop marked."""
    with style():
        fig = figure(10.5, 3.3)
        axes = fig.subplots(1, 3)
        for ax, what in zip(axes[:2], ("loss", "acc")):
            for split, color in (("train", PALETTE[0]), ("val", PALETTE[1])):
                x, y = _series(history, f"{split}_{what}")
                if x:
                    ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, color=color, label=split)
            _mark_epochs(ax, best_epoch, stop_epoch)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss" if what == "loss" else "accuracy")
            ax.set_title("loss" if what == "loss" else "accuracy")
            ax.legend()
        x, y = _series(history, "lr")
        ax = axes[2]
        if x:
            ax.plot(x, y, color=PALETTE[4], marker="o" if len(x) <= 30 else None, markersize=3)
            if min(y) > 0:
                ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.set_title("learning rate (at epoch end)")
        if title:
            fig.suptitle(plain(title))
    return fig


def confusion_figure(cm: Any, class_names: list[str], title: str = "") -> Figure:
    """Two heatmaps of a (K, K) confusion matrix (rows true, columns predicted): counts and
    row-normalized (each row divided by its class's support, so the diagonal is per-class recall).
    Cells carry their value up to ANNOTATE_MAX_CLASSES classes; axes name the classes up to
    TICK_LABELS_MAX_CLASSES, and give class indices beyond."""
    import numpy as np

    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = min(7.0, 2.2 + 0.32 * k)  # inches per panel: cells stay readable up to ~20 classes
    names = [plain(c, 14) for c in class_names]
    with style():
        fig = figure(2 * side + 1.2, side + 0.6)
        axes = fig.subplots(1, 2)
        for ax, values, label in ((axes[0], cm, "count"), (axes[1], norm, "share of the true class")):
            # aspect="auto": the figure's size keeps cells near square; a fixed aspect would let the
            # axes outgrow the box the constrained layout gave them (titles cut off).
            im = ax.imshow(values, cmap=HEATMAP_CMAP, vmin=0, vmax=None if values is cm else 1.0,
                           interpolation="nearest", aspect="auto")
            ax.grid(False)
            if k > ANNOTATE_MAX_CLASSES:  # annotated cells carry their value: no color bar needed
                fig.colorbar(im, ax=ax, shrink=0.8, label=label)
            if k <= TICK_LABELS_MAX_CLASSES:
                long = k > 6 and max(len(n) for n in names) > 2
                ax.set_xticks(range(k), names, rotation=90 if long else 0)
                ax.set_yticks(range(k), names)
            ax.set_xlabel("predicted class")
            ax.set_ylabel("true class")
            ax.set_title("counts" if values is cm else "row-normalized (recall on the diagonal)")
            if k <= ANNOTATE_MAX_CLASSES:
                hi = values.max() if values.size else 0
                for i in range(k):
                    for j in range(k):
                        v = values[i, j]
                        text = f"{v:d}" if values is cm else f"{v:.2f}"
                        # viridis is dark at the low end: white text there, black on the light end.
                        # in_layout=False: cell texts lie inside the axes, and measuring each of the
                        # K*K of them for the layout would make the figure much slower to save.
                        ax.text(j, i, text, ha="center", va="center", fontsize=7 if k <= 10 else 5,
                                color="white" if v < 0.6 * hi else "black", in_layout=False)
        if title:
            fig.suptitle(plain(title))
    return fig


def roc_figure(y_true: Any, y_prob: Any, class_names: list[str], auc: list[float | None] | None = None,
               title: str = "") -> Figure:
    """One-vs-rest ROC curves (scikit-learn's ``roc_curve``) of every class present in ``y_true``.

    ``auc``: the per-class AUC of metrics.json, shown in the legend (up to LEGEND_MAX_LINES
    classes; more classes are drawn as thin lines without a legend). Classes without positives or
    negatives have no curve."""
    import numpy as np
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    k = y_prob.shape[1]
    many = k > LEGEND_MAX_LINES
    with style():
        fig = figure(5.2 if not many else 4.6, 4.2)
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, linestyle="--", label="chance")
        for c in range(k):
            pos = y_true == c
            if pos.all() or not pos.any():
                continue
            fpr, tpr, _ = roc_curve(pos, y_prob[:, c])
            if many:
                ax.plot(fpr, tpr, linewidth=0.6, alpha=0.5, color=PALETTE[c % 7])
            else:
                a = auc[c] if auc is not None and c < len(auc) else None
                label = plain(class_names[c], 18) + (f" (AUC {a:.3f})" if a is not None else "")
                ax.plot(fpr, tpr, linewidth=1.2, color=PALETTE[c % 7], linestyle="-" if c < 7 else "--", label=label)
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (recall)")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        if not many:
            ax.legend(loc="lower right", fontsize=7)
        ax.set_title(plain(title) if title else "one-vs-rest ROC")
    return fig


def image_grid_figure(images: Any, captions: list[str], wrong: list[bool] | None = None,
                      title: str = "", ncols: int = 8) -> Figure:
    """A grid of uint8 images (N, C, H, W), C = 1 (grey) or 3, each with its caption above it; a
    caption is vermillion when ``wrong[i]``, blue otherwise. Small images are drawn with
    nearest-neighbour pixels (no blur).

    The grid is one mosaic drawn on a single axes (one axes per image is many times slower to lay
    out and save, and a report draws this at the end of every run)."""
    import numpy as np

    x = np.asarray(images)
    n, c, h, w = x.shape if x.ndim == 4 else (0, 1, 1, 1)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    lines = max((str(t).count("\n") + 1 for t in captions), default=1)
    # Caption band above each tile: 10 px per line at the figure's scale, expressed in image pixels.
    tile_in = 1.3  # inches per tile
    cap = int(np.ceil(lines * 0.13 * h / tile_in)) + max(1, h // 16)
    pad = max(1, h // 16)
    cell_h, cell_w = h + cap, w + pad
    mosaic = np.full((nrows * cell_h, ncols * cell_w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        tile = np.transpose(x[i][:3] if c >= 3 else np.repeat(x[i][:1], 3, axis=0), (1, 2, 0))
        mosaic[r * cell_h + cap: r * cell_h + cap + h, col * cell_w: col * cell_w + w] = tile
    with style():
        fig = figure(tile_in * ncols + 0.2, tile_in * nrows * cell_h / cell_w + (0.35 if title else 0.1))
        ax = fig.subplots()
        ax.imshow(mosaic, interpolation="nearest")
        ax.axis("off")
        for i in range(n):
            r, col = divmod(i, ncols)
            color = (WRONG if wrong[i] else RIGHT) if wrong is not None else "black"
            ax.text(col * cell_w + w / 2, r * cell_h + cap - 0.5 - pad / 2, plain(captions[i]), ha="center",
                    va="bottom", fontsize=7, color=color, in_layout=False, linespacing=1.1)
        if title:
            fig.suptitle(plain(title))
    return fig


def _trailing_mean(y: list[float], window: int) -> list[float]:
    """Mean of each value and the ``window - 1`` before it (fewer at the start)."""
    sums = [0.0]
    for v in y:
        sums.append(sums[-1] + v)
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(y))]


def steps_figure(steps: list[dict[str, Any]], title: str = "") -> Figure:
    """Per-step training curves from steps.jsonl records (``step``, ``epoch``, ``loss``, ``acc``):
    the loss and the accuracy of each logged batch against the global optimizer step. Single batches
    are noisy, so past 50 points a trailing mean over a fiftieth of them is drawn over the raw values."""
    with style():
        fig = figure(10.5, 3.3)
        axes = fig.subplots(1, 2)
        for ax, (key, label, color) in zip(axes, (("loss", "loss", PALETTE[0]), ("acc", "accuracy", PALETTE[2]))):
            pts = [(int(r["step"]), float(r[key])) for r in steps
                   if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
            x, y = [p[0] for p in pts], [p[1] for p in pts]
            if len(x) > 50:
                ax.plot(x, y, color=color, alpha=0.35, linewidth=0.8, label="batch")
                ax.plot(x, _trailing_mean(y, max(2, len(x) // 50)), color=color, linewidth=1.5, label="trailing mean")
                ax.legend()
            elif x:
                ax.plot(x, y, color=color, marker="o", markersize=2, linewidth=1)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(label)
            ax.set_title(f"training {label} per step (one batch)")
        if title:
            fig.suptitle(plain(title))
    return fig


def compare_curves_figure(histories: dict[str, list[dict[str, Any]]]) -> Figure:
    """Overlaid curves of several runs: train loss, val loss and val accuracy per epoch, one color
    per run (line style repeats the color cycle after seven runs)."""
    with style():
        fig = figure(10.5, 3.5)
        axes = fig.subplots(1, 3)
        panels = (("train_loss", "train loss"), ("val_loss", "val loss"), ("val_acc", "val accuracy"))
        for ax, (key, label) in zip(axes, panels):
            for i, (run, hist) in enumerate(histories.items()):
                x, y = _series(hist, key)
                if not x and key.startswith("val_"):  # a run without a validation split
                    x, y = _series(hist, key.replace("val_", "train_"))
                if x:
                    ax.plot(x, y, color=PALETTE[i % 7], linestyle="-" if i < 7 else "--", label=plain(run, 40))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_title(label)
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)))
    return fig


def grouped_bars_figure(categories: list[str], values: dict[str, list[float | None]],
                        ylabel: str, title: str = "") -> Figure:
    """Bars of several series side by side per category (e.g. per-class test accuracy of each
    run); a missing value (None) leaves a gap. The legend sits below the axes (never over a bar),
    and the y axis spans the values with a margin (``zoomed_limits``), so 0.97 against 1.00 shows;
    the axis label says where it starts when that is not 0."""
    import numpy as np

    k, m = len(categories), max(1, len(values))
    width = 0.8 / m
    with style():
        fig = figure(min(14.0, 2.5 + 0.45 * k * max(1, m / 2)), 3.8)
        ax = fig.subplots()
        for i, (series, ys) in enumerate(values.items()):
            xs = np.arange(k) + (i - (m - 1) / 2) * width
            ax.bar(xs, [np.nan if v is None else v for v in ys], width, color=PALETTE[i % 7], label=plain(series, 40))
        labels = [plain(c, 14) for c in categories]
        ax.set_xticks(range(k), labels, rotation=90 if k > 8 and max(map(len, labels), default=0) > 2 else 0)
        limits = zoomed_limits([v for ys in values.values() for v in ys])
        if limits is not None:
            ax.set_ylim(*limits)
        low = ax.get_ylim()[0]
        ax.set_ylabel(plain(ylabel) + (f"\n(axis from {low:.3g}, not 0)" if low > 0 else ""))
        handles, names = ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)))
        if title:
            ax.set_title(plain(title))
    return fig


def zoomed_limits(values: list[float | None], below: float = 0.5, above: float = 0.15, min_span: float = 0.02
                  ) -> tuple[float, float] | None:
    """y limits around the finite ``values``: their range, plus ``below`` of it under the lowest
    (so the shortest bar still has a visible length) and ``above`` of it over the highest, at
    least ``min_span`` in all; kept inside [0, 1] when the values are shares. None when there are
    no finite values. Bars of 0.97 and 1.00 on a 0-1 axis look the same; on these they do not."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    widen = max((min_span - span) / 2, 0.0)  # equal values: a small span around them
    lo, hi = lo - span * below - widen, hi + span * above + widen
    if v.min() >= 0 and v.max() <= 1:  # shares (accuracy, recall): no axis below 0 or above 1
        lo, hi = max(0.0, lo), min(1.0, hi)
    return lo, hi


TRIAL_TICKS_MAX = 30  # the objective plot labels every trial up to this many (beyond: integer ticks)
SWEEP_PARAM_COLUMNS = 2  # panels side by side in sweep_params_figure: ~500 px each on a 1,120 px page


def sweep_history_figure(values: list[float], direction: str, metric: str, title: str = "",
                         trials: list[int] | None = None) -> Figure:
    """A sweep's objective per completed trial, in trial order, and the best so far. ``trials``:
    the trial numbers of ``values`` as the sweep's table shows them (from 0, with gaps where a
    trial failed or was pruned); without them (or when they repeat, as across the stages of a
    sequential sweep) the x axis counts the completed trials from 0."""
    import numpy as np

    y = np.asarray(values, dtype=np.float64)
    best = np.maximum.accumulate(y) if direction == "maximize" else np.minimum.accumulate(y)
    numbered = trials is not None and len(trials) == len(y) and len(set(trials)) == len(trials)
    x = np.asarray(trials if numbered else range(len(y)), dtype=np.float64)
    with style():
        fig = figure(6.4, 3.6)
        ax = fig.subplots()
        ax.plot(x, y, "o", color=PALETTE[0], label="trial")
        ax.step(x, best, where="post", color=PALETTE[1], label="best so far")
        if numbered and len(x) <= TRIAL_TICKS_MAX:
            ax.set_xticks(x, [str(t) for t in trials])  # a tick per trial, labelled with the table's number
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial (as numbered in the table)" if numbered else "completed trial (from 0)")
        ax.set_ylabel(plain(metric))
        ax.set_title(plain(title) if title else "objective per trial")
        ax.legend()
    return fig


def sweep_params_figure(params: dict[str, list[Any]], values: list[float], metric: str,
                        log: set[str] | frozenset[str] = frozenset(),
                        order: dict[str, list[str]] | None = None) -> Figure:
    """The objective against each searched parameter, one panel per parameter, SWEEP_PARAM_COLUMNS
    panels to a row (each about as wide as half a page: readable, not shrunk to a strip), sharing
    the objective's axis: numbers on a numeric axis (log scale for the keys in ``log``, or when
    they span two decades or more), anything else as evenly spaced labels: ``order[key]`` (the
    sweep file's listed values, as strings) when given, else in order of first appearance."""
    import numpy as np

    keys = list(params) or ["(no parameter)"]
    ncols = min(len(keys), SWEEP_PARAM_COLUMNS)
    nrows = -(-len(keys) // ncols)
    with style():
        fig = figure(6.4 if ncols == 1 else 5.0 * ncols + 0.4, 3.2 * nrows + 0.2)
        grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
        axes = grid.ravel()
        for ax in axes[len(keys):]:  # an odd number of parameters: the last row's empty panel
            ax.remove()
        for i, (ax, key) in enumerate(zip(axes, keys)):
            xs = params.get(key, [])
            pts = [(x, v) for x, v in zip(xs, values) if x is not None and x != ""]
            listed = (order or {}).get(key)
            numeric = pts and not listed and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in pts)
            if numeric:
                xv = np.array([x for x, _ in pts], dtype=np.float64)
                ax.scatter(xv, [v for _, v in pts], color=PALETTE[0], alpha=0.8)
                if xv.min() > 0 and (key in log or xv.max() / xv.min() >= 100):
                    ax.set_xscale("log")
                    ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap within a decade
            elif pts:
                labels = list(dict.fromkeys([*(listed or []), *(str(x) for x, _ in pts)]))
                pos = {lab: i for i, lab in enumerate(labels)}
                ax.scatter([pos[str(x)] for x, _ in pts], [v for _, v in pts], color=PALETTE[0], alpha=0.8)
                ax.set_xticks(range(len(labels)), [plain(lab, 16) for lab in labels],
                              rotation=30 if len(labels) > 4 else 0)
            ax.set_xlabel(plain(key))
            if i % ncols == 0:
                ax.set_ylabel(plain(metric))
            ax.tick_params(axis="y", labelleft=True)
    return fig
