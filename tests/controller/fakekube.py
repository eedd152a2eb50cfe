"""An in-memory Kubernetes API over real HTTP: kmock, with the object semantics the operator relies on.

kmock's :class:`KubernetesEmulator` stores objects and streams watches but
treats every write as a plain dict merge (its docs say: inherit and implement
special field treatment where needed). This subclass implements, following
the API server's documented contract:

- ``metadata.uid``, ``resourceVersion`` (one global counter), ``generation``
  (bumped when anything but metadata and status changes), ``creationTimestamp``,
  ``generateName``;
- JSON merge patch (RFC 7386: ``null`` removes) and server-side apply
  (``application/apply-patch+yaml`` with ``fieldManager``; one manager's
  applied configuration replaces what it applied before);
- the status subresource: ``/status`` writes change only ``status``, main
  resource writes never change ``status``;
- the scale subresource of ModelDeployments (``SCALE``): GET and merge-patch an ``autoscaling/v1``
  Scale whose ``spec.replicas`` is the object's (a ``metadata.resourceVersion`` in the patch is a
  precondition);
- list ``resourceVersion`` and watch from a ``resourceVersion`` (replaying
  newer events), or from scratch (ADDED for every object); a watch ends after its ``timeoutSeconds``;
- garbage collection: deleting an object deletes its dependents (ownerReferences.uid) unless
  DELETE's propagationPolicy is Orphan; DELETE's uid/resourceVersion preconditions (409 on a mismatch);
  deleting a Namespace deletes everything in it (at once: no Terminating phase);
- CustomResourceDefinitions (of the kinds in ``RESOURCES``): a created CRD is
  ``Established`` at once and its storage version's schema validates its
  objects from then on; deleting it deletes its objects.

Every request is recorded by kmock (``fake.requests``); tests assert the
operator's API use against the declared RBAC rules with it. Faults are
injected with :meth:`FakeKube.fail` (a request's answer) and :meth:`FakeKube.send_on_watches` (what
watches receive).

Requests for the resources above go straight to the ``_serve_*`` method for
their action: kmock's own dispatch checks every reaction's filter against the
whole recorded request history on every request (``request in
payload._source``), which makes a long run quadratic (a 100-deployment
benchmark spent 93% of its time there). Discovery and anything else still go
through kmock's reactions, as do all requests once a test adds reactions of its
own (``fake[...] << ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
import yaml
from kmock._internal import apps, enums, references, rendering

ResKey = tuple[str, str, str]  # (group, version, plural)
ObjKey = tuple[str | None, str]  # (namespace, name)

# Resources the fake serves: (group, version, plural) -> (kind, namespaced, has status subresource).
RESOURCES: dict[ResKey, tuple[str, bool, bool]] = {
    ("turnout.dev", "v1alpha1", "modeldeployments"): ("ModelDeployment", True, True),
    ("apps", "v1", "deployments"): ("Deployment", True, True),
    ("", "v1", "services"): ("Service", True, True),
    ("", "v1", "persistentvolumeclaims"): ("PersistentVolumeClaim", True, True),
    ("leaderworkerset.x-k8s.io", "v1", "leaderworkersets"): ("LeaderWorkerSet", True, True),
    ("", "v1", "pods"): ("Pod", True, True),
    ("", "v1", "nodes"): ("Node", False, True),
    ("", "v1", "events"): ("Event", True, False),
    ("events.k8s.io", "v1", "events"): ("Event", True, False),
    ("", "v1", "namespaces"): ("Namespace", False, True),
    ("discovery.k8s.io", "v1", "endpointslices"): ("EndpointSlice", True, False),
    ("", "v1", "secrets"): ("Secret", True, False),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions"): ("CustomResourceDefinition", False, True),
    ("inference.networking.k8s.io", "v1", "inferencepools"): ("InferencePool", True, True),
    ("coordination.k8s.io", "v1", "leases"): ("Lease", True, False),
}
#: Resources with a scale subresource (autoscaling/v1 Scale), as their CRD declares it: the paths of
#: spec.replicas, status.replicas and status.selector.
SCALE: dict[ResKey, tuple[str, str, str]] = {
    ("turnout.dev", "v1alpha1", "modeldeployments"): ("spec.replicas", "status.replicas", "status.selector"),
}
CRDS: ResKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
# kmock's path parser reads /api/v1/namespaces/NAME as "namespace NAME, no resource" (and fails on
# /api/v1/namespaces): Namespace objects themselves are parsed here.
_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?(?:/(status))?")
NAMESPACES: ResKey = ("", "v1", "namespaces")
# metadata.name (and generateName but for a trailing "-") of most kinds, as the API server validates them.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _path(obj: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path (``spec.replicas``), or None."""
    node: Any = obj
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _strip(obj: dict[str, Any], applied: dict[str, Any] | None) -> dict[str, Any]:
    """Remove from ``obj`` the leaf fields a previous apply set (so the new apply owns only what it sends)."""
    if not applied:
        return obj
    out = dict(obj)
    for key, value in applied.items():
        if key in ("apiVersion", "kind") or key not in out:
            continue
        if isinstance(value, dict) and isinstance(out[key], dict) and key in ("metadata", "labels", "annotations"):
            out[key] = _strip(out[key], value)
        elif key not in ("name", "namespace"):
            del out[key]
    return out


def _json_body(request: rendering.Request) -> Any:
    """The request's JSON body (kmock has already decoded it once; nothing here changes it in place)."""
    return request.data if isinstance(request.data, dict) else json.loads(request.text)


def _load_apply(text: str) -> Any:
    """An apply body: YAML, but clients send JSON (a subset of YAML), which the json module reads ~50x faster."""
    try:
        return json.loads(text)
    except ValueError:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@dataclass
class Fault:
    method: str
    plural: str
    subresource: str | None
    status: int
    times: int


class KubeApiError(kmock.KubernetesError):
    pass


# kmock's parsed action -> the FakeKube method that serves it (looked up by name: subclasses override them).
_SERVERS: dict[enums.action, str] = {
    enums.action.LIST: "_serve_list", enums.action.WATCH: "_serve_watch", enums.action.FETCH: "_serve_fetch",
    enums.action.CREATE: "_serve_create", enums.action.UPDATE: "_serve_update",
    enums.action.DELETE: "_serve_delete",
}


@attrs.define(kw_only=True)
class FakeKube(kmock.KubernetesEmulator):
    """See the module docstring."""

    store: dict[ResKey, dict[ObjKey, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    history: dict[ResKey, list[tuple[int, dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    watchers: dict[ResKey, list[asyncio.Queue[dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    applied: dict[tuple[ResKey, ObjKey, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    gates: dict[tuple[str, str], asyncio.Event] = attrs.field(factory=dict, init=False)
    #: OpenAPI v3 schemas (a CRD's ``openAPIV3Schema``) to validate every stored version against, as the API
    #: server does; a violation is a 422 Invalid and changes nothing. CEL rules are not evaluated here.
    schemas: dict[ResKey, dict[str, Any]] = attrs.field(factory=dict, init=False)
    held: int = attrs.field(default=0, init=False)
    #: Every DELETE served through the API: resource, (namespace, name) and the DeleteOptions sent.
    deletes: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    _rv: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    last_rv: int = attrs.field(default=0, init=False)
    closing: bool = attrs.field(default=False, init=False)
    changed: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _validators: dict[ResKey, tuple[dict[str, Any], Any]] = attrs.field(factory=dict, init=False)
    _own_reactions: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._own_reactions = len(self._payloads)  # kmock's built-in ones; more means a test added its own
        for (group, version, plural), (kind, namespaced, has_status) in RESOURCES.items():
            self.resources[f"{group}/{version}/{plural}" if group else f"{version}/{plural}"] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced, singular=kind.lower(),
                verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
                subresources=({"status"} if has_status else set()) | ({"scale"} if (group, version, plural) in SCALE
                                                                       else set()),
            )

    # ----- request routing ----------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _NAMESPACE_PATH.fullmatch(raw_request.path)
        if match is None:
            return await super().__call__(raw_request)
        body = await raw_request.read()
        text = body.decode()
        name, subresource = match.group(1), match.group(2)
        method = raw_request.method.upper()
        params = dict(raw_request.query)
        action = {"POST": enums.action.CREATE, "PATCH": enums.action.UPDATE, "DELETE": enums.action.DELETE}.get(
            method, enums.action.FETCH if name else
            enums.action.WATCH if params.get("watch") in ("true", "1") else enums.action.LIST)
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url, method=method, params=params,
            headers=dict(raw_request.headers), body=body, text=text, data=None, action=action,
            resource=references.resource(group="", version="v1", plural="namespaces"), namespace=None, name=name,
            subresource=subresource,
        )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as exc:  # rendered as the API server's Status, as kmock does for other paths
            return await self._render_error(exc)

    async def _handle(self, request: rendering.Request) -> Any:
        # Skip KubernetesEmulator's plain-merge state keeping; our _serve_* methods keep the state.
        if request.resource is not None:
            for (method, plural), gate in list(self.gates.items()):
                if method == str(request.method.value).upper() and plural == request.resource.plural:
                    self.held += 1
                    async with self.changed:
                        self.changed.notify_all()
                    await gate.wait()
            for fault in self.faults:
                if fault.times and fault.method == str(request.method.value).upper() \
                        and fault.plural == request.resource.plural and fault.subresource == request.subresource:
                    fault.times -= 1
                    raise KubeApiError(status=fault.status, reason="Injected", message=f"injected {fault.status}")
            if str(request.method.value).upper() == "PUT" and request.name and request.resource.plural \
                    and len(self._payloads) == self._own_reactions:
                return await rendering.Response(payload=lambda: self._serve_replace(request))(request)
            server = _SERVERS.get(request.action) if request.action is not None else None
            if server is not None and request.resource.plural and len(self._payloads) == self._own_reactions:
                serve = getattr(self, server)
                return await rendering.Response(payload=lambda: serve(request))(request)
        return await apps.RawHandler._handle(self, request)

    def hold(self, method: str, plural: str) -> asyncio.Event:
        """Hold matching requests until the returned event is set (``held`` counts them)."""
        gate = self.gates[(method.upper(), plural)] = asyncio.Event()
        return gate

    def fail(self, method: str, plural: str, status: int, *, times: int = 1, subresource: str | None = None) -> None:
        """Answer the next ``times`` matching requests with ``status`` (and change nothing)."""
        self.faults.append(Fault(method.upper(), plural, subresource, status, times))

    def _res(self, request: rendering.Request) -> ResKey:
        res = request.resource
        key = (res.group or "", res.version or "", res.plural or "")
        if key not in RESOURCES:
            raise kmock.KubernetesResourceNotFoundError()
        return key

    # ----- state changes ------------------------------------------------------------------------

    async def _emit(self, res: ResKey, type_: str, obj: dict[str, Any]) -> None:
        # Stored objects are never changed in place (a change stores a new dict), so events, the history and
        # responses share them instead of copying.
        event = {"type": type_, "object": obj}
        rv = int(obj["metadata"]["resourceVersion"])
        self.history.setdefault(res, []).append((rv, event))
        for queue in self.watchers.get(res, []):
            queue.put_nowait(event)
        async with self.changed:
            self.changed.notify_all()

    def _validate(self, res: ResKey, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> None:
        """Validate against the resource's schema; after a change, only the top-level fields that changed
        (the rest passed before: a status write does not re-check the spec)."""
        schema = self.schemas.get(res)
        if schema is None:
            return
        cached = self._validators.get(res)
        if cached is None or cached[0] is not schema:  # built once per schema, not per write
            props = schema.get("properties") or {}
            cached = self._validators[res] = (schema, jsonschema.Draft4Validator(schema),
                                              {k: jsonschema.Draft4Validator(v) for k, v in props.items()})
        _, whole, by_field = cached
        changed = None
        if previous is not None and obj.keys() == previous.keys():
            changed = [k for k in obj if obj[k] is not previous[k] and obj[k] != previous[k]]
        if changed is not None and all(k in by_field for k in changed):
            errors = [(k, e) for k in changed for e in by_field[k].iter_errors(obj[k])]
        else:
            errors = [(None, e) for e in whole.iter_errors(obj)]
        error = jsonschema.exceptions.best_match(e for _, e in errors)
        if error is not None:
            field = next(k for k, e in errors if e is error)
            where = ".".join(str(p) for p in ([field] if field else []) + list(error.absolute_path)) or "(root)"
            raise KubeApiError(status=422, reason="Invalid", message=f"{RESOURCES[res][0]} is invalid: {where}: "
                               f"{error.message}")

    def _stamp(self, obj: dict[str, Any]) -> None:
        self.last_rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self.last_rv)

    async def put_object(self, res: ResKey, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object directly (as a test or another controller would)."""
        kind, namespaced, _ = RESOURCES[res]
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if meta.get("generateName") and not meta.get("name"):
            # As the API server: a generateName is a DNS subdomain once a trailing "-" is set aside.
            prefix = meta["generateName"]
            if not _DNS_SUBDOMAIN.fullmatch(prefix[:-1] + "a" if prefix.endswith("-") else prefix):
                raise KubeApiError(status=422, reason="Invalid", message=f"{kind} is invalid: metadata.generateName: "
                                   f"Invalid value: {prefix!r}: a lowercase RFC 1123 subdomain ...")
            meta["name"] = prefix + uuid.uuid4().hex[:5]
        if not _DNS_SUBDOMAIN.fullmatch(str(meta.get("name") or "")) or len(str(meta.get("name"))) > 253:
            raise KubeApiError(status=422, reason="Invalid", message=f"{kind} is invalid: metadata.name: "
                               f"Invalid value: {meta.get('name')!r}: a lowercase RFC 1123 subdomain ...")
        if not namespaced:
            meta.pop("namespace", None)
        key = (meta.get("namespace"), meta["name"])
        if key in self.store.setdefault(res, {}):
            raise KubeApiError(status=409, reason="AlreadyExists", message=f"{kind} {key[1]} already exists")
        obj["apiVersion"] = f"{res[0]}/{res[1]}" if res[0] else res[1]
        obj["kind"] = kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._validate(res, obj)
        if res == CRDS:
            self._establish(obj)
        self._stamp(obj)
        self.store[res][key] = obj
        await self._emit(res, "ADDED", obj)
        return obj

    async def modify(self, res: ResKey, key: ObjKey, fn: Any, *, status_only: bool = False,
                     pure: bool = False) -> dict[str, Any]:
        """Change an object with ``fn(obj) -> obj`` the way the API server would for that endpoint.

        ``pure``: ``fn`` builds a new object and changes nothing in place (no defensive copy is made).
        """
        _, _, has_status = RESOURCES[res]
        current = self.store.get(res, {}).get(key)
        if current is None:
            raise kmock.KubernetesObjectNotFoundError()
        new = fn(current if pure else copy.deepcopy(current))
        new["metadata"] = {**new.get("metadata", {}),
                           **{k: current["metadata"][k] for k in ("uid", "creationTimestamp", "name")},
                           "generation": current["metadata"].get("generation", 1)}
        if current["metadata"].get("namespace"):
            new["metadata"]["namespace"] = current["metadata"]["namespace"]
        new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
        if has_status:
            if status_only:
                new = {**{k: v for k, v in current.items() if k != "status"},
                       **({"status": new["status"]} if "status" in new else {})}
            elif "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        strip = ("metadata", "status")
        if {k: v for k, v in new.items() if k not in strip} != {k: v for k, v in current.items() if k not in strip}:
            new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        comparable = dict(new, metadata={k: v for k, v in new["metadata"].items() if k != "resourceVersion"})
        current_cmp = dict(current, metadata={k: v for k, v in current["metadata"].items() if k != "resourceVersion"})
        if comparable == current_cmp:
            return current  # a no-op write does not bump the resourceVersion (as the API server does)
        self._validate(res, new, current)
        self._stamp(new)
        self.store[res][key] = new
        await self._emit(res, "MODIFIED", new)
        return new

    def _establish(self, crd: dict[str, Any]) -> None:
        """A new CRD: its resource is served at once, validated by its storage version's schema."""
        spec = crd.get("spec") or {}
        for version in spec.get("versions") or []:
            res = (spec.get("group") or "", version.get("name") or "", (spec.get("names") or {}).get("plural") or "")
            if res not in RESOURCES:
                raise KubeApiError(status=422, reason="Invalid", message=f"this emulator does not serve {res}")
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if version.get("storage") and schema:
                self.schemas[res] = schema
        crd["status"] = {"conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": _now()},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "lastTransitionTime": _now()},
        ]}

    async def remove(self, res: ResKey, key: ObjKey, *, orphan: bool = False) -> dict[str, Any]:
        stored = self.store.get(res, {}).pop(key, None)
        if stored is None:
            raise kmock.KubernetesObjectNotFoundError()
        obj = {**stored, "metadata": dict(stored["metadata"])}  # the stored version stays as its events show it
        self._stamp(obj)
        await self._emit(res, "DELETED", obj)
        contents: list[tuple[ResKey, ObjKey]] = []
        if res == NAMESPACES:  # the namespace controller empties a deleted namespace
            contents = [(r, k) for r, objs in self.store.items() if RESOURCES[r][1] for k in objs if k[0] == key[1]]
        elif res == CRDS:  # deleting a CRD deletes its objects
            spec = obj.get("spec") or {}
            served = [(spec.get("group") or "", v.get("name") or "", (spec.get("names") or {}).get("plural") or "")
                      for v in spec.get("versions") or []]
            contents = [(r, k) for r in served for k in self.store.get(r, {})]
            for r in served:
                self.schemas.pop(r, None)
        for other_res, other_key in contents:
            if other_key in self.store.get(other_res, {}):
                await self.remove(other_res, other_key)
        uid = obj["metadata"]["uid"]
        for other_res, objs in [] if orphan else list(self.store.items()):  # garbage collection of dependents
            for other_key, other in list(objs.items()):
                if any(ref.get("uid") == uid for ref in other["metadata"].get("ownerReferences") or []):
                    await self.remove(other_res, other_key)
        return obj

    # ----- endpoints ----------------------------------------------------------------------------

    def _matches(self, request: rendering.Request, obj: dict[str, Any]) -> bool:
        ns = request.namespace
        if ns is not None and obj["metadata"].get("namespace") != ns:
            return False
        selector = request.params.get("labelSelector")
        if selector:
            labels = obj["metadata"].get("labels") or {}
            for term in selector.split(","):
                k, _, v = term.partition("=")
                if labels.get(k) != v:
                    return False
        return True

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        res = self._res(request)
        items = [o for o in self.store.get(res, {}).values() if self._matches(request, o)]
        kind = RESOURCES[res][0]
        return {"apiVersion": f"{res[0]}/{res[1]}" if res[0] else res[1], "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self.last_rv)}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        res = self._res(request)
        yield b""
        if self.closing:
            return
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        since = request.params.get("resourceVersion")
        if since and since != "0":
            backlog = [e for rv, e in self.history.get(res, []) if rv > int(since)]
        else:
            backlog = [{"type": "ADDED", "object": o} for o in self.store.get(res, {}).values()]
        self.watchers.setdefault(res, []).append(queue)
        try:
            for event in backlog:
                if self._matches(request, event["object"]):
                    yield event
            # timeoutSeconds: the server ends the watch after that long, as the API server does
            timeout = request.params.get("timeoutSeconds")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + float(timeout) if timeout and str(timeout).isdigit() else None
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), None if deadline is None
                                                   else max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    return
                if event is None:  # the fake is shutting down
                    return
                if isinstance(event, bytes) or self._matches(request, event["object"]):  # bytes: send_on_watches
                    yield event
        finally:
            self.watchers[res].remove(queue)

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        res = self._res(request)
        obj = self.store.get(res, {}).get((request.namespace, request.name))
        if obj is None:
            raise kmock.KubernetesObjectNotFoundError()
        if request.subresource == "scale":
            return self._scale_of(res, obj)
        return obj

    # ----- the scale subresource (as the API server serves it for a CRD's subresources.scale) ----------------

    def _scale_of(self, res: ResKey, obj: dict[str, Any]) -> dict[str, Any]:
        """The autoscaling/v1 Scale of an object; a GET fails while specReplicasPath holds no value."""
        if res not in SCALE:
            raise kmock.KubernetesResourceNotFoundError()
        spec_path, status_path, selector_path = SCALE[res]
        replicas = _path(obj, spec_path)
        if replicas is None:
            raise KubeApiError(status=500, reason="InternalError",
                               message=f"the spec replicas field {spec_path!r} does not exist")
        meta = obj["metadata"]
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                             if k in meta},
                "spec": {"replicas": replicas},
                # As a real API server answers: status.replicas 0 and no selector while the object has none.
                "status": {"replicas": _path(obj, status_path) or 0,
                           **({"selector": _path(obj, selector_path)} if _path(obj, selector_path) else {})}}

    async def _update_scale(self, res: ResKey, key: ObjKey, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of the Scale: its spec.replicas lands in specReplicasPath; a metadata.resourceVersion
        in the patch is a precondition (409 Conflict when the object has moved on)."""
        current = self.store.get(res, {}).get(key)
        if current is None:
            raise kmock.KubernetesObjectNotFoundError()
        scale = merge_patch(self._scale_of(res, current), patch)
        want = (scale.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != current["metadata"]["resourceVersion"]:
            raise KubeApiError(status=409, reason="Conflict", message="Operation cannot be fulfilled: the object has "
                               "been modified; please apply your changes to the latest version and try again")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise KubeApiError(status=422, reason="Invalid", message=f"Scale is invalid: spec.replicas: {replicas!r}")
        field = SCALE[res][0].split(".")

        def fn(obj: dict[str, Any]) -> dict[str, Any]:
            node = obj
            for part in field[:-1]:
                node = node.setdefault(part, {})
            node[field[-1]] = replicas
            return obj

        return self._scale_of(res, await self.modify(res, key, fn))

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        res = self._res(request)
        body = _json_body(request)
        if request.namespace and RESOURCES[res][1]:
            body = {**body, "metadata": {**(body.get("metadata") or {}), "namespace": request.namespace}}
        return await self.put_object(res, body)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        res = self._res(request)
        key = (request.namespace, request.name)
        content_type = request.headers.get("Content-Type", "").split(";")[0]
        status_only = request.subresource == "status"
        if content_type == "application/apply-patch+yaml":
            applied = request.data if isinstance(request.data, dict) else _load_apply(request.text)
            manager = request.params.get("fieldManager")
            if not manager:
                raise KubeApiError(status=400, reason="BadRequest", message="fieldManager is required for apply")
            if (applied.get("metadata") or {}).get("name") != request.name:
                raise KubeApiError(status=400, reason="BadRequest", message="the name in the body differs")
            memo = (res, key, manager + ("/status" if status_only else ""))
            if key not in self.store.get(res, {}):
                obj = await self.put_object(res, applied)
            else:
                previous = self.applied.get(memo)
                obj = await self.modify(res, key, lambda cur: merge_patch(_strip(cur, previous), applied),
                                        status_only=status_only, pure=True)
            self.applied[memo] = applied
            return obj
        if content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            raise KubeApiError(status=415, reason="UnsupportedMediaType", message=content_type)
        patch = _json_body(request)
        if request.subresource == "scale":
            return await self._update_scale(res, key, patch)
        return await self.modify(res, key, lambda cur: merge_patch(cur, patch), status_only=status_only, pure=True)

    async def _serve_replace(self, request: rendering.Request) -> rendering.Payload:
        """PUT (update): the whole object, with its ``metadata.resourceVersion`` as a precondition (409 when the
        object changed since; optimistic concurrency, what leader election relies on)."""
        res = self._res(request)
        key = (request.namespace, request.name)
        body = _json_body(request)
        current = self.store.get(res, {}).get(key)
        if current is None:
            raise kmock.KubernetesObjectNotFoundError()
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given and given != current["metadata"]["resourceVersion"]:
            raise KubeApiError(status=409, reason="Conflict",
                               message=f"the object has been modified; resourceVersion {given} is not the latest")
        return await self.modify(res, key, lambda _: copy.deepcopy(body), pure=True)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        """DELETE with DeleteOptions: ``preconditions`` (uid, resourceVersion: 409 Conflict on a mismatch)
        and ``propagationPolicy`` (Orphan leaves dependents; Background and Foreground delete them, at once)."""
        res = self._res(request)
        key = (request.namespace, request.name)
        options = _json_body(request) if request.text else {}
        current = self.store.get(res, {}).get(key)
        if current is None:
            raise kmock.KubernetesObjectNotFoundError()
        for field, want in ((options or {}).get("preconditions") or {}).items():
            if want is not None and current["metadata"].get(field) != want:
                raise KubeApiError(status=409, reason="Conflict", message=f"Precondition failed: {field} in "
                                   f"precondition: {want}, {field} in object meta: {current['metadata'].get(field)}")
        self.deletes.append({"resource": res, "key": key, "options": options or {}})
        return await self.remove(res, key, orphan=(options or {}).get("propagationPolicy") == "Orphan")

    def send_on_watches(self, res: ResKey, event: dict[str, Any] | bytes) -> None:
        """Send ``event`` on the open watches of ``res`` without storing anything: what a broken server or proxy
        might send, e.g. an object the API server would never serve, or bytes (sent as they are: a line that is
        not JSON)."""
        for queue in self.watchers.get(res, []):
            queue.put_nowait(event)  # type: ignore[arg-type]

    def end_watches(self, res: ResKey) -> None:
        """End the open watch streams of ``res`` (the server's timeout, a restart): clients watch again."""
        for queue in self.watchers.get(res, []):
            queue.put_nowait(None)  # type: ignore[arg-type]

    def close_watches(self) -> None:
        """End every open watch stream (aiohttp does not cancel handlers when clients go away)."""
        self.closing = True
        for queues in self.watchers.values():
            for queue in queues:
                queue.put_nowait(None)  # type: ignore[arg-type]

    @property
    def requests(self) -> list[rendering.Request]:
        """Every request served so far, in order (kmock records them)."""
        return list(self._requests)

    # ----- helpers for tests --------------------------------------------------------------------

    def get(self, res: ResKey, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self.store.get(res, {}).get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, res: ResKey, namespace: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (ns, _), o in sorted(self.store.get(res, {}).items(), key=lambda kv: str(kv[0]))
                if namespace is None or ns == namespace]

    async def wait_for(self, predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
        """Wait until ``predicate()`` is truthy, re-checking on every change (bounded by ``timeout``)."""

        async def _loop() -> Any:
            while True:
                async with self.changed:
                    value = predicate()
                    if value:
                        return value
                    # Woken by every stored change; re-checked every 50 ms for state outside the store.
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), 0.05)

        try:
            return await asyncio.wait_for(_loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

