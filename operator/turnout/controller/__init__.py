"""The turnout operator: kopf handlers that reconcile ModelDeployments into running workloads.

Entry points: :func:`run_operator` (what ``turnout operator`` calls) and
:func:`main` (``python -m turnout.controller``). The RBAC the operator
needs is declared in :mod:`turnout.controller.rbac`.
"""

from turnout.controller.app import Options, add_arguments, main, operate, options_from, run_operator
from turnout.controller.reconcile import Controller

__all__ = ["Controller", "Options", "add_arguments", "main", "operate", "options_from", "run_operator"]
