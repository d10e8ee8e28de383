"""What a run tells people: pages, figures, comparisons and the loggers they already use.

- ``html``: the HTML of every page (``Markup``, ``Page``, tables, the stylesheet);
- ``plots``: matplotlib figures in one colorblind-safe style;
- ``explain``: inside-the-model figures (feature maps, saliency, Grad-CAM, distributions, gradient flow);
- ``run``: the run report (``write_report``, its ``SECTIONS`` and ``FINDING_FIGURES`` registries);
- ``sweep``: the sweep report; ``index``: the runs index; ``compare``: runs side by side;
- ``loggers``: TensorBoard and MLflow callbacks (``[log]``).
"""

from . import plots
from .compare import compare_rows, default_out_dir, print_compare, summarize, write_compare
from .index import write_runs_index
from .loggers import MLflowLogger, TensorBoardLogger, build_loggers, check_loggers, close_loggers, log_final
from .run import FINDING_FIGURES, SECTIONS, RunReport, parameter_count, report_after_run, reports_enabled, write_report
from .sweep import is_sweep_dir, read_sweep, write_sweep_report

__all__ = [
    "plots", "write_report", "report_after_run", "reports_enabled", "RunReport", "SECTIONS", "FINDING_FIGURES",
    "parameter_count", "write_sweep_report", "read_sweep", "is_sweep_dir", "write_runs_index", "compare_rows",
    "print_compare", "write_compare", "default_out_dir", "summarize", "TensorBoardLogger", "MLflowLogger",
    "build_loggers", "check_loggers", "close_loggers", "log_final",
]
