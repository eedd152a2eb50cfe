"""The modelplane operator: kopf handlers that reconcile ModelDeployments into running workloads.

Entry points: :func:`run_operator` (what ``modelplane operator`` calls) and
:func:`main` (``python -m modelplane.controller``). The RBAC the operator
needs is declared in :mod:`modelplane.controller.rbac`.
"""

from modelplane.controller.app import Options, add_arguments, main, operate, options_from, run_operator
from modelplane.controller.reconcile import Controller

__all__ = ["Controller", "Options", "add_arguments", "main", "operate", "options_from", "run_operator"]
