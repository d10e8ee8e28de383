"""``Page``: a page with figures. Each matplotlib figure is saved as ``<out_dir>/figures/<key>.png``
(for slides and papers) and inlined into the page as a base64 PNG (the page stays one file).

Kept apart from :mod:`cnnlab.report.html` because saving figures needs matplotlib, which the runs
index (HTML only) does not import."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from markupsafe import Markup

from ..rundir import FIGURES
from .charts import plotly_script
from .html import Section, page_template, png_figure, render_page
from .plots import save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _safe_key(key: str) -> str:
    """A figure key as a file name: letters, digits, ``._-``; anything else becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(key)).strip("._") or "figure"


class Page:
    """One HTML page under construction: its figures go to ``<out_dir>/figures/<key>.png`` and
    inline into the page as base64 PNG. ``scripts``: whole ``<script>`` elements (Markup) the page
    inlines once in its head, such as plotly.js for interactive charts; none by default."""

    def __init__(self, title: str, out_dir: Path, subtitle: Any = ""):
        self.title, self.subtitle = title, subtitle
        self.out_dir = Path(out_dir)
        self.fig_dir = self.out_dir / FIGURES
        self.figure_keys: list[str] = []
        self.scripts: list[Markup] = []

    def figure(self, key: str, fig: "Figure", caption: Any = "", alt: str | None = None) -> Markup:
        """Save ``fig`` as figures/<key>.png (atomically) and return it as an inline <figure>.
        A key used twice on one page gets a numbered suffix."""
        base = _safe_key(key)
        name, i = base, 2
        while name in self.figure_keys:
            name, i = f"{base}-{i}", i + 1
        self.figure_keys.append(name)
        data = save_png(fig, self.fig_dir / f"{name}.png")
        fig.clear()  # a Figure not made by pyplot is freed when unreferenced; clear() drops its artists now
        return png_figure(data, caption, alt or (str(caption) or name))

    def chart(self, fragment: str, caption: Any = "") -> Markup | None:
        """An interactive chart (an HTML fragment of :mod:`cnnlab.report.charts`, whose user strings
        it escapes itself) with its caption, for this page; plotly.js is inlined once, with the
        page's first chart. An empty fragment (nothing to draw) gives None."""
        if not fragment:
            return None
        script = Markup(plotly_script())
        if script not in self.scripts:
            self.scripts.append(script)
        return page_template("macros").interactive(Markup(fragment), caption)

    def render(self, sections: Iterable[Section]) -> str:
        """The whole page: header, navigation, the sections and the footer."""
        return render_page(self.title, sections, self.subtitle, self.scripts)
