"""The turnout operator: kopf handlers that reconcile ModelDeployments into running workloads.

Entry points: :func:`run_operator` (what ``turnout operator`` calls) and
:func:`main` (``python -m turnout.controller``), in :mod:`~turnout.controller.run`. The options are
declared in :mod:`~turnout.controller.options`, the kopf wiring in :mod:`~turnout.controller.handlers`,
and the RBAC the operator needs in :mod:`turnout.controller.rbac`.
"""

from turnout.controller.options import Options, add_arguments, options_from
from turnout.controller.reconcile import Controller
from turnout.controller.run import main, new_controller, operate, run_operator

__all__ = ["Controller", "Options", "add_arguments", "main", "new_controller", "operate", "options_from",
           "run_operator"]
