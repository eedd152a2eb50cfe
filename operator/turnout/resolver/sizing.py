"""Sizing on accelerators: how many devices, and how many nodes, one replica needs. Pure.

A replica runs on ``devices`` devices of one node, or (engines with a multi-node mode) as a group of
``nodes`` pods, one per node, each with ``devices`` devices. Tensor parallelism (vLLM, SGLang) shards
attention heads evenly, so its size must divide ``num_attention_heads``.

With ``accelerator.count`` unset the smallest size of :data:`SIZES` that divides the heads, is at most
one node's devices and holds weights + headroom in size × usable memory per device is chosen; more nodes
only when no node is enough. An explicit count is honoured as given and refused, with the numbers, when
it is too small, does not divide the heads, or is more than the nodes have.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from turnout.hardware import ClusterFeatures, NodeInfo
from turnout.resolver.engines.base import Engine
from turnout.resolver.memory import gib

#: tensor-parallel sizes the resolver chooses among (an explicit accelerator.count may be any number)
SIZES = (1, 2, 4, 8)
#: the most nodes one replica may span
MAX_NODES = 16
#: share of device memory an engine may use (vLLM's gpu_memory_utilization)
USABLE = 0.9
LWS_HINT = "install LeaderWorkerSet (leaderworkerset.x-k8s.io/v1) to serve it"


class Lazy:
    """Text made only when a message is formatted (most candidate plans never show theirs)."""

    __slots__ = ("_make", "_text")

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = self._make()
        return self._text

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __bool__(self) -> bool:
        return bool(str(self))


@dataclass(frozen=True)
class Sizing:
    """One replica's shape on one product of accelerator."""

    devices: int  # per pod
    nodes: int  # pods (nodes) per replica
    tensor_parallel: int
    pipeline_parallel: int
    node: NodeInfo  # a node of the chosen kind
    hosts: tuple[NodeInfo, ...]  # eligible nodes that can take one pod of it
    need_mib: int | None
    per_device_mib: int | None  # usable memory of one device
    notes: tuple[str, ...] = ()

    def detail(self) -> str:
        """``4 × NVIDIA-H100-80GB-HBM3: needs ~162 GiB of 4 × 71.7 GiB`` (nodes first when more than one)."""
        what = f"{self.devices} × {_product(self.node)}"
        if self.nodes > 1:
            what = f"{self.nodes} nodes × {what}"
        if self.need_mib is None or self.per_device_mib is None:
            return what
        have = f"{self.devices} × {gib(self.per_device_mib)}"
        if self.nodes > 1:
            have = f"{self.nodes} × {have}"
        return f"{what}: needs ~{gib(self.need_mib)} of {have}"


def usable_mib(node: NodeInfo) -> int | None:
    """Memory one device of ``node`` offers the engine, or None when not labelled."""
    if node.device_memory_mib is None:
        return None
    return int(node.device_memory_mib * USABLE)


def _product(node: NodeInfo) -> str:
    return node.product or node.accelerator


def _kind(node: NodeInfo) -> tuple[str, int]:
    return (_product(node), node.device_memory_mib or 0)


def _heads_text(heads: int, model: str) -> str:
    return f"the {heads} attention heads of {model}"


def allowed_sizes(engine: Engine, heads: int | None, limit: int | None = None) -> tuple[int, ...]:
    """Sizes the resolver may choose for this engine: powers of two that divide the heads (when it splits them)."""
    return _allowed(engine.splits_heads, heads, limit)


@functools.lru_cache(maxsize=1024)
def _allowed(splits_heads: bool, heads: int | None, limit: int | None) -> tuple[int, ...]:
    sizes = SIZES if limit is None else tuple(s for s in SIZES if s <= limit)
    if splits_heads and heads:
        sizes = tuple(s for s in sizes if heads % s == 0)
    return sizes


def _divides(engine: Engine, heads: int | None, tp: int) -> bool:
    return not (engine.splits_heads and heads and heads % tp)


def size_replica(
    engine: Engine,
    nodes: Sequence[NodeInfo],
    *,
    need_mib: int | None,
    heads: int | None,
    count: int | None,
    features: ClusterFeatures,
    model: str | Lazy,
    weights: str | Lazy = "",
    max_devices: int | None = None,
) -> Sizing | str:
    """The shape of one replica on these nodes (already filtered for the engine), or why none fits.

    ``model`` names the model in messages (``qwen2.5-instruct 7B``), ``weights`` its weights
    (``72B pytorch/none``). ``max_devices`` caps the size when the resolver is choosing the model's size
    itself (one device first).
    """
    need_text = Lazy(lambda: (f"~{gib(need_mib)} for {weights}" if weights else f"~{gib(need_mib)}")
                     if need_mib is not None else "")
    known: list[NodeInfo] = []
    unknown: list[NodeInfo] = []
    for n in nodes:
        (unknown if n.device_memory_mib is None else known).append(n)
    most = max(n.devices for n in nodes)
    if count is not None:
        return _explicit(engine, nodes, known, unknown, need_mib, need_text, heads, count, features, model, most)
    sizes = allowed_sizes(engine, heads, max_devices)
    if not sizes:
        return (
            f"no tensor-parallel size of {'/'.join(map(str, SIZES))} divides {_heads_text(heads or 0, model)}; "
            "set accelerator.count"
        )
    if need_mib is None:
        size = next((s for s in sizes if s <= most), None)
        if size is None:
            return f"needs {sizes[0]} devices on one node; the most any node has is {most}"
        hosts = tuple(n for n in nodes if n.devices >= size)
        return _single(hosts[0], hosts, size, None)
    best: tuple[tuple[int, int, str, str], int, NodeInfo] | None = None
    for n in known:
        per = usable_mib(n) or 0
        size = next((s for s in sizes if s <= n.devices and s * per >= need_mib), None)
        if size is not None:
            key = (size, size * per, _product(n), n.name)
            if best is None or key < best[0]:
                best = (key, size, n)
    if best is not None:
        _, size, chosen = best
        hosts = tuple(n for n in known if _kind(n) == _kind(chosen) and n.devices >= size)
        return _single(chosen, hosts, size, need_mib)
    if unknown:
        size = next((s for s in sizes if s <= most), 1)
        hosts = tuple(n for n in unknown if n.devices >= size)
        if hosts:
            note = f"device memory not labelled on {', '.join(n.name for n in hosts)}: fit not checked"
            return _single(hosts[0], hosts, size, need_mib, (note,))
    if max_devices is not None:
        return f"needs more than {max_devices} device(s) of any node"
    reason = _spread(engine, known, need_mib, need_text, heads, features)
    if isinstance(reason, str) and sizes != allowed_sizes(engine, None, max_devices):
        reason += (
            f" (tensor parallel must divide {_heads_text(heads or 0, model)}: "
            f"{', '.join(str(d) for d in range(1, (heads or 0) + 1) if heads and heads % d == 0)})"
        )
    return reason


def _single(
    node: NodeInfo, hosts: tuple[NodeInfo, ...], size: int, need_mib: int | None, notes: tuple[str, ...] = ()
) -> Sizing:
    return Sizing(
        devices=size,
        nodes=1,
        tensor_parallel=size,
        pipeline_parallel=1,
        node=node,
        hosts=hosts,
        need_mib=need_mib,
        per_device_mib=usable_mib(node),
        notes=notes,
    )


def _explicit(
    engine: Engine,
    nodes: Sequence[NodeInfo],
    known: list[NodeInfo],
    unknown: list[NodeInfo],
    need_mib: int | None,
    need_text: str | Lazy,
    heads: int | None,
    count: int,
    features: ClusterFeatures,
    model: str | Lazy,
    most: int,
) -> Sizing | str:
    on_one = [n for n in nodes if n.devices >= count]
    if on_one:
        if not _divides(engine, heads, count):
            ok = ", ".join(str(s) for s in range(1, min(most, 64) + 1) if heads and heads % s == 0)
            return (
                f"accelerator.count {count} does not divide {_heads_text(heads or 0, model)} "
                f"({engine.name} shards them evenly); use one of {ok}"
            )
        if need_mib is None:
            return _single(on_one[0], tuple(on_one), count, None)
        fits = [n for n in on_one if n in known and count * (usable_mib(n) or 0) >= need_mib]
        if fits:
            chosen = min(fits, key=lambda n: (usable_mib(n) or 0, _product(n), n.name))
            hosts = tuple(n for n in fits if _kind(n) == _kind(chosen))
            return _single(chosen, hosts, count, need_mib)
        blind = [n for n in on_one if n in unknown]
        if blind:
            note = f"device memory not labelled on {', '.join(n.name for n in blind)}: fit not checked"
            return _single(blind[0], tuple(blind), count, need_mib, (note,))
        best = max((n for n in on_one if n in known), key=lambda n: usable_mib(n) or 0)
        per = usable_mib(best) or 1
        wanted = math.ceil(need_mib / per)
        return (
            f"accelerator.count {count} is too small: needs {need_text}; {count} × {_product(best)} offer "
            f"{count} × {gib(per)} = {gib(count * per)}; it needs at least {wanted} of them"
        )
    # More devices than one node has: whole nodes of a group, if the engine can span nodes.
    if engine.multi_node is None:
        return f"needs {count} devices on one node; the most any node has is {most} ({engine.name} runs on one node)"
    groups: list[tuple[int, NodeInfo, list[NodeInfo], int]] = []
    for members in _kinds(nodes).values():
        per_node = min(n.devices for n in members)
        if count % per_node:
            continue
        n_nodes = count // per_node
        groups.append((n_nodes, members[0], members, per_node))
    if not groups:
        return (
            f"needs {count} devices on one node; the most any node has is {most}, and {count} is not a whole "
            "number of nodes' devices"
        )
    n_nodes, first, members, per_node = min(groups, key=lambda g: (g[0], _product(g[1])))
    tp, pp = engine.multi_node(per_node, n_nodes)
    if not _divides(engine, heads, tp):
        return (
            f"accelerator.count {count} as {n_nodes} nodes × {per_node} gives tensor parallel {tp}, which does not "
            f"divide {_heads_text(heads or 0, model)}"
        )
    per = usable_mib(first)
    if need_mib is not None and per is not None and count * per < need_mib:
        return (
            f"accelerator.count {count} is too small: needs {need_text}; {n_nodes} × {per_node} × "
            f"{_product(first)} offer {gib(count * per)}"
        )
    result = _group(engine, first, members, per_node, n_nodes, tp, pp, need_mib, need_text, features)
    if isinstance(result, str):
        return f"needs {count} devices on one node; the most any node has is {most}; across nodes it {result}"
    return result


def _kinds(nodes: Sequence[NodeInfo]) -> dict[tuple[str, int], list[NodeInfo]]:
    out: dict[tuple[str, int], list[NodeInfo]] = {}
    for n in sorted(nodes, key=lambda n: n.name):
        out.setdefault(_kind(n), []).append(n)
    return out


def _group(
    engine: Engine,
    first: NodeInfo,
    members: list[NodeInfo],
    per_node: int,
    n_nodes: int,
    tp: int,
    pp: int,
    need_mib: int | None,
    need_text: str | Lazy,
    features: ClusterFeatures,
) -> Sizing | str:
    what = f"{n_nodes} nodes of {per_node} × {_product(first)}"
    per = usable_mib(first)
    if need_mib is not None and per is not None:
        what = f"{need_text}: {what} ({n_nodes} × {per_node} × {gib(per)})"
    if len(members) < n_nodes:
        return f"needs {what}; the cluster has {len(members)}"
    if not features.leader_worker_set:
        return f"needs {what}; {LWS_HINT}"
    return Sizing(
        devices=per_node,
        nodes=n_nodes,
        tensor_parallel=tp,
        pipeline_parallel=pp,
        node=first,
        hosts=tuple(n for n in members if n.devices >= per_node),
        need_mib=need_mib,
        per_device_mib=per,
    )


def _fill(engine: Engine, heads: int | None, fill: int, devices: int) -> tuple[int, int, int, int] | None:
    """(devices per node, nodes, tp, pp): whole nodes of the largest size that the heads allow, fewest nodes."""
    assert engine.multi_node is not None
    for per_node in reversed(SIZES):
        if per_node > fill:
            continue
        for n_nodes in range(max(2, math.ceil(devices / per_node)), MAX_NODES + 1):
            tp, pp = engine.multi_node(per_node, n_nodes)
            if _divides(engine, heads, tp):
                return per_node, n_nodes, tp, pp
    return None


def _spread(
    engine: Engine,
    known: list[NodeInfo],
    need_mib: int,
    need_text: str | Lazy,
    heads: int | None,
    features: ClusterFeatures,
) -> Sizing | str:
    """No one node holds it: how many nodes of which kind would, and whether the engine and cluster can do that."""
    if not known:
        return "no node labels its device memory"
    best = max(known, key=lambda n: (max((s for s in SIZES if s <= n.devices), default=1) * (usable_mib(n) or 0)))
    best_size = max((s for s in SIZES if s <= best.devices), default=1)
    per_best = usable_mib(best) or 1
    offer = f"the largest node offers {best_size} × {gib(per_best)} ({best_size} × {_product(best)})"
    devices_needed = math.ceil(need_mib / per_best)
    if engine.multi_node is None:
        return (
            f"needs {need_text}; {offer}: it needs {devices_needed} such devices on one node, and "
            f"{engine.name} runs on one node (vLLM and SGLang span nodes)"
        )
    options: list[tuple[tuple[int, int, str], Sizing | str]] = []
    for members in _kinds(known).values():
        first = members[0]
        per = usable_mib(first) or 1
        fill = min(n.devices for n in members)
        shape = _fill(engine, heads, fill, math.ceil(need_mib / per))
        if shape is None:
            continue
        per_node, n_nodes, tp, pp = shape
        result = _group(engine, first, members, per_node, n_nodes, tp, pp, need_mib, need_text, features)
        rank = 0 if isinstance(result, Sizing) else (1 if LWS_HINT in result else 2)
        options.append(((rank, n_nodes, _product(first)), result))
    if not options:
        return f"needs {need_text}; {offer}, and no group of up to {MAX_NODES} nodes holds it"
    return min(options, key=lambda o: o[0])[1]
