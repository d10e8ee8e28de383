"""What a run tells people: pages, figures, comparisons and the loggers they already use.

- ``html``: the Jinja2 environment (autoescaping on) and the templates' helpers; ``_page``: ``Page``,
  which saves each figure as figures/<key>.png and inlines it;
- ``plots``: matplotlib figures in one colorblind-safe style; ``charts``: the interactive plotly
  charts (curves, a sweep's objective and parameters, compare's curves);
- ``explain``: inside-the-model figures (feature maps, saliency, Grad-CAM, distributions, gradient flow);
- ``run``: the run report (``write_report``, its ``SECTIONS`` and ``FINDING_FIGURES`` registries);
- ``sweep``: the sweep report; ``index``: the runs index; ``compare``: runs side by side;
- ``loggers``: TensorBoard and MLflow callbacks (``[log]``).
"""

import importlib

# Name -> module of this package that defines it ("plots": the module itself). Loaded on first use
# (PEP 562), as cnnlab.__init__'s API is: `cnnlab runs --html` then loads the runs index and what it
# imports, not the run report's torch and matplotlib. tests/test_imports.py follows this table.
_API = {
    "plots": "plots", "fmt_param": "_style",
    "write_report": "run", "report_after_run": "run", "reports_enabled": "run", "RunReport": "run",
    "SECTIONS": "run", "FINDING_FIGURES": "run", "parameter_count": "run",
    "write_sweep_report": "sweep", "trial_dir": "sweep", "read_sweep": "sweep", "is_sweep_dir": "sweep",
    "write_runs_index": "index",
    "compare_rows": "compare", "print_compare": "compare", "write_compare": "compare",
    "default_out_dir": "compare", "summarize": "compare",
    "TensorBoardLogger": "loggers", "MLflowLogger": "loggers", "build_loggers": "loggers",
    "check_loggers": "loggers", "close_loggers": "loggers", "log_final": "loggers",
}

__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        module = importlib.import_module(f"{__name__}.{_API[name]}")
        return module if _API[name] == name else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
