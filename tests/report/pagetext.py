"""A page's HTML without cnnlab's own scripts (plotly.js, inlined once, and each chart's drawing
script), so a test can check that nothing else is there: no other script, no link that goes online.
plotly.js itself holds URLs in strings (its logo link, its docs), which are not requests."""

from __future__ import annotations

import re

from cnnlab.report.charts import _DRAW_JS, plotly_script

_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def outside_scripts(text: str) -> str:
    """``text`` with the plotly.js bundle and cnnlab's chart scripts removed; any other script stays."""
    text = text.replace(plotly_script(), "")
    ours = "\n(function () {\nvar id = ", _DRAW_JS + "})();\n"  # charts._fragment's script, around its JSON
    return _SCRIPT.sub(lambda m: "" if m.group(1).startswith(ours[0]) and m.group(1).endswith(ours[1]) else m.group(0),
                       text)
