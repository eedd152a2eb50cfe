"""The operator tests' API emulator (kmock-based FakeKube) plus what a node agent relies on.

kmock and FakeKube serve watches, status subresources and merge patches over
real HTTP; the agent also needs, following the API server's documented
contract:

- Leases (``coordination.k8s.io/v1``, namespaced) for the node heartbeat;
- ``fieldSelector`` on lists and watches (``spec.nodeName=NAME``);
- graceful pod deletion: DELETE of a pod bound to a node with a grace period
  > 0 only sets ``metadata.deletionTimestamp`` and
  ``deletionGracePeriodSeconds`` (a MODIFIED event); the object goes away when
  the node's agent deletes it with ``gracePeriodSeconds=0``; a ``uid``
  precondition that does not match answers 409.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import attrs
import fakekube
from fakekube import FakeKube, KubeApiError
from kmock._internal import rendering

LEASES = ("coordination.k8s.io", "v1", "leases")
PODS = ("", "v1", "pods")
NODES = ("", "v1", "nodes")
SECRETS = ("", "v1", "secrets")
CONFIGMAPS = ("", "v1", "configmaps")
# Registered in the shared table before any emulator is built (extra kinds do not change the operator's tests).
fakekube.RESOURCES.setdefault(LEASES, ("Lease", True, False))
fakekube.RESOURCES.setdefault(SECRETS, ("Secret", True, False))
fakekube.RESOURCES.setdefault(CONFIGMAPS, ("ConfigMap", True, False))


def _field(obj: Any, path: str) -> str:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj)


@attrs.define(kw_only=True)
class AgentFake(FakeKube):
    """See the module docstring."""

    def _matches(self, request: rendering.Request, obj: dict[str, Any]) -> bool:
        if not super()._matches(request, obj):
            return False
        for term in filter(None, (request.params.get("fieldSelector") or "").split(",")):
            key, _, value = term.partition("=")
            if key.endswith("!"):
                if _field(obj, key[:-1]) == value:
                    return False
            elif _field(obj, key) != value.lstrip("="):
                return False
        return True

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        res = self._res(request)
        key = (request.namespace, request.name)
        current = self.store.get(res, {}).get(key)
        if current is None or res != PODS:
            return await super()._serve_delete(request)
        options = json.loads(request.text) if request.text else {}
        uid = (options.get("preconditions") or {}).get("uid")
        if uid and uid != current["metadata"]["uid"]:
            raise KubeApiError(status=409, reason="Conflict", message="Precondition failed: UID in precondition")
        grace = request.params.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        if grace is None:
            grace = current["metadata"].get("deletionGracePeriodSeconds",
                                            current["spec"].get("terminationGracePeriodSeconds", 30))
        terminal = (current.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if int(grace) > 0 and current["spec"].get("nodeName") and not terminal:
            if current["metadata"].get("deletionTimestamp"):
                return current
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

            def mark(obj: dict[str, Any]) -> dict[str, Any]:
                obj["metadata"]["deletionTimestamp"] = stamp
                obj["metadata"]["deletionGracePeriodSeconds"] = int(grace)
                return obj

            return await self.modify(res, key, mark)
        return await self.remove(res, key)
