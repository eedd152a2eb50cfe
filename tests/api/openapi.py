"""Turn a CRD's OpenAPI v3 schema into JSON Schema, so jsonschema can validate objects with it."""

from __future__ import annotations

from typing import Any

from turnout.api import crd


def to_json_schema(node: Any) -> Any:
    """nullable -> a null type; preserve-unknown-fields -> any properties; int-or-string -> either."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    if node.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = out.get("additionalProperties", False)
    if node.get("nullable"):
        out = {"anyOf": [out, {"type": "null"}]}
    return out


def crd_json_schema() -> dict[str, Any]:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return to_json_schema(schema)


def cel_rules(node: Any, path: str = "") -> list[tuple[str, str, str]]:
    """Every (path, rule, message) of x-kubernetes-validations in the schema."""
    out: list[tuple[str, str, str]] = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            out.append((path, rule["rule"], rule["message"]))
        for name, sub in (node.get("properties") or {}).items():
            out += cel_rules(sub, f"{path}.{name}" if path else name)
    return out
