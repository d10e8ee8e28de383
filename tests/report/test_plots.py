"""The report's figure functions (cnnlab.report.plots): each draws from plain data, saves a PNG that
decodes, keeps user text literal (no mathtext), and stays readable with many classes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from PIL import Image

from cnnlab.report import plots

HISTORY = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "train_acc": 0.3 * e, "val_acc": 0.28 * e,
            "lr": 1e-3 / e} for e in range(1, 4)]


def decode(fig: Figure, path=None) -> Image.Image:
    data = plots.save_png(fig, path) if path else plots.png_bytes(fig)
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_plain_escapes_mathtext_and_shortens():
    assert plots.plain("$x$ costs $5") == r"\$x\$ costs \$5"
    assert plots.plain("abcdefghij", 5) == "abcd…"


def test_curves_mark_best_epoch_and_early_stop(tmp_path):
    fig = plots.curves_figure(HISTORY, best_epoch=2, stop_epoch=3)
    loss_ax = fig.axes[0]
    labels = loss_ax.get_legend_handles_labels()[1]
    assert labels == ["train", "val", "best (epoch 2)", "early stop (epoch 3)"]
    assert fig.axes[2].get_yscale() == "log"  # lr
    im = decode(fig, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0 and im.width > 500


def test_curves_of_a_run_without_validation_split():
    hist = [{k: v for k, v in h.items() if not k.startswith("val_")} for h in HISTORY]
    fig = plots.curves_figure(hist)
    assert fig.axes[0].get_legend_handles_labels()[1] == ["train"]
    decode(fig)


def test_confusion_annotates_small_and_not_large_matrices():
    cm = np.array([[5, 1], [2, 7]])
    fig = plots.confusion_figure(cm, ["a$b", "c"])
    assert sorted(texts(fig)) == sorted(["5", "1", "2", "7", "0.83", "0.17", "0.22", "0.78"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [r"a\$b", "c"]
    decode(fig)
    big = plots.confusion_figure(np.eye(100, dtype=int) * 3, [f"class{i}" for i in range(100)])
    assert texts(big) == []  # no 10,000 cell annotations
    assert len(big.axes) == 4  # two heatmaps and their color bars (cells carry no values)
    assert decode(big).width < 2000


def test_roc_legend_uses_given_auc_and_skips_classes_without_positives():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    prob = rng.dirichlet(np.ones(4), size=60)
    prob[np.arange(60), y] += 1.0
    prob /= prob.sum(axis=1, keepdims=True)
    fig = plots.roc_figure(y, prob, ["zero", "one", "two", "never"], [0.91, 0.92, 0.93, None])
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["chance", "zero (AUC 0.910)", "one (AUC 0.920)", "two (AUC 0.930)"]
    decode(fig)
    many = plots.roc_figure(np.arange(30) % 15, rng.dirichlet(np.ones(15), size=30), [str(i) for i in range(15)])
    assert many.axes[0].get_legend() is None
    decode(many)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_shows_every_image_with_its_caption(channels):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(11, channels, 8, 8), dtype=np.uint8)
    caps = [f"true {i}\npred $x" for i in range(11)]
    fig = plots.image_grid_figure(x, caps, [i % 2 == 0 for i in range(11)], ncols=4)
    assert texts(fig) == [plots.plain(c) for c in caps]
    colors = [t.get_color() for t in fig.axes[0].texts]
    assert colors[0] == plots.WRONG and colors[1] == plots.RIGHT
    mosaic = fig.axes[0].images[0].get_array()
    assert mosaic.shape[1] >= 4 * 8 and mosaic.shape[0] >= 3 * 8  # 3 rows of 4 tiles
    # The first tile's pixels are in the mosaic, unchanged (grey images are repeated to RGB).
    tile = np.asarray(mosaic)
    assert any(np.array_equal(tile[r:r + 8, 0:8, 0], x[0][0]) for r in range(tile.shape[0] - 7))
    decode(fig)


def test_comparison_and_sweep_figures_decode():
    fig = plots.compare_curves_figure({"run <a>": HISTORY, "run b": HISTORY[:2]})
    assert [ln.get_label() for ln in fig.axes[2].lines] == ["run <a>", "run b"]
    decode(fig)
    bars = plots.grouped_bars_figure(["cat", "dog"], {"a": [0.5, None], "b": [0.7, 0.9]}, "accuracy")
    assert len(bars.axes[0].patches) == 4
    decode(bars)
    hist = plots.sweep_history_figure([0.5, 0.7, 0.6], "maximize", "val.accuracy")
    best = hist.axes[0].lines[1].get_ydata()
    assert list(best) == [0.5, 0.7, 0.7]
    decode(hist)
    params = plots.sweep_params_figure({"train.lr": [1e-4, 1e-3, 1e-1], "model.name": ["cnn", "mlp", "cnn"]},
                                       [0.5, 0.7, 0.6], "val.accuracy")
    assert params.axes[0].get_xscale() == "log"
    assert [t.get_text() for t in params.axes[1].get_xticklabels()] == ["cnn", "mlp"]
    decode(params)


def test_the_objective_plot_numbers_trials_as_the_table_does():
    """Trial ids start at 0 and skip failed ones: the best, trial 2, sits at x = 2 (not 3)."""
    fig = plots.sweep_history_figure([0.5, 0.9, 0.7], "maximize", "val_acc", trials=[0, 2, 3])
    ax = fig.axes[0]
    assert list(ax.lines[0].get_xdata()) == [0, 2, 3] and "numbered in the table" in ax.get_xlabel()
    stages = plots.sweep_history_figure([0.5, 0.9, 0.7], "maximize", "val_acc", trials=[0, 0, 1])  # repeats
    assert list(stages.axes[0].lines[0].get_xdata()) == [0, 1, 2] and "from 0" in stages.axes[0].get_xlabel()


def _bars_and_legend(fig: Figure):
    """(each bar's box as drawn: clipped to the axes, the legend's box), in display pixels."""
    fig.draw_without_rendering()  # lay out (constrained) so the extents are the saved ones
    ax = fig.axes[0]
    frame = ax.get_window_extent()
    bars = [Bbox.intersection(p.get_window_extent(), frame) for p in ax.patches if np.isfinite(p.get_height())]
    return bars, fig.legends[0].get_window_extent()


def test_per_class_bars_keep_their_legend_off_the_bars():
    """Ten classes, three runs, values up to 1.0 (the compare page's case): the legend sits under the
    axes, where no bar is."""
    rng = np.random.default_rng(0)
    runs = {f"run {i} with a long name": list(rng.uniform(0.9, 1.0, 10)) for i in range(3)}
    runs["run 0 with a long name"][7:] = [1.0, 1.0, 1.0]
    fig = plots.grouped_bars_figure([str(c) for c in range(10)], runs, "test accuracy")
    bars, legend = _bars_and_legend(fig)
    assert len(bars) == 30 and all(b is not None for b in bars) and fig.axes[0].get_legend() is None
    assert not any(legend.overlaps(b) for b in bars)
    assert legend.y1 <= fig.axes[0].get_window_extent().y0  # below the axes
    decode(fig)


def test_per_class_bars_zoom_to_the_values_and_say_so():
    fig = plots.grouped_bars_figure(["cat", "dog"], {"a": [0.97, 1.0], "b": [0.98, None]}, "test accuracy")
    lo, hi = fig.axes[0].get_ylim()
    assert 0.9 < lo < 0.97 and hi == 1.0  # 0.97 and 1.00 differ by a third of the axis, not 3 %
    assert f"axis from {lo:.3g}, not 0" in fig.axes[0].get_ylabel()
    wide = plots.grouped_bars_figure(["cat", "dog"], {"a": [0.1, 0.9]}, "test accuracy")
    assert wide.axes[0].get_ylim() == (0.0, pytest.approx(1.0)) and "axis from" not in wide.axes[0].get_ylabel()
    assert plots.zoomed_limits([None, float("nan")]) is None
    assert plots.zoomed_limits([0.5, 0.5]) == pytest.approx((0.49, 0.51))  # equal values: a small span
    assert plots.zoomed_limits([2.0, 4.0]) == pytest.approx((1.0, 4.3))  # not shares: no clamp to [0, 1]


def test_sweep_parameter_panels_are_half_a_page_wide_each():
    """Six parameters: two panels to a row (not six squeezed into one strip), each drawn at least
    450 px wide in the saved PNG, sharing the objective's axis."""
    keys = ["train.lr", "model.channels", "data.augment.crop_padding", "train.batch_size", "a.dropout", "b.dropout"]
    values = [0.5, 0.7, 0.6, 0.65]
    params = {k: [1e-3, 1e-2, 1e-1, 1.0] if k == "train.lr" else ["x", "y", "x", "y"] for k in keys}
    fig = plots.sweep_params_figure(params, values, "val.accuracy")
    fig.draw_without_rendering()
    boxes = [ax.get_window_extent() for ax in fig.axes]
    assert len(boxes) == 6 and len({round(b.x0) for b in boxes}) == 2 and len({round(b.y0) for b in boxes}) == 3
    assert min(b.width for b in boxes) >= 450 and decode(fig).width <= 1200  # fits a 1,120 px page unscaled
    assert [ax.get_xlabel() for ax in fig.axes] == keys
    assert fig.axes[0].get_xscale() == "log"
    one = plots.sweep_params_figure({"train.lr": [1e-3, 1e-1]}, [0.5, 0.6], "val.accuracy")
    assert len(one.axes) == 1
    odd = plots.sweep_params_figure({k: [1, 2] for k in "abc"}, [0.5, 0.6], "m")
    assert len(odd.axes) == 3  # the fourth cell of the 2 x 2 grid is removed, not drawn empty


def test_the_objective_plot_labels_each_trial_with_its_table_number():
    fig = plots.sweep_history_figure([0.5, 0.9, 0.7], "maximize", "val_acc", trials=[0, 2, 5])
    ax = fig.axes[0]
    assert list(ax.get_xticks()) == [0, 2, 5] and [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "5"]
