"""Which backend serves which engine: one dispatch table, imported lazily.

The table is derived from the engine registry (``turnout.resolver.engines``): each engine's module names
its backend per model type as a ``"module:Class"`` string, so that picking a backend imports only that
backend's dependencies (the llama.cpp image has no torch, the vLLM image has no transformers backend code
loaded).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from turnout.resolver import engines
from turnout.shim.backends.base import Backend
from turnout.shimargs import ShimArgs


def backend_table(registry: Iterable[engines.Engine]) -> dict[tuple[str, str | None], str]:
    """(engine, model type) -> ``"module:Class"`` from each engine's declared backends."""
    return {(engine.name, model_type): path for engine in registry for model_type, path in engine.backends.items()}


#: (engine, model type) -> "module:Class"; ``None`` as model type matches any type
BACKENDS: dict[tuple[str, str | None], str] = backend_table(engines.REGISTRY)


def backend_path(engine: str, model_type: str) -> str:
    """The ``module:Class`` serving this engine and model type; ValueError if none does."""
    target = BACKENDS.get((engine, model_type)) or BACKENDS.get((engine, None))
    if target is None:
        served = sorted(t for e, t in BACKENDS if e == engine and t)
        raise ValueError(f"engine {engine!r} cannot serve {model_type!r} models"
                         + (f" (it serves: {', '.join(served)})" if served else ""))
    return target


def backend_class(engine: str, model_type: str) -> type[Backend]:
    """Import and return the backend class for this engine and model type."""
    module_name, _, class_name = backend_path(engine, model_type).partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{module_name}:{class_name} is not a Backend")
    return cls


#: engines with a multi-node mode the shim drives (--nnodes > 1): those whose module says how a replica spans nodes
MULTI_NODE_ENGINES: tuple[str, ...] = tuple(e.name for e in engines.REGISTRY if e.multi_node is not None)


def create_backend(args: ShimArgs) -> Backend:
    """The backend for ``args`` (not started); ValueError for a multi-node group of an engine without one."""
    if args.nnodes > 1 and args.engine not in MULTI_NODE_ENGINES:
        raise ValueError(f"{args.engine} runs on one node; --nnodes {args.nnodes} needs "
                         f"{' or '.join(MULTI_NODE_ENGINES)}")
    return backend_class(args.engine, args.model_type)(args)
