"""The engine resolver: a pure function from (spec, hardware, config) to a Plan or a Rejection.

No I/O and no Kubernetes or server imports (an import-linter contract and a
test enforce it): the operator, ``turnout plan`` and ``turnout up`` all
call the same function and get the same answer for the same input.

The names below are imported on first use, so that ``turnout.resolver.engines`` (the engine registry,
read by ``turnout.images`` and the shim) loads without the resolver's core and the API types.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnout.resolver.cache import ResolverCache
    from turnout.resolver.core import resolve
    from turnout.resolver.engines import ENGINES, PREFERENCE
    from turnout.resolver.plan import (
        EngineReason,
        Placement,
        Plan,
        Rejection,
        ResolvedModel,
        explain_rejection,
        grouped_reasons,
    )

_WHERE = {
    "ResolverCache": "cache",
    "resolve": "core",
    "ENGINES": "engines",
    "PREFERENCE": "engines",
    **{name: "plan" for name in ("EngineReason", "Placement", "Plan", "Rejection", "ResolvedModel",
                                 "explain_rejection", "grouped_reasons")},
}

__all__ = [
    "ENGINES",
    "PREFERENCE",
    "EngineReason",
    "Placement",
    "Plan",
    "Rejection",
    "ResolvedModel",
    "ResolverCache",
    "explain_rejection",
    "grouped_reasons",
    "resolve",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
