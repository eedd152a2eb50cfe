"""`turnout plan -f FILE [--nodes NODES] [-o yaml|json|summary]`: plans without a cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from turnout.api import KIND, ModelDeployment
from turnout.config import ConfigError, OperatorConfig, load_config
from turnout.hardware import Hardware, parse_nodes
from turnout.render import endpoint, render
from turnout.resolver import Plan, resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        required=True,
        action="append",
        help="YAML file with one or more ModelDeployments ('-': stdin); repeat for several files",
    )
    p.add_argument("--nodes", help="Nodes as `kubectl get nodes -o yaml` prints them (default: this machine)")
    p.add_argument("--config", help="operator config file (images, autoEngines, ...)")
    p.add_argument("-o", "--output", choices=("yaml", "json", "summary"), default="yaml")


def _read_docs(path: str, what: str) -> list[Any]:
    from turnout.cli import CLIError

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise CLIError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CLIError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None


def load_deployments(path: str) -> list[ModelDeployment]:
    """Every ModelDeployment in a (multi-document) YAML file; CLIError on anything else."""
    from turnout.cli import CLIError

    docs = _read_docs(path, "deployments")
    items: list[Any] = []
    for doc in docs:
        items.extend(doc.get("items") or [] if isinstance(doc, dict) and doc.get("kind") == "List" else [doc])
    if not items:
        raise CLIError(f"{path} holds no ModelDeployment")
    out = []
    for i, doc in enumerate(items, 1):
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise CLIError(f"{path}: document {i} is a {kind}, not a {KIND}")
        try:
            out.append(ModelDeployment.model_validate(doc))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            name = (doc.get("metadata") or {}).get("name", "?")
            raise CLIError(f"{path}: document {i} ({name}): {where}: {err['msg']}") from None
    return out


def load_hardware(path: str | None) -> Hardware:
    """Nodes from a file (List, NodeList, Node documents), or this machine when path is None."""
    from turnout.cli import CLIError

    if path is None:
        from turnout.localhw import detect_node

        return parse_nodes([detect_node()])
    nodes: list[Any] = []
    for doc in _read_docs(path, "nodes"):
        if isinstance(doc, list):
            nodes.extend(doc)
        elif isinstance(doc, dict) and "items" in doc:
            nodes.extend(doc["items"] or [])
        elif isinstance(doc, dict) and doc.get("kind") == "Node":
            nodes.append(doc)
        else:
            raise CLIError(f"{path}: expected Node objects (kubectl get nodes -o yaml)")
    return parse_nodes(nodes)


def plan_documents(
    deployments: list[ModelDeployment], hardware: Hardware, config: OperatorConfig
) -> list[dict[str, Any]]:
    """One result object per deployment, in order."""
    results = []
    for md in deployments:
        obj = md.model_dump(by_alias=True, exclude_none=True, mode="json")
        obj["metadata"].setdefault("namespace", "default")
        result = resolve(md.spec, hardware, config)
        out: dict[str, Any] = {"name": md.metadata.name, "namespace": obj["metadata"]["namespace"]}
        out.update(result.to_dict())
        if isinstance(result, Plan):
            out["endpoint"] = endpoint(md.metadata.name, obj["metadata"]["namespace"], config.port)
            out["manifests"] = render(result, obj, config)
        else:
            out["manifests"] = []
        results.append(out)
    return results


def _summary(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if r["engine"]:
            m = r["model"]
            lines.append(
                f"{r['name']}: {r['engine']} on {r['accelerator']} — {m['uri']} ({m['format']}/{m['quantization']})"
            )
            lines.append(f"  why: {r['reason']}")
            lines.extend(f"  note: {n}" for n in r.get("notes", []))
        else:
            lines.append(f"{r['name']}: REJECTED — {r['reason']}")
        lines.extend(f"  {x['engine']}: {x['reason']}" for x in r["rejected"])
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from turnout.cli import CLIError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    deployments = [md for path in args.filename for md in load_deployments(path)]
    hardware = load_hardware(args.nodes)
    results = plan_documents(deployments, hardware, config)
    if args.output == "json":
        print(json.dumps(results, indent=2))
    elif args.output == "summary":
        print(_summary(results), end="")
    else:
        print(yaml.safe_dump(results, sort_keys=False, width=120), end="")
    return 0 if all(r["engine"] for r in results) else 1
