"""The engine resolver: a pure function from (spec, hardware, config) to a Plan or a Rejection.

No I/O and no Kubernetes or server imports (an import-linter contract and a
test enforce it): the operator, ``turnout plan`` and ``turnout up`` all
call the same function and get the same answer for the same input.
"""

from turnout.resolver.core import resolve
from turnout.resolver.engines import DEVICE, ENGINES, PREFERENCE
from turnout.resolver.plan import (
    EngineReason,
    Placement,
    Plan,
    Rejection,
    ResolvedModel,
    explain_rejection,
    grouped_reasons,
)

__all__ = [
    "DEVICE",
    "ENGINES",
    "PREFERENCE",
    "EngineReason",
    "Placement",
    "Plan",
    "Rejection",
    "ResolvedModel",
    "explain_rejection",
    "grouped_reasons",
    "resolve",
]
