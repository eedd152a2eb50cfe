"""Generate the ModelDeployment CRD from the typed models.

The pydantic JSON schema is made structural (what the API server accepts):
``$ref`` inlined, ``anyOf [X, null]`` turned into ``nullable``, no ``title``,
``default``, ``const`` or ``additionalProperties: false``, free-form objects
marked ``x-kubernetes-preserve-unknown-fields``. ``python -m turnout.api.crd``
rewrites ``crds/``; a test fails when the committed file drifts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from turnout.api.types import (
    CRD_DEFAULT,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)

CRD_FILENAME = f"{GROUP}_{PLURAL}.yaml"
_DROP = {"title", "default", "const", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite one pydantic schema node into its structural form."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k == "description"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1 and len(options) < len(node["anyOf"]):
            inner = _structural(options[0], defs)
            out = {**inner, **_structural(rest, defs), "nullable": True}
            if "description" in rest:
                out["description"] = rest["description"]
            return out
        raise ValueError(f"cannot make a structural schema of anyOf {node['anyOf']!r}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == CRD_DEFAULT:
            out["default"] = value
            continue
        if key == "additionalProperties":
            if value is False:
                continue
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
                continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            # JSON Schema 2020 writes the bound here; OpenAPI v3.0 wants minimum + a boolean.
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _structural(value, defs)
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def structural_schema(model: type) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _structural(raw, raw.get("$defs", {}))


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    spec = structural_schema(ModelDeploymentSpec)
    status = structural_schema(ModelDeploymentStatus)
    columns = [
        ("Model", "string", ".spec.model.name", "Catalog family of the model.", 1),
        ("Engine", "string", ".status.engine", "The engine chosen.", 0),
        ("Accelerator", "string", ".status.accelerator", "The accelerator chosen.", 0),
        ("Ready", "integer", ".status.readyReplicas", "Pods ready to serve.", 0),
        ("Replicas", "integer", ".spec.replicas", "Pods asked for.", 0),
        ("Phase", "string", ".status.phase", "Resolving, Deploying, Ready, ScaledToZero, Degraded or Failed.", 0),
        ("Endpoint", "string", ".status.endpoint", "In-cluster OpenAI base URL.", 1),
        ("Age", "date", ".metadata.creationTimestamp", "Time since creation.", 0),
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "turnout", "app.kubernetes.io/part-of": "turnout"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["turnout"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {
                            "name": name,
                            "type": typ,
                            "jsonPath": path,
                            "description": desc,
                            **({"priority": prio} if prio else {}),
                        }
                        for name, typ, path, desc, prio in columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "ModelDeployment serves one LLM, embedding or rerank model "
                            "through the engine that suits its format and the cluster's hardware.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "Versioned schema of this object: turnout.dev/v1alpha1.",
                                },
                                "kind": {"type": "string", "description": "ModelDeployment."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_yaml() -> str:
    """The CRD as the YAML committed under ``crds/``."""
    header = "# Generated by `python -m turnout.api.crd` from turnout/api/types.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or check) the generated ModelDeployment CRD.")
    parser.add_argument("--output-dir", default="crds", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs")
    ns = parser.parse_args(argv)
    path = ns.output_dir / CRD_FILENAME
    text = render_yaml()
    if ns.check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date: run python -m turnout.api.crd", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
