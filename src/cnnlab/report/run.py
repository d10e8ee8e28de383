"""The run report: one self-contained ``report.html`` per run directory.

``write_report(run_dir)`` reads what a run directory holds (config.toml, env.json, run.json,
history.jsonl, steps.jsonl, metrics.json, predictions/, stats.jsonl, diagnostics.json, the best checkpoint and,
for the example images, the run's data set) and writes ``report.html`` beside it, with every
figure inlined as a base64 PNG and also saved as ``figures/<key>.png`` (:mod:`cnnlab.report._page`).

* Sections are entries of the ``SECTIONS`` registry, drawn in registration order; each is
  ``fn(report: RunReport) -> Markup | None`` (None: nothing to show), the Markup rendered by a
  template: the built-in ones by their macro in ``templates/run.html``, with the values the
  section read (user strings stay plain strings: the template escapes them). A section that
  raises is replaced by a visible note, so a failed or still-running run renders what exists.
* Metrics are read from metrics.json (computed once by :mod:`cnnlab.metrics`), never recomputed.
* Figures come from :mod:`cnnlab.report.plots` (one colorblind-safe style); the inside-the-model
  figures from :mod:`cnnlab.report.explain`: any error there leaves the figure out with a note.
* Findings of ``cnnlab diagnose`` fill the diagnostics section; ``FINDING_FIGURES`` is the hook
  through which a check can add a figure to its finding.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from markupsafe import Markup

from .. import rundir as rd
from .._toml import flatten
from ..data import Augmenter, DataSplits, Normalizer, load_data
from ..errors import UserError
from ..experiment import load_config
from ..inference import load_model
from ..lifecycle import read_status, shown_status, stop_reason_of
from ..models import count_parameters
from ..registry import Registry
from ..train import read_stats
from .explain import gradient_flow_figures, model_figures
from ._page import Page
from .charts import curves_chart
from .html import Section, fmt, fmt_seconds, note, page_template
from .plots import confusion_figure, curves_figure, image_grid_figure, roc_figure, steps_figure
from .sweep import is_sweep_dir, write_sweep_report

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Per-class tables longer than this fold into a <details> element (CIFAR-100: 100 rows per split),
# and are cut at PER_CLASS_MAX_ROWS rows (the figures and metrics.json hold every class).
PER_CLASS_OPEN_ROWS = 30
PER_CLASS_MAX_ROWS = 200
# Splits whose confusion matrices and ROC curves are drawn: the test split, the one a run is judged
# by. Train and val get their tables only: each split's two figures cost CPU time (docs/report.md,
# "Cost"), and the report is written at the end of every run (sweeps included).
FIGURE_SPLITS = ("test",)
# One ROC curve per class stops being readable (and costs a roc_curve per class) past this.
ROC_CURVES_MAX_CLASSES = 100


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

    def __init__(self, run_dir: Path, page: Page, data: DataSplits | None = None):
        # A file the run has not written yet (a running or failed run) is left out of the page; a
        # damaged one is a UserError naming it.
        self.dir, self.page = Path(run_dir), page
        self.status: dict[str, Any] = read_status(self.dir, strict=True)
        self.env: dict[str, Any] = self._json(rd.ENV) or {}
        self.metrics: dict[str, Any] = rd.read_metrics(self.dir)
        self.diagnostics: dict[str, Any] | None = self._json(rd.DIAGNOSTICS)
        self.history = rd.read_history(self.dir)
        self.steps = rd.read_jsonl(self.dir / rd.STEPS, ("step", "loss"))  # [] without [log] every_steps
        self.stats = read_stats(self.dir)
        self.config_text = rd.text_file(self.dir / rd.CONFIG)
        self.cfg = None
        self.cfg_error: str | None = None
        try:
            self.cfg = load_config(self.dir / rd.CONFIG)
        except Exception as e:  # an older or hand-edited config: the page still shows the files
            self.cfg_error = str(e)
        self._cache: dict[str, Any] = {}
        if data is not None:
            self._cache["data"] = data

    # ------------------------------------------------------------------------- file reading
    def _json(self, name: str) -> Any:
        p = self.dir / name
        return rd.read_json(p) if p.exists() else None

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
            p = self.dir / rd.PREDICTIONS / rd.prediction_file(split)
            if not p.is_file():
                raise rd.damaged(p, "it is missing or not a regular file")
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return self._lazy(f"pred:{split}", load)

    def model(self):
        """(model in eval mode on the CPU, checkpoint dict, config) of the best checkpoint."""
        def load():
            return load_model(self.dir, "best", torch.device("cpu"))
        return self._lazy("model", load)

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.model()[1]["meta"]

    def data(self) -> DataSplits:
        """The run's data splits, loaded as the run loaded them (no download; a relative data path
        is also tried from the folder the run was started in)."""
        def load():
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
        reason = stop_reason_of(self.status)
        if reason is not None and reason.is_early and self.history:
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
    p = Path(run_dir) / rd.SPLITS
    if not p.is_file():  # missing (a run that has not written it) or not a file cnnlab writes
        return {}
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: int(z[k].shape[0]) for k in z.files}
    except Exception:  # a damaged file: the summary shows no split sizes
        return {}


def parameter_count(run_dir: Path, report: RunReport | None = None) -> tuple[int, int] | None:
    """(total, trainable) parameters of the run's model, built from its best checkpoint; None
    when there is no checkpoint (the run stopped before its first epoch)."""
    try:
        model = (report.model() if report else _load_model_cpu(run_dir))[0]
    except Exception:
        return None
    return count_parameters(model)


def _load_model_cpu(run_dir: Path):
    return load_model(run_dir, "best", torch.device("cpu"))


# ----------------------------------------------------------------------------------- sections
# Each built-in section reads the run and hands plain values (user strings as they are) to its
# macro in templates/run.html; figures arrive as rendered Markup from r.page.figure.
@SECTIONS.register("summary", summary="name, data, model, device, duration, final metrics")
def section_summary(r: RunReport) -> Markup:
    st, env, cfg = r.status, r.env, r.cfg
    status = shown_status(r.dir, st) if st else "unknown"
    if st.get("error"):
        status += f" ({st['error']})"
    elif st.get("stop_message") or st.get("stop_reason"):
        status += f" ({st.get('stop_message') or st['stop_reason']})"
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
    items: list[tuple[str, Any]] = [
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
    rows = None
    if r.metrics:
        rows = []
        for split, m in r.metrics.items():
            if not isinstance(m, dict) or "accuracy" not in m:
                continue
            mac = m.get("macro", {})
            rows.append([split, fmt(m.get("n")), fmt(m["accuracy"]), fmt(m.get("loss")), fmt(mac.get("precision")),
                         fmt(mac.get("recall")), fmt(mac.get("f1")), fmt(mac.get("auc"))])
    return page_template("run").summary(items, r.cfg_error, rows)


@SECTIONS.register("curves", summary="loss, accuracy and learning rate per epoch; per step with [log] every_steps")
def section_curves(r: RunReport) -> Markup:
    if not r.history:
        return page_template("run").curves(None, _steps_figure(r))
    best, stop = r.best_epoch(), r.stop_epoch()
    fig = curves_figure(r.history, best, stop)
    marks = []
    if best:
        marks.append(f"the dashed line marks the best epoch ({best}, whose weights best.pt holds)")
    if stop:
        marks.append(f"the dotted line the early stop after epoch {stop}")
    said = "; ".join(marks)
    caption = ("Loss and accuracy of the training split (as trained: augmented, dropout on) and the validation "
               "split per epoch; the learning rate at each epoch's end. " + said[:1].upper() + said[1:] + ("." if said else ""))
    return page_template("run").curves(r.page.figure("curves", fig, caption), _steps_figure(r),
                                       r.page.chart(curves_chart(r.history, best, stop, chart_id="chart-curves"), caption))


def _steps_figure(r: RunReport) -> Markup | None:
    """The per-step figure (figures/steps.png) when steps.jsonl holds at least two steps, else None."""
    if len(r.steps) < 2:
        return None
    cfg_every = r.cfg.log.every_steps if r.cfg else None
    every = f"every {cfg_every} optimizer steps" if cfg_every else "at the logged optimizer steps"
    caption = (f"Training loss and accuracy of single batches (as trained: augmented, dropout on), {every} "
               f"(steps.jsonl, [log] every_steps).")
    return r.page.figure("steps", steps_figure(r.steps), caption)


_PER_CLASS_COLUMNS = ("precision", "recall", "specificity", "f1", "auc")


def _per_class(split: str, m: dict[str, Any]) -> dict[str, Any]:
    """One split's context for the metrics macro: the per-class rows (at most PER_CLASS_MAX_ROWS),
    the macro and weighted averages, and whether the table folds."""
    pc, names = m["per_class"], [str(c) for c in m["class_names"]]
    k = len(names)
    rows = [[names[i], *[fmt(pc[c][i]) for c in _PER_CLASS_COLUMNS], fmt(pc["support"][i])]
            for i in range(min(k, PER_CLASS_MAX_ROWS))]
    total = int(sum(pc["support"]))
    foot = [[f"{label} avg", *[fmt(m[label].get(c)) for c in _PER_CLASS_COLUMNS], fmt(total)]
            for label in ("macro", "weighted")]
    return {"name": split, "accuracy": fmt(m["accuracy"]), "n": fmt(m.get("n")), "k": k, "rows": rows, "foot": foot,
            "folded": k > PER_CLASS_OPEN_ROWS, "cut": k > PER_CLASS_MAX_ROWS, "figures": []}


@SECTIONS.register("metrics", summary="per-class metrics, confusion matrices and ROC curves per split")
def section_metrics(r: RunReport) -> Markup:
    if not r.metrics:
        return note("no metrics.json yet: the run has not finished its final evaluation.")
    splits = []
    for split, m in r.metrics.items():
        if not isinstance(m, dict) or "per_class" not in m:
            continue
        ctx = _per_class(split, m)
        splits.append(ctx)
        if split in FIGURE_SPLITS:
            ctx["figures"] = _metric_figures(r, split, m)
    return page_template("run").metrics(splits)


def _metric_figures(r: RunReport, split: str, m: dict[str, Any]) -> list[Markup]:
    """The confusion matrix and the ROC curves of one split, or a note for each left out."""
    k = len(m["class_names"])
    if m.get("confusion_matrix") is None:  # not stored past CONFUSION_JSON_MAX_CLASSES
        figs = [note(f"{split} confusion matrix not stored for {k:,} classes (metrics.json keeps it up to "
                     f"{rd.CONFUSION_JSON_MAX_CLASSES:,}); predictions/{split}.npz holds y_true and y_prob to rebuild it.")]
    else:
        figs = [r.page.figure(f"confusion_{split}", confusion_figure(m["confusion_matrix"], m["class_names"]),
                              f"{split} confusion matrix: counts, and each row divided by the class's support "
                              f"(the diagonal is the recall of each class).")]
    try:
        if k > ROC_CURVES_MAX_CLASSES:
            raise UserError(f"not drawn for more than {ROC_CURVES_MAX_CLASSES} classes ({k:,}: one curve each "
                            f"would be unreadable); metrics.json has every class's AUC")
        pred = r.predictions(split)
        figs.append(r.page.figure(f"roc_{split}", roc_figure(pred["y_true"], pred["y_prob"], m["class_names"],
                                                             m["per_class"].get("auc"), f"{split}: one-vs-rest ROC"),
                                  f"{split} ROC curves, one class against the rest; AUC values from metrics.json "
                                  f"(macro {fmt(m['macro'].get('auc'))})."))
    except Exception as e:
        figs.append(note(f"{split} ROC curves left out: {_why(e)}"))
    return figs


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


# Training images shown before and after augmentation (one row each).
AUGMENT_EXAMPLES = 8


@SECTIONS.register("augmentation", summary="training images before and after [data.augment]: what the model saw")
def section_augmentation(r: RunReport) -> Markup | None:
    """Training images (the first of each class), and the same images as one batch would augment them
    (the run's [data.augment], per-class settings and mixup/cutmix included, drawn from the run's
    seed: one draw of what the model saw, not the exact batch of any epoch)."""
    if r.cfg is None:
        return None
    aug = r.cfg.data.augment
    try:
        train = r.data().train
        augmenter = Augmenter(aug, r.class_names, tuple(train.x.shape[1:]), "cpu")
    except Exception as e:
        return note(f"augmented images left out: the run's images could not be loaded ({_why(e)}).")
    if not augmenter.ops:
        return None
    # One image of each class first (a split is often sorted by class), then the next ones.
    firsts = [int(i) for i in np.unique(train.y.numpy(), return_index=True)[1]][:AUGMENT_EXAMPLES]
    rest = [i for i in range(min(len(train), 4 * AUGMENT_EXAMPLES)) if i not in firsts]
    rows = torch.tensor((firsts + rest)[:AUGMENT_EXAMPLES], dtype=torch.long)
    x, y = train.x[rows], train.y[rows]  # uint8 (n, C, H, W), int64 (n,)
    gen = torch.Generator().manual_seed(r.cfg.seed)
    flips = torch.rand(len(x), generator=gen) < 0.5 if aug.hflip == "alternate" else None
    seen, soft = augmenter(x, y, gen, flips)
    seen = seen.float().round().clamp(0, 255).to(torch.uint8)  # float 0..255 when a float op is on
    names = r.class_names
    caps = [names[int(c)] for c in y]
    if soft is not None:  # the mixed targets: the two largest shares
        caps_seen = []
        for row in soft:
            top = torch.topk(row, 2)
            parts = [f"{names[int(i)]} {v:.0%}" for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0.005]
            caps_seen.append("\n".join(parts))
    else:
        caps_seen = caps
    images = torch.cat([x, seen]).numpy()
    fig = image_grid_figure(images, [_short(c) for c in caps + caps_seen], [False] * len(images), ncols=len(x))
    return r.page.figure("augmentation", fig, f"Top row: {len(x)} training images (the first of each class); bottom "
                         "row: the same "
                         f"images through this run's augmentation ({', '.join(augmenter.ops)}), drawn once from the "
                         "run's seed" + ("; captions give the mixed targets" if soft is not None else "") + ".")


def _examples_cfg(r: RunReport) -> tuple[int, int, int]:
    rc = r.cfg.report if r.cfg else None
    return (rc.examples, rc.explain_images, rc.probe_images) if rc else (16, 4, 256)


@SECTIONS.register("examples", summary="the most confidently wrong test images and correct ones per class")
def section_examples(r: RunReport) -> Markup | None:
    n, _, _ = _examples_cfg(r)
    if n == 0:
        return None
    split = "test"
    if not (r.dir / rd.PREDICTIONS / rd.prediction_file(split)).exists():
        return note("no test predictions yet: the run has not finished its final evaluation.")
    try:
        x, pred = r.split_images(split)
    except Exception as e:
        return note(f"example images left out: the run's images could not be loaded ({_why(e)}).")
    y, prob = pred["y_true"], pred["y_prob"].astype(np.float64)
    names = r.class_names
    wrong, right = _choose_examples(y, prob, n, 2, n)
    wrong_fig = right_fig = None
    if len(wrong):
        caps = [f"true {names[y[i]]}\npred {names[prob[i].argmax()]} {prob[i].max():.0%}" for i in wrong]
        fig = image_grid_figure(x[wrong], [_short(c) for c in caps], [True] * len(wrong))
        wrong_fig = r.page.figure("examples_wrong", fig, f"The {len(wrong)} most confidently wrong test images "
                                  f"(of {int((prob.argmax(1) != y).sum()):,} wrong): true class, predicted class and "
                                  f"the predicted class's probability.")
    if len(right):
        caps = [f"{names[y[i]]}\n{prob[i].max():.0%}" for i in right]
        fig = image_grid_figure(x[right], [_short(c) for c in caps], [False] * len(right))
        right_fig = r.page.figure("examples_right", fig, "Correct test images, the two most confident of each class "
                                  "(in class order): class and its predicted probability.")
    return page_template("run").examples(wrong_fig, right_fig)


def _short(caption: str, width: int = 18) -> str:
    return "\n".join(line if len(line) <= width else line[: width - 1] + "…" for line in caption.split("\n"))


def _explain_inputs(r: RunReport, k: int, probe_n: int):
    """Images for the explanations: up to k test images, half the most confidently wrong, the rest
    correct (one per class first), with their labels and predictions; and the probe batch (the
    first ``probe_n`` training images)."""
    x, pred = r.split_images("test")
    y, prob = pred["y_true"], pred["y_prob"].astype(np.float64)
    wrong, right = _choose_examples(y, prob, k // 2, 1, k)
    rows = np.concatenate([wrong, right[: k - len(wrong)]]).astype(np.int64)
    probe = r.data().train.x[:probe_n]  # uint8 (P, C, H, W) torch tensor, CPU
    return torch.from_numpy(x[rows]), y[rows], prob[rows].argmax(axis=1), probe


@SECTIONS.register("model", summary="feature maps, saliency, Grad-CAM, weights, activations, gradient flow")
def section_model(r: RunReport) -> Markup | None:
    _, k, probe_n = _examples_cfg(r)
    out: list[tuple[str | None, Markup]] = []  # (heading or None, figure or note)
    if k > 0:
        try:
            model, state, _ = r.model()
            meta = state["meta"]
            images, labels, preds, probe = _explain_inputs(r, k, probe_n)
            norm = Normalizer(meta["mean"], meta["std"], torch.device("cpu"))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                figs = model_figures(model, norm, images, labels, preds, list(meta["class_names"]), probe)
            # explain leaves out a figure it cannot draw with a warning: show it on the page.
            out.extend((None, note(str(w.message))) for w in caught if str(w.message).startswith("explain:"))
            out.extend((mf.title, r.page.figure(mf.key, mf.figure, mf.caption, alt=mf.title)) for mf in figs)
            if not figs:
                out.append((None, note("this model gives no inside-the-model figures.")))
        except Exception as e:
            out.append((None, note(f"feature maps, saliency and Grad-CAM, weight and activation distributions left "
                                   f"out: {_why(e)}")))
    try:
        if not r.stats:
            out.append((None, note("no stats.jsonl: gradient flow was not recorded ([diagnostics] stats_every = 0, "
                                   "or no epoch finished).")))
        else:
            out.extend((mf.title, r.page.figure(mf.key, mf.figure, mf.caption, alt=mf.title))
                       for mf in gradient_flow_figures(r.stats))
    except Exception as e:
        out.append((None, note(f"gradient flow left out: {_why(e)}")))
    return page_template("run").model(out) if out else None


@SECTIONS.register("diagnostics", summary="the findings of cnnlab diagnose")
def section_diagnostics(r: RunReport) -> Markup:
    d = r.diagnostics
    if d is None:
        return note(f"no diagnostics.json: run `cnnlab diagnose {r.dir}` to write it.")
    findings = []
    for f in d.get("findings", []):
        fid = str(f.get("id", ""))
        figure = None
        if fid in FINDING_FIGURES:
            try:
                fig = FINDING_FIGURES.get(fid)(r, f)
                if fig is not None:
                    figure = r.page.figure(f"diagnostic_{fid}", fig, f.get("title", ""))
            except Exception as e:
                figure = note(f"figure left out: {_why(e)}")
        findings.append({"severity": str(f.get("severity", "info")), "title": f.get("title", ""), "id": fid,
                         "evidence": f.get("evidence", ""), "why": f.get("why", ""),
                         "remedies": list(f.get("remedies") or []), "figure": figure})
    return page_template("run").diagnostics(list(d.get("counts", {}).items()), d.get("created", "-"), findings)


@SECTIONS.register("config", summary="the resolved config.toml and env.json")
def section_config(r: RunReport) -> Markup:
    env = [(k, json.dumps(v) if isinstance(v, (list, dict)) else ("-" if v is None else v))
           for k, v in flatten(r.env).items()]
    return page_template("run").config(r.config_text, f"cnnlab run {r.dir / rd.CONFIG}", env)


SECTION_TITLES = {"summary": "Summary", "curves": "Curves", "metrics": "Metrics", "examples": "Examples",
                  "model": "Inside the model", "diagnostics": "Diagnostics", "config": "Config and environment"}


def _draw_sections(ctx: Any, registry: Registry, on_section: Callable[[int, int], None] | None = None) -> list[Section]:
    """Each entry of ``registry`` drawn for ``ctx``; ``on_section(done, total)`` before each one
    and once at the end (sections done of all), for a progress display."""
    sections = []
    entries = list(registry)
    for i, entry in enumerate(entries):
        if on_section is not None:
            on_section(i, len(entries))
        try:
            body = entry.obj(ctx)
        except Exception as e:  # one broken section must not cost the page
            body = note(f"this section could not be drawn: {_why(e)}")
        if body is not None:
            sections.append(Section(entry.name, SECTION_TITLES.get(entry.name, entry.name.replace("_", " ").capitalize()),
                                    body))
    if on_section is not None:
        on_section(len(entries), len(entries))
    return sections


# ================================================================================== entry points
def write_report(run_dir: str | Path, data: DataSplits | None = None, quiet: bool = True,
                 on_section: Callable[[int, int], None] | None = None) -> Path:
    """Write ``report.html`` (and ``figures/*.png``) in a run directory, or the sweep report in a
    sweep directory; returns the page's path. ``data``: the run's splits when the caller has them
    (saves loading the data set again). ``on_section(done, total)``: called as the run report's
    sections are drawn (a progress display; not for a sweep report). A folder that is neither
    raises a UserError."""
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
    sections = _draw_sections(r, SECTIONS, on_section)
    out = path / rd.REPORT
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


def report_after_run(run_dir: Path, quiet: bool, data: DataSplits | None = None,
                     on_section: Callable[[int, int], None] | None = None) -> Path | None:
    """The end of ``cnnlab run``: write the report unless ``[report] enabled = false``; returns
    the page written, or None (skipped or failed). Never raises (a finished run stays finished): a
    failure prints one warning line."""
    if not reports_enabled():
        return None
    try:
        if not load_config(Path(run_dir) / rd.CONFIG).report.enabled:
            return None
        path = write_report(run_dir, data=data, quiet=True, on_section=on_section)
        if not quiet:
            print(f"report: {path}", flush=True)
        return path
    except Exception as e:
        print(f"warning: report not written for {run_dir}: {_why(e)}", file=sys.stderr, flush=True)
        return None

