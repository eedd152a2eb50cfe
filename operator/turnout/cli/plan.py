"""`turnout plan -f FILE [--nodes NODES] [--lws | --api-versions FILE] [-o yaml|json|summary]`: plans without a cluster.

The cluster's APIs matter to some plans: a model larger than one node is served over several nodes
only where LeaderWorkerSet is installed. ``--lws`` says it is; ``--api-versions`` reads what
``kubectl api-versions`` prints (the operator learns the same from API discovery).
"""

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
from turnout.hardware import LWS_API_VERSION, ClusterFeatures, Hardware, parse_nodes
from turnout.render import endpoint, render
from turnout.resolver import Plan, ResolverCache, explain_rejection, grouped_reasons, resolve
from turnout.sources import SourceError, check_builtin


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
    apis = p.add_mutually_exclusive_group()
    apis.add_argument(
        "--lws",
        action="store_true",
        help=f"the cluster serves LeaderWorkerSet ({LWS_API_VERSION}): models larger than one node span nodes",
    )
    apis.add_argument(
        "--api-versions",
        metavar="FILE",
        help="the cluster's APIs as `kubectl api-versions` prints them (LeaderWorkerSet is read from it)",
    )
    p.add_argument("-o", "--output", choices=("yaml", "json", "summary"), default="yaml",
                   help="yaml or json: each plan with its manifests; summary: a few lines per deployment "
                        "(default: yaml)")


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
            article = "an" if str(kind)[:1].lower() in "aeiou" else "a"
            raise CLIError(f"{path}: document {i} is {article} {kind}, not a {KIND}")
        name = (doc.get("metadata") or {}).get("name", "?")
        try:
            md = ModelDeployment.model_validate(doc)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise CLIError(f"{path}: document {i} ({name}): {where}: {err['msg']}") from None
        try:
            check_builtin(md.spec.model.uri or "")
        except SourceError as exc:
            raise CLIError(f"{path}: document {i} ({name}): spec.model.uri: {exc}") from None
        out.append(md)
    return out


def load_features(lws: bool = False, api_versions: str | None = None) -> ClusterFeatures:
    """Cluster features from ``--lws`` or a ``kubectl api-versions`` listing."""
    from turnout.cli import CLIError

    if api_versions is None:
        return ClusterFeatures(leader_worker_set=lws)
    try:
        text = Path(api_versions).read_text()
    except OSError as exc:
        raise CLIError(f"cannot read api versions {api_versions}: {exc.strerror}") from None
    return ClusterFeatures.from_api_versions(line for line in text.splitlines() if line.strip())


def load_hardware(path: str | None, features: ClusterFeatures | None = None) -> Hardware:
    """Nodes from a file (List, NodeList, Node documents), or this machine when path is None."""
    from turnout.cli import CLIError

    if path is None:
        from turnout.localhw import detect_node

        return parse_nodes([detect_node()], features)
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
    return parse_nodes(nodes, features)


def plan_documents(
    deployments: list[ModelDeployment], hardware: Hardware, config: OperatorConfig
) -> list[dict[str, Any]]:
    """One result object per deployment, in order."""
    results = []
    cache = ResolverCache()  # the same hardware and config for every deployment
    for md in deployments:
        namespace = md.metadata.namespace or "default"
        result = resolve(md.spec, hardware, config, cache=cache)
        out: dict[str, Any] = {"name": md.metadata.name, "namespace": namespace}
        out.update(result.to_dict())
        if isinstance(result, Plan):
            out["endpoint"] = endpoint(md.metadata.name, namespace, config.port)
            out["manifests"] = render(result, md, config)
        else:
            out["manifests"] = []
        results.append(out)
    return results


def _placement_line(r: dict[str, Any]) -> str:
    """``placement: 1 pod × 4 nvidia.com/gpu (tensor parallel 4) on hgx-h100-1`` and its multi-node form."""
    p = r["placement"]
    per_pod = f"{p['devices']} {p['resource']}" if p.get("resource") and p.get("devices") else r["accelerator"]
    parallel = f"tensor parallel {r['tensorParallelSize']}"
    if r.get("pipelineParallelSize", 1) > 1:
        parallel += f" × pipeline parallel {r['pipelineParallelSize']}"
    nodes = ", ".join(p["nodes"][:4]) + (f" (+{len(p['nodes']) - 4})" if len(p["nodes"]) > 4 else "")
    if p.get("nodesPerReplica", 1) > 1:
        group = p["nodesPerReplica"]
        return (f"  placement: LeaderWorkerSet, {group} pods per replica (1 leader + {group - 1} worker"
                f"{'s' if group > 2 else ''}), each {per_pod} on its own node ({parallel}); nodes: {nodes}")
    return f"  placement: 1 pod × {per_pod} ({parallel}) on one of: {nodes}"


def _summary(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        pairs = [(x["engine"], x["reason"]) for x in r["rejected"]]
        if r["engine"]:
            m = r["model"]
            lines.append(
                f"{r['name']}: {r['engine']} on {r['placedOn']} — {m['uri']} ({m['format']}/{m['quantization']})"
            )
            lines.append(f"  why: {r['reason']}")
            lines.append(_placement_line(r))
            lines.extend(f"  note: {n}" for n in r.get("notes", []))
            lines.extend(f"  {line}" for line in grouped_reasons(pairs))
        else:
            head, *rest = explain_rejection(r["reason"], pairs)
            lines.append(f"{r['name']}: REJECTED — {head}")
            lines.extend(f"  {line}" for line in rest)
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from turnout.cli import CLIError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    deployments = [md for path in args.filename for md in load_deployments(path)]
    hardware = load_hardware(args.nodes, load_features(args.lws, args.api_versions))
    results = plan_documents(deployments, hardware, config)
    if args.output == "json":
        print(json.dumps(results, indent=2))
    elif args.output == "summary":
        print(_summary(results), end="")
    else:
        print(yaml.safe_dump(results, sort_keys=False, width=120), end="")
    return 0 if all(r["engine"] for r in results) else 1
