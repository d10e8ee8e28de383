"""Figures for reports, comparisons and papers: one consistent, colorblind-safe matplotlib style.

Every figure function returns a ``matplotlib.figure.Figure`` built with ``figure(...)`` (never
``pyplot``'s global state, so figures can be drawn from worker threads and never leak);
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

matplotlib.use("Agg")  # files only: no display is needed or wanted (CI, servers, worker threads)

from matplotlib.figure import Figure  # noqa: E402

from .rundir import atomic_write_bytes  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design": black excluded, it is kept for text and marks.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
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
    with style():
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> bytes:
    """Write the figure as a PNG atomically; returns the bytes written."""
    data = png_bytes(fig)
    atomic_write_bytes(path, data)
    return data
