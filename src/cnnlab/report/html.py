"""The HTML of every cnnlab page: Jinja2 templates (``templates/``) rendered with autoescaping on,
the cell types their tables understand, number formats and relative links.

Escaping holds by construction: every value a template prints is HTML-escaped unless it is
``Markup``. Markup comes from these templates (a rendered macro, section or figure) and from three
places in Python that build no text of users: ``breakable`` (escapes first, then adds <wbr>),
``Page.chart`` (a fragment of ``charts``, which escapes its own strings) and plotly.js. Run names,
class names, file names, config values and diagnostics are passed as plain strings, so a class
named ``<script>alert(1)</script>`` shows as that text on every page.

- ``templates/base.html``: the layout (header, navigation, sections, footer) with the one inline
  stylesheet ``style.css``; ``render_page`` fills it.
- ``templates/macros.html``: tables, key/value tables, figures, notes; ``note`` and ``png_figure``
  call them from Python.
- ``templates/<page>.html``: one template per page (``run``, ``sweep``, ``compare``, ``index``),
  a macro per section; ``page_template(name)`` gives them to Python.

Pages need no network and no font download: CSS is inline, images are ``data:`` URLs, links are
relative. This module imports no matplotlib (the runs index renders through it alone); figures
are drawn and saved by :mod:`cnnlab.report._page`.
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, NamedTuple
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from .._version import __version__


@dataclass(frozen=True)
class Link:
    """A table cell that links ``text`` to ``href`` (a relative URL, see ``href``)."""

    text: str
    href: str


@dataclass(frozen=True)
class Hint:
    """A table cell whose ``text`` explains itself in a tooltip (``title``)."""

    text: str
    title: str


@dataclass(frozen=True)
class Lines:
    """A table cell of several values, one per line."""

    items: tuple[Any, ...]


class Section(NamedTuple):
    """One section of a page: its anchor ``id``, its heading and its body (rendered Markup)."""

    id: str
    title: str
    body: Markup


def breakable(text: Any) -> Markup:
    """``text`` escaped, with a line-break opportunity (``<wbr>``) after each ``.`` and ``_``: long
    config keys in table headers wrap there instead of widening the table."""
    s = str(escape(text))
    return Markup(s.replace(".", ".<wbr>").replace("_", "_<wbr>"))


ENV = Environment(loader=PackageLoader("cnnlab.report", "templates"), autoescape=True, undefined=StrictUndefined,
                  trim_blocks=True, lstrip_blocks=True)
ENV.filters["breakable"] = breakable
ENV.tests.update(link=lambda v: isinstance(v, Link), hint=lambda v: isinstance(v, Hint),
                 lines=lambda v: isinstance(v, Lines))


def page_template(name: str) -> Any:
    """The macros of ``templates/<name>.html`` (one per section of that page), callable from Python;
    each returns Markup."""
    return ENV.get_template(f"{name}.html").module


def note(text: Any) -> Markup:
    """A visible note: what is left out of the page and why."""
    return page_template("macros").note(text)


def png_figure(data: bytes, caption: Any = "", alt: Any = "") -> Markup:
    """PNG bytes as an inline ``<figure>`` (a base64 ``data:`` URL) with an optional caption."""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return page_template("macros").figure(src, caption, alt)


def render_page(title: str, sections: Iterable[Section], subtitle: Any = "", scripts: Iterable[Markup] = ()) -> str:
    """A whole page (``templates/base.html``): header, navigation (with two sections or more), the
    sections and a footer naming the cnnlab version. ``scripts``: whole ``<script>`` elements as
    Markup (plotly.js, inlined once); none by default."""
    return ENV.get_template("base.html").render(
        title=title, subtitle=subtitle, sections=list(sections), scripts=list(scripts), version=__version__,
        made=datetime.now().isoformat(timespec="seconds"))


def href(target: Path, base: Path) -> str:
    """A relative URL from the folder ``base`` to ``target`` (percent-encoded)."""
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
    """A duration for a table: seconds below two minutes, minutes below two hours, else hours."""
    if s is None:
        return "-"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"
