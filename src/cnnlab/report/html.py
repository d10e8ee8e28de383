"""The HTML of every cnnlab page: trusted fragments (``Markup``), escaping, tables, number
formats, the one stylesheet, and ``Page``, which saves each figure as ``figures/<key>.png`` and
inlines it as a base64 PNG.

Every string that is not ``Markup`` is escaped by ``esc``/``tag``: run names, class names, file
names, config values and diagnostics come from users, and a class named
``<script>alert(1)</script>`` must show as text. The pages need no network, no script and no font
download: CSS is inline, images are ``data:`` URLs, links are relative.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable
from urllib.parse import quote

from .._version import __version__
from ..rundir import FIGURES
from .plots import save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class Markup(str):
    """A trusted HTML fragment built by these modules. Every other string is escaped on output."""


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
        base = _safe_key(key)
        name, i = base, 2
        while name in self.figure_keys:
            name, i = f"{base}-{i}", i + 1
        self.figure_keys.append(name)
        data = save_png(fig, self.fig_dir / f"{name}.png")
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


