"""resolve(spec, hardware, config) -> Plan | Rejection. Pure: no I/O, same input, same output."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from turnout.api.types import ACCELERATORS, ModelDeploymentSpec, Toleration
from turnout.catalog import Catalog, load_catalog
from turnout.config import OperatorConfig
from turnout.hardware import ACCELERATOR_LABEL, AGENT_TAINT, NVIDIA_PRODUCT, Hardware, NodeInfo
from turnout.resolver.engines import DEVICE, ENGINES, PREFERENCE, Context, Engine
from turnout.resolver.memory import gib, needed_mib
from turnout.resolver.models import ModelError, options_for, preference_key
from turnout.resolver.plan import EngineReason, Placement, Plan, Rejection, ResolvedModel

#: Share of device memory an engine may use (vLLM's gpu_memory_utilization; macOS's GPU wired limit).
USABLE = {"nvidia": 0.9, "ascend": 0.9, "metal": 0.75, "cpu": 0.9}

# How far a candidate got; a deeper reason tells the user more. "No nodes of this kind" ranks
# low: on a cluster without Ascend, "no ascend nodes" is true for every model and says little.
_STAGE_ENGINE, _STAGE_NODES, _STAGE_CONFIG, _STAGE_MODEL, _STAGE_DEVICES, _STAGE_FIT = range(6)


@dataclass(frozen=True)
class _Fit:
    placement: Placement
    detail: str
    notes: tuple[str, ...]


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


_ELIGIBLE_CACHE: dict[tuple[int, str, str], tuple[Hardware, list[NodeInfo]]] = {}


def _eligible(spec: ModelDeploymentSpec, hardware: Hardware, accelerator: str) -> list[NodeInfo]:
    """Nodes a pod for this accelerator could land on: labels match, taints tolerated.

    Memoized per Hardware object (the operator keeps one until nodes change), keyed by
    the spec's selector and tolerations; the cached Hardware is kept to make ``id`` safe.
    """
    key = (id(hardware), accelerator, repr((spec.node_selector, spec.tolerations)))
    hit = _ELIGIBLE_CACHE.get(key)
    if hit is not None and hit[0] is hardware:
        return hit[1]
    if len(_ELIGIBLE_CACHE) > 4096:
        _ELIGIBLE_CACHE.clear()
    nodes = _eligible_uncached(spec, hardware, accelerator)
    _ELIGIBLE_CACHE[key] = (hardware, nodes)
    return nodes


def _eligible_uncached(spec: ModelDeploymentSpec, hardware: Hardware, accelerator: str) -> list[NodeInfo]:
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
) -> _Fit | tuple[int, str]:
    """Place one model on one accelerator's nodes, or say how far it got and why not."""
    if not nodes:
        return _STAGE_NODES, f"no schedulable {accelerator} nodes"
    count = spec.accelerator.count if accelerator in ("nvidia", "ascend") else 1
    product = spec.accelerator.product
    if product and accelerator in ("nvidia", "ascend"):
        have = sorted({n.product for n in nodes if n.product})
        nodes = [n for n in nodes if n.product == product]
        if not nodes:
            return _STAGE_DEVICES, f"no {accelerator} node has product {product} (found: {', '.join(have) or 'none'})"
    if accelerator in ("nvidia", "ascend"):
        most = max(n.devices for n in nodes)
        nodes = [n for n in nodes if n.devices >= count]
        if not nodes:
            return _STAGE_DEVICES, f"needs {count} devices on one node; the most any {accelerator} node has is {most}"
    node_reasons = [(n, engine.check_node(model, n)) for n in nodes]
    if all(r for _, r in node_reasons):
        return _STAGE_DEVICES, str(node_reasons[0][1])
    nodes = [n for n, r in node_reasons if r is None]

    notes: list[str] = []
    need: int | None = None
    if model.size_b is None:
        notes.append("model size unknown: memory fit not checked (set model.size)")
        fitting = nodes
    else:
        need = needed_mib(
            model.size_b, model.format, model.quantization, config.memory_headroom, config.memory_overhead_mib
        )
        fitting, unknown = [], []
        for n in nodes:
            have = _available_mib(n, accelerator, count)
            if have is None:
                unknown.append(n)
            elif have >= need:
                fitting.append(n)
        if not fitting and unknown:
            fitting = unknown
            notes.append(f"{accelerator} memory not labelled on {', '.join(n.name for n in unknown)}: fit not checked")
        if not fitting:
            best = max(nodes, key=lambda n: _available_mib(n, accelerator, count) or 0)
            have = _available_mib(best, accelerator, count) or 0
            return _STAGE_FIT, (
                f"needs ~{gib(need)} ({model.size_b:g}B {model.format}/{model.quantization or 'none'}); "
                f"the largest {accelerator} node offers {gib(have)} ({_describe(best, accelerator, count)})"
            )
    selector: dict[str, str] = {}
    if accelerator == "metal":
        selector[ACCELERATOR_LABEL] = "metal"
    if accelerator in ("nvidia", "ascend"):
        products = {n.product for n in fitting}
        all_fit = len(fitting) == len(nodes) and not product
        if not all_fit and len(products) >= 1 and None not in products:
            # Best fit: the smallest device that holds the model, so large GPUs stay free.
            chosen = min(fitting, key=lambda n: (n.device_memory_mib or 0, n.product or ""))
            selector[NVIDIA_PRODUCT if accelerator == "nvidia" else "accelerator"] = (
                chosen.product if accelerator == "nvidia" else f"huawei-{chosen.product}"
            )
            fitting = [n for n in fitting if n.product == chosen.product]
    first = min(
        fitting, key=lambda n: (n.accelerator != accelerator, -(_available_mib(n, accelerator, count) or 0), n.name)
    )
    available = _available_mib(first, accelerator, count)
    placement = Placement(
        accelerator=accelerator,
        devices=count if accelerator in ("nvidia", "ascend") else 0,
        resource=first.resource if accelerator != "cpu" else None,
        node_selector=tuple(sorted(selector.items())),
        tolerations=class_tolerations(accelerator, fitting),
        product=first.product,
        memory_needed_mib=need,
        memory_available_mib=available,
        nodes=tuple(n.name for n in fitting),
    )
    detail = _describe(first, accelerator, count)
    if need is not None and available is not None:
        detail += f": needs ~{gib(need)} of {gib(available)}"
    return _Fit(placement, detail, tuple(notes))


def _available_mib(node: NodeInfo, accelerator: str, count: int) -> int | None:
    if accelerator == "cpu":
        return int(node.memory_mib * USABLE["cpu"]) if node.memory_mib else None
    if node.device_memory_mib is None:
        return None
    per = node.device_memory_mib * (count if accelerator in ("nvidia", "ascend") else 1)
    return int(per * USABLE[accelerator])


def _describe(node: NodeInfo, accelerator: str, count: int) -> str:
    if accelerator == "cpu":
        return f"node {node.name}, {gib(node.memory_mib)} memory"
    what = node.product or accelerator
    mem = f" {gib(node.device_memory_mib)}" if node.device_memory_mib else ""
    return f"{count} × {what}{mem}" if accelerator in ("nvidia", "ascend") else f"{what}{mem} unified"


@functools.cache
def _default_config() -> OperatorConfig:
    return OperatorConfig()


_TableRow = tuple[int, str, Engine, "str | None", "tuple[int, str] | None"]


_TABLE_CACHE: dict[tuple[int, str, bool], tuple[OperatorConfig, tuple[_TableRow, ...]]] = {}


def _engine_table(config: OperatorConfig, accelerator: str, explicit: bool) -> tuple[_TableRow, ...]:
    """Engines in preference order on one accelerator, with the image or why the config rules it out.

    Memoized per config object (configs are frozen; the cached object is kept so ``id`` stays safe).
    """
    key = (id(config), accelerator, explicit)
    hit = _TABLE_CACHE.get(key)
    if hit is not None and hit[0] is config:
        return hit[1]
    if len(_TABLE_CACHE) > 1024:
        _TABLE_CACHE.clear()
    rows = _engine_rows(config, accelerator, explicit)
    _TABLE_CACHE[key] = (config, rows)
    return rows


def _engine_rows(config: OperatorConfig, accelerator: str, explicit: bool) -> tuple[_TableRow, ...]:
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


@functools.lru_cache(maxsize=4096)
def _ordered(options: tuple[ResolvedModel, ...], accelerator: str, size_given: bool) -> tuple[ResolvedModel, ...]:
    return tuple(sorted(options, key=lambda o: preference_key(o, accelerator, size_given)))


def resolve(
    spec: ModelDeploymentSpec,
    hardware: Hardware,
    config: OperatorConfig | None = None,
    catalog: Catalog | None = None,
) -> Plan | Rejection:
    """Choose engine, accelerator, image and model for a spec on this hardware, or say why not."""
    config = config or _default_config()
    catalog = catalog or load_catalog()
    try:
        options, _family = options_for(spec.model, catalog)
    except (ModelError, ValueError) as exc:
        return Rejection(str(exc), tuple(EngineReason(e, str(exc)) for e in ENGINES))

    accelerators = list(ACCELERATORS) if spec.accelerator.type == "auto" else [spec.accelerator.type]
    explicit = spec.engine != "auto"
    size_given = spec.model.size is not None
    # reasons[engine][accelerator] = (stage, text); the deepest stage is kept.
    reasons: dict[str, dict[str, tuple[int, str]]] = {e: {} for e in ENGINES}
    feasible: dict[str, tuple[tuple[int, int, int], ResolvedModel, str, _Fit]] = {}

    def note(engine: str, accel: str, stage: int, text: str) -> None:
        if stage > reasons[engine].get(accel, (-1, ""))[0]:
            reasons[engine][accel] = (stage, text)

    ctx = Context(catalog=catalog, explicit=explicit)
    for a_idx, accel in enumerate(accelerators):
        nodes = _eligible(spec, hardware, accel)
        ordered = _ordered(options, accel, size_given)
        for e_idx, name, engine, image, blocked in _engine_table(config, accel, explicit):
            if explicit and name != spec.engine:
                continue
            if blocked is not None:
                note(name, accel, *blocked)
                continue
            if not nodes:
                note(name, accel, _STAGE_NODES, f"no schedulable {accel} nodes")
                continue
            for o_idx, option in enumerate(ordered):
                key = (a_idx, o_idx, e_idx)
                if name in feasible and feasible[name][0] <= key:
                    break
                if reason := engine.check_model(option, accel, ctx):
                    note(name, accel, _STAGE_MODEL, reason)
                    continue
                fit = _fit(option, engine, accel, nodes, spec, config)
                if isinstance(fit, tuple):
                    note(name, accel, *fit)
                    continue
                feasible[name] = (key, option, image, fit)
                break

    if not feasible:
        rejected = tuple(EngineReason(e, _join(reasons[e], explicit, spec.engine, e)) for e in ENGINES)
        what = spec.model.name or spec.model.uri
        where = "this cluster" if spec.accelerator.type == "auto" else f"{spec.accelerator.type} nodes"
        if explicit:
            why = _join(reasons[spec.engine], False, "", spec.engine)
            message = f"engine {spec.engine} cannot serve {what} on {where}: {why}"
        else:
            message = f"no engine can serve {what} on {where}"
        return Rejection(message, rejected)

    chosen = min(feasible, key=lambda e: feasible[e][0])
    key, model, image, fit = feasible[chosen]
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
            rejected.append(EngineReason(e, _join(reasons[e], explicit, spec.engine, e)))
    notes = list(fit.notes)
    if not size_given and model.size_b is not None and spec.model.uri is None:
        rule = "smallest" if accel == "cpu" else "largest that fits"
        notes.append(f"size not given: chose {model.size_b:g}B ({rule})")
    if spec.model.format is None:
        notes.append(f"format not given: chose {model.format}/{model.quantization or 'none'} for {accel}")
    count = spec.accelerator.count
    if count > 1 and accel in ("cpu", "metal"):
        notes.append(f"accelerator.count {count} ignored on {accel}")
    tp = count if accel in ("nvidia", "ascend") else 1
    return Plan(
        engine=chosen,
        accelerator=accel,
        image=image,
        device=DEVICE[accel],
        tensor_parallel_size=tp,
        model=model,
        placement=fit.placement,
        reason=f"{chosen} serves {model.format}/{model.quantization or 'none'} on {accel} ({fit.detail})",
        candidates=candidates,
        rejected=tuple(rejected),
        notes=tuple(notes),
        shm=ENGINES[chosen].shm,
    )


def _join(per_accel: dict[str, tuple[int, str]], explicit: bool, requested: str, engine: str) -> str:
    if explicit and engine != requested:
        return f"not requested (engine: {requested})"
    if not per_accel:
        return "not considered"
    # Skip "does not run on X" and "no X nodes" noise when there is something more specific to say.
    deep = {a: r for a, r in per_accel.items() if r[0] > _STAGE_NODES}
    if not deep:
        absent = [a for a in ACCELERATORS if per_accel.get(a, (-1,))[0] == _STAGE_NODES]
        if absent:
            return f"needs a {'/'.join(absent)} node; none can take its pods (schedulable, nodeSelector, taints)"
        deep = per_accel  # only "does not run on X" for the accelerators asked for
    texts = list(dict.fromkeys(f"{a}: {t}" for a, (_, t) in deep.items()))
    same = {t for _, (_, t) in deep.items()}
    if len(same) == 1 and len(deep) > 1:
        return next(iter(same))
    return "; ".join(texts)
