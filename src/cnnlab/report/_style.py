"""What the static figures (``plots``, matplotlib) and the interactive charts (``charts``, plotly)
share without importing either: the colors, and how a searched parameter's value is written in
tables, axes and hover text (the sweep's printed table too)."""

from __future__ import annotations

import json
from typing import Any

# Okabe & Ito (2008), "Color Universal Design": black excluded, it is kept for text and marks.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def fmt_param(v: Any) -> str:
    """A parameter value as the sweep tables write it: ``-`` for None (a key of a later stage, not
    searched yet: the experiment's own value applies), 4 significant digits for floats, JSON for
    lists and tables."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)
