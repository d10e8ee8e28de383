"""Diagnosis of a run: what went wrong in training, with the evidence and the usual remedies.

- ``findings``: ``Finding``, the ``RunContext`` the checks read, the ``CHECKS`` registry and the
  driver (``diagnose``, ``diagnose_after_run``, ``format_findings``);
- ``checks``: the checks (collapse, plateau, divergence, overfitting, vanishing gradients, ...).

Importing the package registers every check.
"""

from .checks import plateau
from .findings import (CHECKS, SEVERITY_RANK, Finding, RunContext, diagnose, diagnose_after_run, format_findings,
                       load_context, print_findings, report, run_checks)

__all__ = [
    "CHECKS", "SEVERITY_RANK", "Finding", "RunContext", "diagnose", "diagnose_after_run", "format_findings",
    "load_context", "print_findings", "report", "run_checks", "plateau",
]
