"""The pages' templates (cnnlab.report.html, templates/): autoescaping holds by construction, table
cells render as their types say, the layout carries an optional script slot and an interactive
chart slot, and the HTML modules the runs index uses import nothing that draws."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from markupsafe import Markup, escape

from cnnlab.report import html
from cnnlab.report.html import Hint, Lines, Link, Section, page_template, render_page

EVIL = "<script>alert(1)</script>"
REPORT_SRC = Path(html.__file__).parent


def test_every_page_template_escapes_what_it_is_given():
    """Each macro of each page template, called with the user's string in every slot it prints, shows
    it as text: autoescaping is on for every template, not at each call site."""
    run, sweep, compare, index = (page_template(n) for n in ("run", "sweep", "compare", "index"))
    finding = {"severity": EVIL, "title": EVIL, "id": EVIL, "evidence": EVIL, "why": EVIL, "remedies": [EVIL],
               "figure": None}
    split = {"name": EVIL, "accuracy": EVIL, "n": EVIL, "k": 1, "rows": [[EVIL] * 7], "foot": [[EVIL] * 7],
             "folded": True, "cut": False, "figures": [EVIL]}
    fragments = [
        run.summary([(EVIL, EVIL)], EVIL, [[EVIL] * 8]),
        run.curves(EVIL, EVIL), run.curves(None, None),
        run.metrics([split]),
        run.examples(EVIL, EVIL),
        run.model([(EVIL, EVIL)]),
        run.diagnostics([(EVIL, 1)], EVIL, [finding]),
        run.config(EVIL, EVIL, [(EVIL, EVIL)]),
        sweep.ranking(1, 1, EVIL, EVIL, EVIL, EVIL, EVIL, EVIL, [EVIL], [[EVIL, Lines((EVIL,)), [Link(EVIL, EVIL)]]],
                      (1,), EVIL),
        sweep.figures(EVIL, EVIL, [EVIL], [[EVIL, EVIL]]),
        compare.side_by_side([EVIL], [[EVIL]], 1, 2, [{"label": EVIL, "dir": EVIL, "report": EVIL}]),
        compare.figures(EVIL, EVIL),
        index.runs([[EVIL, Hint(EVIL, EVIL), Link(EVIL, EVIL)]], EVIL), index.runs([], EVIL),
        index.sweeps([[EVIL, EVIL]]), index.comparisons([[EVIL, EVIL]]),
    ]
    for fragment in fragments:
        assert isinstance(fragment, Markup)
        assert "<script" not in fragment
    assert str(escape(EVIL)) in run.config(EVIL, "cnnlab run x", [])  # shown, as text
    page = render_page(EVIL, [Section("a", EVIL, run.examples(EVIL, None)), Section("b", EVIL, Markup("<p>ok</p>"))],
                       EVIL)
    assert "<script" not in page and page.count(str(escape(EVIL))) >= 5 and "<p>ok</p>" in page


def test_a_missing_value_is_an_error_not_an_empty_cell():
    with pytest.raises(Exception, match="'command' was not provided"):
        page_template("run").config("a")


def test_cells_render_links_hints_and_lines():
    t = str(page_template("macros").table(["name", "train.lr"], [[Link("report", "a%20b/report.html"),
                                                                 Hint("damaged", 'a "quoted" <reason>'),
                                                                 Lines(("lr = 1", "bs = <2>"))]]))
    assert '<a href="a%20b/report.html">report</a>' in t
    assert '<span title="a &#34;quoted&#34; &lt;reason&gt;">damaged</span>' in t
    assert "lr = 1<br>bs = &lt;2&gt;" in t
    assert "<th>train.<wbr>lr</th>" in t  # a header breaks after its dots ...
    assert str(html.breakable("<a>.b")) == "&lt;a&gt;.<wbr>b"  # ... escaped before <wbr> goes in


def test_the_layout_has_a_script_slot_empty_by_default():
    sections = [Section("x", "X", Markup("<p>body</p>")), Section("y", "Y", Markup(""))]
    page = render_page("title", sections)
    assert "<script" not in page and '<nav><a href="#x">X</a><a href="#y">Y</a></nav>' in page
    assert '<section id="x">\n<h2>X</h2>\n<p>body</p>\n</section>' in page
    assert '<meta name="viewport"' in page and "<style>" in page and "url(" not in page
    one = render_page("title", sections, scripts=[Markup("<script>var a = 1 < 2;</script>")])
    assert one.count("<script>var a = 1 < 2;</script>") == 1
    # A script given as a plain string is text, not code: nothing runs that was not meant to.
    assert "<script>" not in render_page("t", sections, scripts=["<script>alert(1)</script>"])


def test_an_interactive_chart_takes_the_static_figures_place_and_keeps_it_for_no_script():
    static = Markup('<figure><img src="data:image/png;base64,AA=="></figure>')
    assert page_template("macros").chart(static) == static
    chart = str(page_template("macros").chart(static, Markup('<div id="c"></div>')))
    assert chart == f'<div class="chart"><div id="c"></div></div><noscript>{static}</noscript>'
    curves = str(page_template("run").curves(static, None, interactive=Markup('<div id="c"></div>')))
    assert '<div class="chart"><div id="c"></div></div>' in curves


def test_the_runs_index_and_html_import_nothing_that_draws():
    """cnnlab runs --html renders through index and html: no matplotlib, torch or optuna there, and no
    figure-saving module of the report package (the other engineer's import budget covers the rest)."""
    banned = {"matplotlib", "torch", "optuna", "cnnlab.report.plots", "cnnlab.report._page", "plotly"}
    for name in ("index.py", "html.py"):
        tree = ast.parse((REPORT_SRC / name).read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ("cnnlab.report." if node.level == 1 else "cnnlab." if node.level == 2 else "") + (node.module or "")
                found |= {base} | {f"{base}.{a.name}" if node.level else base for a in node.names}
        roots = {f.split(".")[0] for f in found} | found
        assert not roots & banned, (name, roots & banned)
    assert "Page" not in vars(html)  # Page, which saves figures, lives in _page
