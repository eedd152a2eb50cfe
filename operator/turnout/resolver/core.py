"""resolve(spec, hardware, config) -> Plan | Rejection. Pure: no I/O, same input, same output."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from turnout.api.types import ACCELERATORS, ModelDeploymentSpec, Toleration
from turnout.catalog import Catalog, load_catalog
from turnout.config import OperatorConfig
from turnout.hardware import ACCELERATOR_LABEL, AGENT_TAINT, ClusterFeatures, Hardware, NodeInfo
from turnout.resolver import sizing
from turnout.resolver.cache import ResolverCache
from turnout.resolver.engines import ENGINES, PREFERENCE, Context, Engine
from turnout.resolver.memory import gib, needed_mib
from turnout.resolver.models import ModelError, options_for, preference_key
from turnout.resolver.plan import EngineReason, Placement, Plan, Rejection, ResolvedModel
from turnout.resolver.sizing import size_replica

#: Share of device memory an engine may use (vLLM's gpu_memory_utilization; macOS's GPU wired limit).
USABLE = {"nvidia": sizing.USABLE, "ascend": sizing.USABLE, "metal": 0.75, "cpu": 0.9}
#: Accelerators `auto` tries before it would consider CPU (which it never picks where any of them is present).
DEVICE_CLASSES = ("nvidia", "ascend", "metal")
CPU_NOT_AUTO = "auto does not fall back to CPU where accelerators exist (set accelerator.type: cpu to use CPU)"

# How far a candidate got; a deeper reason tells the user more. "No nodes of this kind" ranks
# low: on a cluster without Ascend, "no ascend nodes" is true for every model and says little.
_STAGE_ENGINE, _STAGE_NODES, _STAGE_CONFIG, _STAGE_MODEL, _STAGE_DEVICES, _STAGE_FIT = range(6)


@dataclass(frozen=True)
class _Fit:
    placement: Placement
    detail: str | sizing.Lazy  # where and how much: the plan's reason (made only for the chosen plan)
    notes: tuple[str, ...]
    tensor_parallel: int
    pipeline_parallel: int


def class_tolerations(accelerator: str, nodes: Iterable[NodeInfo]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """Tolerations the pods get for the chosen hardware's usual taints."""
    keys: set[str] = set()
    if accelerator in ("nvidia", "ascend"):
        keys |= {n.resource for n in nodes if n.resource}
    if accelerator == "metal":
        keys.add(AGENT_TAINT)
    return tuple((("effect", "NoSchedule"), ("key", key), ("operator", "Exists")) for key in sorted(keys))


def _tolerated(node: NodeInfo, tolerations: list[dict[str, str]]) -> bool:
    for taint in node.taints:
        if taint.effect not in ("NoSchedule", "NoExecute"):
            continue
        if not any(
            (not t.get("key") or t.get("key") == taint.key)
            and (not t.get("effect") or t.get("effect") == taint.effect)
            and (
                t.get("operator") == "Exists"
                or (not t.get("key") and not t.get("operator"))
                or t.get("value") == taint.value
            )
            for t in tolerations
        ):
            return False
    return True


def _user_tolerations(spec: ModelDeploymentSpec) -> list[dict[str, str]]:
    tols: list[Toleration] = list(spec.tolerations or [])
    return [{k: v for k, v in t.model_dump().items() if isinstance(v, str)} for t in tols]


def _where(spec: ModelDeploymentSpec) -> str:
    """The part of a spec that decides which nodes its pods may use."""
    if not spec.node_selector and not spec.tolerations:
        return ""
    return repr((spec.node_selector, spec.tolerations))


def _eligible(spec: ModelDeploymentSpec, hardware: Hardware, accelerator: str) -> list[NodeInfo]:
    """Nodes a pod for this accelerator could land on: labels match, taints tolerated."""
    if accelerator == "cpu":
        pool = [n for n in hardware.nodes if n.accelerator != "metal"]
    else:
        pool = list(hardware.of(accelerator))
    selector = spec.node_selector or {}
    pool = [n for n in pool if all(n.labels.get(k) == v for k, v in selector.items())]
    tolerations = _user_tolerations(spec) + [dict(t) for t in class_tolerations(accelerator, pool)]
    return [n for n in pool if _tolerated(n, tolerations)]


def _fit(
    model: ResolvedModel,
    engine: Engine,
    accelerator: str,
    nodes: list[NodeInfo],
    spec: ModelDeploymentSpec,
    config: OperatorConfig,
    features: ClusterFeatures,
    max_devices: int | None,
) -> _Fit | tuple[int, str]:
    """Place one model on one accelerator's nodes, or say how far it got and why not."""
    if not nodes:
        return _STAGE_NODES, f"no schedulable {accelerator} nodes"
    product = spec.accelerator.product
    if product and accelerator in ("nvidia", "ascend"):
        have = sorted({n.product for n in nodes if n.product})
        nodes = [n for n in nodes if n.product == product]
        if not nodes:
            return _STAGE_DEVICES, f"no {accelerator} node has product {product} (found: {', '.join(have) or 'none'})"
    node_reasons = [(n, engine.check_node(model, n)) for n in nodes]
    if all(r for _, r in node_reasons):
        return _STAGE_DEVICES, str(node_reasons[0][1])
    nodes = [n for n, r in node_reasons if r is None]
    need: int | None = None
    if model.size_b is not None:
        # On CPU the engine's measured baseline, not the accelerator runtime's overhead: a tiny model must not
        # ask for a GiB it never uses (the need becomes the pod's memory request).
        overhead = config.memory_overhead_mib
        if accelerator == "cpu" and engine.cpu_baseline_mib is not None:
            overhead = engine.cpu_baseline_mib
        need = needed_mib(model.size_b, model.format, model.quantization, config.memory_headroom, overhead)
    if accelerator in ("nvidia", "ascend"):
        return _fit_devices(model, engine, accelerator, nodes, spec, need, features, max_devices)
    return _fit_host(model, accelerator, nodes, need)


def _what(model: ResolvedModel) -> str:
    size = f" {model.size_b:g}B" if model.size_b is not None else ""
    return f"{model.family or model.uri}{size}"


def _fit_devices(
    model: ResolvedModel,
    engine: Engine,
    accelerator: str,
    nodes: list[NodeInfo],
    spec: ModelDeploymentSpec,
    need: int | None,
    features: ClusterFeatures,
    max_devices: int | None,
) -> _Fit | tuple[int, str]:
    """Devices (and nodes) per replica on NVIDIA or Ascend: tensor parallelism chosen to fit."""
    count = spec.accelerator.count
    sized = size_replica(
        engine,
        nodes,
        need_mib=need,
        heads=model.attention_heads,
        count=count,
        features=features,
        model=sizing.Lazy(lambda: _what(model)),
        weights=sizing.Lazy(lambda: f"{model.size_b:g}B {model.format}/{model.quantization or 'none'}"
                            if model.size_b else ""),
        max_devices=max_devices if count is None else None,
    )
    if isinstance(sized, str):
        return _STAGE_FIT, sized
    notes = list(sized.notes)
    if need is None:
        notes.append("model size unknown: memory fit not checked (set model.size)")
    if model.attention_heads is None and engine.splits_heads and sized.tensor_parallel > 1:
        notes.append(
            f"attention heads unknown: tensor parallel {sized.tensor_parallel} assumed to divide them "
            "(set model.attentionHeads from config.json)"
        )
    notes += sorted({n.memory_note for n in sized.hosts if n.memory_note is not None})
    selector: dict[str, str] = {}
    hosts = sized.hosts
    # Nodes with fewer devices cannot take the pod anyway (it requests them); pin the product only when a
    # node that could take it by device count lacks the memory, and always for a group over nodes.
    takers = [n for n in nodes if n.devices >= sized.devices]
    roomy = [n for n in takers if _holds(n, sized.devices, need)]
    if sized.nodes == 1 and len(roomy) == len(takers) and not spec.accelerator.product:
        hosts = tuple(roomy)
    elif sized.node.product_label:
        key, value = sized.node.product_label
        selector[key] = value
    placement = Placement(
        accelerator=accelerator,
        devices=sized.devices,
        resource=sized.node.resource,
        node_selector=tuple(sorted(selector.items())),
        tolerations=class_tolerations(accelerator, hosts),
        product=sized.node.product,
        memory_needed_mib=need,
        memory_available_mib=(
            sized.per_device_mib * sized.devices * sized.nodes if sized.per_device_mib is not None else None
        ),
        nodes=tuple(n.name for n in hosts),
        nodes_per_replica=sized.nodes,
        usable_per_device_mib=sized.per_device_mib,
    )
    return _Fit(placement, sizing.Lazy(sized.detail), tuple(notes), sized.tensor_parallel, sized.pipeline_parallel)


def _holds(node: NodeInfo, devices: int, need: int | None) -> bool:
    """Whether ``devices`` devices of ``node`` hold ``need`` MiB (unknown memory or need: assumed so)."""
    per = sizing.usable_mib(node)
    return need is None or per is None or devices * per >= need


def _fit_host(
    model: ResolvedModel, accelerator: str, nodes: list[NodeInfo], need: int | None
) -> _Fit | tuple[int, str]:
    """CPU and Metal: one pod on one host's memory (unified memory on Metal)."""
    notes: list[str] = []
    fitting = nodes
    if need is None:
        notes.append("model size unknown: memory fit not checked (set model.size)")
    else:
        fitting, unknown = [], []
        for n in nodes:
            have = _available_mib(n, accelerator)
            if have is None:
                unknown.append(n)
            elif have >= need:
                fitting.append(n)
        if not fitting and unknown:
            fitting = unknown
            notes.append(f"{accelerator} memory not labelled on {', '.join(n.name for n in unknown)}: fit not checked")
        if not fitting:
            best = max(nodes, key=lambda n: _available_mib(n, accelerator) or 0)
            have = _available_mib(best, accelerator) or 0
            return _STAGE_FIT, (
                f"needs ~{gib(need)} ({model.size_b:g}B {model.format}/{model.quantization or 'none'}); "
                f"the largest {accelerator} node offers {gib(have)} ({_describe(best, accelerator)})"
            )
    selector: dict[str, str] = {}
    if accelerator == "metal":
        selector[ACCELERATOR_LABEL] = "metal"
    first = min(fitting, key=lambda n: (-(_available_mib(n, accelerator) or 0), n.name))
    available = _available_mib(first, accelerator)
    placement = Placement(
        accelerator=accelerator,
        devices=0,
        resource=first.resource if accelerator != "cpu" else None,
        node_selector=tuple(sorted(selector.items())),
        tolerations=class_tolerations(accelerator, fitting),
        product=first.product,
        memory_needed_mib=need,
        memory_available_mib=available,
        nodes=tuple(n.name for n in fitting),
    )
    detail = accelerator
    if need is not None and available is not None:
        detail += f": needs ~{gib(need)} of {gib(available)} on {_describe(first, accelerator)}"
    else:
        detail += f" ({_describe(first, accelerator)})"
    return _Fit(placement, detail, tuple(notes), 1, 1)


def _available_mib(node: NodeInfo, accelerator: str) -> int | None:
    if accelerator == "cpu":
        return int(node.memory_mib * USABLE["cpu"]) if node.memory_mib else None
    if node.device_memory_mib is None:
        return None
    return int(node.device_memory_mib * USABLE[accelerator])


def _describe(node: NodeInfo, accelerator: str) -> str:
    if accelerator == "cpu":
        return f"node {node.name} ({gib(node.memory_mib)} memory)"
    what = f"{node.product} " if node.product else ""
    mem = f"{gib(node.device_memory_mib)} unified" if node.device_memory_mib else "unified memory not labelled"
    return f"node {node.name} ({what}{mem})"


@functools.cache
def _default_config() -> OperatorConfig:
    return OperatorConfig()


_TableRow = tuple[int, str, Engine, "str | None", "tuple[int, str] | None"]


def _engine_table(config: OperatorConfig, accelerator: str, explicit: bool) -> tuple[_TableRow, ...]:
    """Engines in preference order on one accelerator, with the image or why the config rules it out."""
    order = list(PREFERENCE[accelerator]) + [e for e in ENGINES if e not in PREFERENCE[accelerator]]
    rows: list[_TableRow] = []
    for e_idx, name in enumerate(order):
        engine = ENGINES[name]
        image = config.image(name, accelerator)
        blocked: tuple[int, str] | None = None
        if accelerator not in engine.accelerators:
            blocked = (_STAGE_ENGINE, f"{name} does not run on {accelerator}")
        elif not explicit and name not in config.auto_engines:
            blocked = (_STAGE_CONFIG, "not enabled for engine: auto (operator config autoEngines)")
        elif image is None:
            blocked = (_STAGE_CONFIG, f"no {name} image for {accelerator} in the operator config")
        rows.append((e_idx, name, engine, image, blocked))
    return tuple(rows)


#: engines that can run on CPU (told why auto did not use it where accelerators exist)
_ON_CPU = tuple(name for name, engine in ENGINES.items() if "cpu" in engine.accelerators)


def _ordered(options: tuple[ResolvedModel, ...], accelerator: str, size_given: bool) -> tuple[ResolvedModel, ...]:
    return tuple(sorted(options, key=lambda o: preference_key(o, accelerator, size_given)))


def resolve(
    spec: ModelDeploymentSpec,
    hardware: Hardware,
    config: OperatorConfig | None = None,
    catalog: Catalog | None = None,
    cache: ResolverCache | None = None,
) -> Plan | Rejection:
    """Choose engine, accelerator, image, model and size for a spec on this hardware, or say why not.

    ``hardware.features`` says which cluster APIs plans may use (LeaderWorkerSet for replicas over nodes).
    With ``accelerator.type: auto`` a cluster (or nodeSelector) with accelerator nodes never gets a CPU plan:
    a model too large for them is rejected with the devices or nodes it needs.

    ``cache`` keeps what was worked out for this hardware and config across calls (see :class:`ResolverCache`);
    without one, a fresh one serves this call.
    """
    config = config or _default_config()
    catalog = catalog or load_catalog()
    cache = cache if cache is not None else ResolverCache()
    cache.bind(hardware, config)
    try:
        options, _family = options_for(spec.model, catalog)
    except (ModelError, ValueError) as exc:
        return Rejection(str(exc), tuple(EngineReason(e, str(exc)) for e in ENGINES))

    explicit = spec.engine != "auto"
    size_given = spec.model.size is not None
    where = _where(spec)
    pools, cpu_barred = cache.get("pools", (spec.accelerator.type, where), _pools, spec, hardware, where, cache)
    search = functools.partial(_search, spec, hardware, config, catalog, cache, where, options, pools, explicit,
                               cpu_barred)
    # Choosing the size itself, the resolver first looks for the largest model one device holds.
    one_first = not size_given and spec.accelerator.count is None
    feasible, reasons = search(1 if one_first else None)
    if not feasible and one_first:
        feasible, reasons = search(None)

    if not feasible:
        return _rejection(spec, reasons, explicit, cpu_barred, cache)

    chosen = min(feasible, key=lambda e: feasible[e][0])
    _key, model, image, fit = feasible[chosen]
    accel = fit.placement.accelerator
    candidates = tuple(sorted(feasible, key=lambda e: feasible[e][0]))
    rejected = []
    for e in ENGINES:
        if e == chosen:
            continue
        if e in feasible:
            other = feasible[e][3].placement.accelerator
            rejected.append(EngineReason(e, f"could serve it too (on {other}); {chosen} is preferred"))
        else:
            rejected.append(EngineReason(e, _join(reasons[e], explicit, spec.engine, e, cache)))
    notes = list(fit.notes)
    if not size_given and model.size_b is not None and spec.model.uri is None:
        rule = "smallest" if accel == "cpu" else "largest that fits"
        notes.append(f"size not given: chose {model.size_b:g}B ({rule})")
    if spec.model.format is None:
        notes.append(f"format not given: chose {model.format}/{model.quantization or 'none'} for {accel}")
    count = spec.accelerator.count
    if count is not None and count > 1 and accel in ("cpu", "metal"):
        notes.append(f"accelerator.count {count} ignored on {accel}")
    if fit.placement.multi_node and spec.cache is not None and not spec.cache.shared_across_nodes:
        notes.append(
            f"cache: a ReadWriteOnce claim cannot be mounted on {fit.placement.nodes_per_replica} nodes at once; "
            "each pod downloads into its own emptyDir (set cache.accessModes: [ReadWriteMany] to share one)"
        )
    parallel = ""
    if fit.pipeline_parallel > 1:
        parallel = f", tensor parallel {fit.tensor_parallel} × pipeline parallel {fit.pipeline_parallel}"
    elif fit.tensor_parallel > 1:
        parallel = f", tensor parallel {fit.tensor_parallel}"
    return Plan(
        engine=chosen,
        accelerator=accel,
        image=image,
        device=ENGINES[chosen].on[accel].device,
        tensor_parallel_size=fit.tensor_parallel,
        model=model,
        placement=fit.placement,
        reason=f"{chosen} on {fit.detail} ({model.format}/{model.quantization or 'none'}{parallel})",
        candidates=candidates,
        rejected=tuple(rejected),
        notes=tuple(notes),
        shm=ENGINES[chosen].shm,
        pipeline_parallel_size=fit.pipeline_parallel,
    )


def _pools(
    spec: ModelDeploymentSpec, hardware: Hardware, where: str, cache: ResolverCache
) -> tuple[dict[str, list[NodeInfo]], bool]:
    """The nodes each accelerator considered offers, and whether CPU is barred (auto, accelerators present).

    Callers must not change what it returns (the cache keeps it).
    """

    def eligible(accelerator: str) -> list[NodeInfo]:
        return cache.get("eligible", (accelerator, where), _eligible, spec, hardware, accelerator)

    cpu_barred = False
    if spec.accelerator.type == "auto":
        pools = {a: eligible(a) for a in ACCELERATORS}
        if any(pools[a] for a in DEVICE_CLASSES):
            del pools["cpu"]
            cpu_barred = True
    else:
        pools = {spec.accelerator.type: eligible(spec.accelerator.type)}
    return pools, cpu_barred


_Feasible = dict[str, tuple[tuple[int, int, int], ResolvedModel, str, _Fit]]
_Reasons = dict[str, dict[str, tuple[int, str]]]


def _search(
    spec: ModelDeploymentSpec,
    hardware: Hardware,
    config: OperatorConfig,
    catalog: Catalog,
    cache: ResolverCache,
    where: str,
    options: tuple[ResolvedModel, ...],
    pools: dict[str, list[NodeInfo]],
    explicit: bool,
    cpu_barred: bool,
    max_devices: int | None,
) -> tuple[_Feasible, _Reasons]:
    """The best option per engine (accelerator, then model, then engine preference), and why the others failed."""
    size_given = spec.model.size is not None
    # reasons[engine][accelerator] = (stage, text); the deepest stage is kept.
    reasons: _Reasons = {e: {} for e in ENGINES}
    feasible: _Feasible = {}
    if cpu_barred:
        for name in _ON_CPU:
            reasons[name]["cpu"] = (_STAGE_CONFIG, CPU_NOT_AUTO)
    ctx = Context(catalog=catalog, explicit=explicit)
    features = hardware.features
    for a_idx, (accel, nodes) in enumerate(pools.items()):
        ordered = cache.get("ordered", (options, accel, size_given), _ordered, options, accel, size_given)
        table = cache.get("engines", (accel, explicit), _engine_table, config, accel, explicit)
        for e_idx, name, engine, image, blocked in table:
            if explicit and name != spec.engine:
                continue
            if blocked is not None:
                reasons[name][accel] = blocked
                continue
            if not nodes:
                reasons[name][accel] = (_STAGE_NODES, f"no schedulable {accel} nodes")
                continue
            best: tuple[int, str] = (-1, "")
            for o_idx, option in enumerate(ordered):
                key = (a_idx, o_idx, e_idx)
                if name in feasible and feasible[name][0] <= key:
                    break
                if reason := engine.check_model(option, accel, ctx):
                    if best[0] < _STAGE_MODEL:
                        best = (_STAGE_MODEL, reason)
                    continue
                fit = cache.get(
                    "fit",
                    (option, name, accel, where, spec.accelerator.count, spec.accelerator.product, max_devices),
                    _fit, option, engine, accel, nodes, spec, config, features, max_devices,
                )
                if isinstance(fit, tuple):
                    if fit[0] > best[0]:
                        best = fit
                    continue
                feasible[name] = (key, option, image, fit)
                break
            if best[0] >= 0:
                reasons[name][accel] = best
    return feasible, reasons


def _rejection(
    spec: ModelDeploymentSpec, reasons: _Reasons, explicit: bool, cpu_barred: bool, cache: ResolverCache
) -> Rejection:
    rejected = tuple(EngineReason(e, _join(reasons[e], explicit, spec.engine, e, cache)) for e in ENGINES)
    what = spec.model.name or spec.model.uri
    if spec.model.size is not None and spec.model.name:
        what = f"{what} {spec.model.size:g}B"
    where = "this cluster" if spec.accelerator.type == "auto" else f"{spec.accelerator.type} nodes"
    if explicit:
        why = _join(reasons[spec.engine], False, "", spec.engine, cache)
        return Rejection(f"engine {spec.engine} cannot serve {what} on {where}: {why}", rejected)
    message = f"no engine can serve {what} on {where}"
    # The most telling reason: the deepest stage reached, by the most preferred engine and accelerator.
    ranked = [
        (-stage, a_idx, e_idx, engine, accel, text)
        for a_idx, accel in enumerate(ACCELERATORS)
        for e_idx, engine in enumerate(PREFERENCE[accel])
        for stage, text in [reasons[engine].get(accel, (-1, ""))]
        if stage >= _STAGE_MODEL and not (accel == "cpu" and cpu_barred)
    ]
    if ranked:
        _, _, _, engine, accel, text = min(ranked)
        message += f": {engine} on {accel}: {text}"
    if cpu_barred:
        message += f"; {CPU_NOT_AUTO}"
    return Rejection(message, rejected)


def _join(
    per_accel: dict[str, tuple[int, str]], explicit: bool, requested: str, engine: str, cache: ResolverCache
) -> str:
    """One engine's reasons over the accelerators, the most telling first."""
    if explicit and engine != requested:
        return f"not requested (engine: {requested})"
    items = tuple(per_accel.items())
    return cache.get("reasons", items, _joined, items)


def _joined(items: tuple[tuple[str, tuple[int, str]], ...]) -> str:
    per_accel = dict(items)
    if not per_accel:
        return "not considered"
    # Skip "does not run on X" and "no X nodes" noise when there is something more specific to say.
    deep = [(a, per_accel[a][1]) for a in ACCELERATORS if a in per_accel and per_accel[a][0] > _STAGE_NODES]
    if not deep:
        absent = [a for a in ACCELERATORS if a in per_accel and per_accel[a][0] == _STAGE_NODES]
        if absent:
            article = "an" if absent[0] in ("nvidia", "ascend") else "a"
            return (f"needs {article} {'/'.join(absent)} node; none can take its pods "
                    "(schedulable, nodeSelector, taints)")
        deep = [(a, per_accel[a][1]) for a in ACCELERATORS if a in per_accel]  # only "does not run on X"
    if len(deep) == 1:
        return f"{deep[0][0]}: {deep[0][1]}"
    same = {t for _, t in deep}
    if len(same) == 1:
        return deep[0][1]
    return "; ".join(dict.fromkeys(f"{a}: {t}" for a, t in deep))
