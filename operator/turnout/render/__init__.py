"""Render a Plan into the Kubernetes objects that run it."""

from turnout.render.manifests import (
    SPEC_HASH_LABEL,
    child_name,
    endpoint,
    labels,
    render,
    render_cache_claim,
    render_deployment,
    render_service,
    selector,
    shim_args,
)

__all__ = [
    "SPEC_HASH_LABEL",
    "child_name",
    "endpoint",
    "labels",
    "render",
    "render_cache_claim",
    "render_deployment",
    "render_service",
    "selector",
    "shim_args",
]
