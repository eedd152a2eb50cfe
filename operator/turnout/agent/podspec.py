"""Turn a container spec into a native command line and environment.

There is no container file system on the host, so each volume the pod mounts
becomes a host folder and every argument or environment value that names a
path under a mount point is rewritten to the host folder:

- ``emptyDir``: ``<state>/pods/<uid>/volumes/<name>`` (removed with the pod);
- ``persistentVolumeClaim``: ``<state>/claims/<namespace>/<claim>`` (kept; the
  claim is not attached, a local folder stands in for it, shared by the pods
  on this host that use the same claim);
- ``hostPath``: the path itself;
- ``secret`` / ``configMap``: the items written into the pod's folder (mode
  0600), read through the API;
- ``pvc://CLAIM/PATH`` arguments become the host folder of that claim.

Environment: ``value``, ``valueFrom`` ``secretKeyRef``/``configMapKeyRef``/
``fieldRef`` (``resourceFieldRef`` is not supported), and ``envFrom``.

Network: pods on a host share its network, so the agent binds the shim to the
pod IP: a command that runs the shim gets its ``--host`` rewritten (through
:mod:`turnout.shimargs`, the shim's own argv contract). Other commands can
bind ``$(POD_IP)`` from the downward API (``fieldRef: status.podIP``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.kube.errors import PermanentApiError
from turnout.shimargs import PROGRAM as SHIM_PROGRAM
from turnout.shimargs import ShimArgs
from turnout.sources import PVC_ROOT

SHIM_MODULE = "turnout.shim"

Fetch = Callable[[str, str, str], Awaitable[dict[str, Any] | None]]  # (plural, namespace, name) -> object


class ConfigProblem(Exception):
    """The container cannot be configured yet (kubelet's CreateContainerConfigError)."""


@dataclass(frozen=True)
class Mounts:
    """Mount points (container paths) to host folders, longest first."""

    pairs: tuple[tuple[str, str], ...]

    def rewrite(self, value: str) -> str:
        if value.startswith("pvc://"):
            claim, _, rest = value[len("pvc://"):].partition("/")
            value = f"{PVC_ROOT}/{claim}/{rest}".rstrip("/")
        for mount, host in self.pairs:
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return host + value[len(mount.rstrip("/")):]
            if "=" in value:  # --flag=/path and KEY=/path forms
                head, _, tail = value.partition("=")
                if tail == mount or tail.startswith(mount.rstrip("/") + "/"):
                    return f"{head}={host}{tail[len(mount.rstrip('/')):]}"
        return value


def _data(obj: Mapping[str, Any], *, secret: bool) -> dict[str, str]:
    out = {k: str(v) for k, v in (obj.get("stringData") or {}).items()}
    for key, value in (obj.get("data") or {}).items():
        out[key] = base64.b64decode(value).decode(errors="replace") if secret else str(value)
    for key, value in (obj.get("binaryData") or {}).items():
        out[key] = base64.b64decode(value).decode(errors="replace")
    return out


async def _source(fetch: Fetch, kind: str, namespace: str, name: str, optional: bool) -> dict[str, str] | None:
    plural = "secrets" if kind == "secret" else "configmaps"
    try:
        obj = await fetch(plural, namespace, name)
    except PermanentApiError as exc:
        if exc.status != 403:
            raise
        # The Node authorizer grants it once it has seen this pod bound here (a moment after binding), as
        # kubelet finds: retried like a missing one.
        raise ConfigProblem(f'{kind} "{name}": forbidden to this node: {exc.message}') from exc
    if obj is None:
        if optional:
            return None
        raise ConfigProblem(f'{kind} "{name}" not found')
    return _data(obj, secret=kind == "secret")


async def prepare_volumes(pod: Mapping[str, Any], pod_dir: Path, state_dir: Path, fetch: Fetch) -> dict[str, str]:
    """Host folders for every volume of the pod (created, secrets and config maps written)."""
    namespace = pod["metadata"].get("namespace", "default")
    out: dict[str, str] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        local = pod_dir / "volumes" / name
        if "persistentVolumeClaim" in volume:
            local = state_dir / "claims" / namespace / volume["persistentVolumeClaim"]["claimName"]
        elif "hostPath" in volume:
            local = Path(volume["hostPath"]["path"])
        local.mkdir(parents=True, exist_ok=True)
        for kind in ("secret", "configMap"):
            if kind not in volume:
                continue
            ref = volume[kind]
            obj_name = ref.get("secretName") if kind == "secret" else ref.get("name")
            data = await _source(fetch, kind, namespace, obj_name, bool(ref.get("optional")))
            items = ref.get("items") or [{"key": k, "path": k} for k in sorted(data or {})]
            for item in items:
                if data is None:
                    break
                if item["key"] not in data:
                    raise ConfigProblem(f'{kind} "{obj_name}" has no key "{item["key"]}"')
                target = local / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(data[item["key"]], encoding="utf-8")
                target.chmod(0o600)
        out[name] = str(local)
    return out


def mounts_for(container: Mapping[str, Any], volumes: Mapping[str, str]) -> Mounts:
    pairs = []
    for mount in container.get("volumeMounts") or []:
        host = volumes.get(mount["name"])
        if host is None:
            raise ConfigProblem(f'volume "{mount["name"]}" mounted by container "{container["name"]}" is not defined')
        if mount.get("subPath"):
            host = os.path.join(host, mount["subPath"])
        pairs.append((mount["mountPath"].rstrip("/") or "/", host))
    pairs.sort(key=lambda p: len(p[0]), reverse=True)
    return Mounts(tuple(pairs))


def _field(pod: Mapping[str, Any], path: str, address: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": address, "status.hostIP": address,
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((meta.get(source) or {}).get(path[len(prefix) + 2:-2], ""))
    raise ConfigProblem(f"fieldRef {path!r} is not supported by the host agent")


async def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], fetch: Fetch,
                        address: str, mounts: Mounts | None = None) -> dict[str, str]:
    """The container's environment variables, paths under mounts rewritten, then ``$(VAR)`` expanded."""
    rewrite = mounts.rewrite if mounts else str
    namespace = pod["metadata"].get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("secret", "secretRef"), ("configMap", "configMapRef")):
            if key in source:
                data = await _source(fetch, kind, namespace, source[key]["name"], bool(source[key].get("optional")))
                env.update({prefix + k: rewrite(v) for k, v in (data or {}).items()})
    for var in container.get("env") or []:
        if "valueFrom" not in var:
            env[var["name"]] = expand(rewrite(str(var.get("value", ""))), env)
            continue
        ref = var["valueFrom"]
        for kind, key in (("secret", "secretKeyRef"), ("configMap", "configMapKeyRef")):
            if key in ref:
                optional = bool(ref[key].get("optional"))
                data = await _source(fetch, kind, namespace, ref[key]["name"], optional)
                if data is not None and ref[key]["key"] in data:
                    env[var["name"]] = rewrite(data[ref[key]["key"]])
                elif not optional:
                    raise ConfigProblem(f'couldn\'t find key {ref[key]["key"]} in {kind} '
                                        f'{namespace}/{ref[key]["name"]}')
                break
        else:
            if "fieldRef" in ref:
                env[var["name"]] = _field(pod, ref["fieldRef"]["fieldPath"], address)
            else:
                raise ConfigProblem(f"env {var['name']}: only secretKeyRef, configMapKeyRef and fieldRef are "
                                    "supported by the host agent")
    return env


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes; unknown references stay as written)."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            name = value[i + 2:end]
            out.append(env.get(name, value[i:end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """``command`` + ``args`` with ``$(VAR)`` expanded; the image's entrypoint is unknown to the agent."""
    command: Sequence[str] = container.get("command") or []
    if not command:
        raise ConfigProblem(f'container "{container["name"]}" has no command: the host agent runs commands '
                            "natively and cannot use an image's entrypoint")
    return [expand(str(a), env) for a in [*command, *(container.get("args") or [])]]


def shim_args_start(argv: Sequence[str]) -> int | None:
    """Where the shim's own arguments begin when ``argv`` runs the shim, else None.

    Recognised: ``turnout-shim ...`` (any path to it) and ``python[3.x] [-flags] -m turnout.shim ...``.
    """
    if not argv:
        return None
    program = os.path.basename(argv[0])
    if program == SHIM_PROGRAM:
        return 1
    if not program.startswith("python"):
        return None
    for i in range(1, len(argv) - 1):
        if argv[i] == "-m":
            return i + 2 if argv[i + 1] == SHIM_MODULE else None
        if not argv[i].startswith("-") or argv[i] in ("-c", "-X", "-W"):
            return None  # a script, code or an option with a value: not ``-m turnout.shim``
    return None


def bind_shim(argv: Sequence[str], host: str) -> list[str]:
    """``argv`` with the shim's ``--host`` set to ``host``; other commands (and unparsable shim argv) unchanged.

    The shim's command line is parsed and rendered again with :class:`ShimArgs`, so the result is what
    the operator's renderer would have written with that host. A command line the shim would reject is
    left alone: the shim's own usage error then becomes the container's termination message.
    """
    start = shim_args_start(argv)
    if start is None:
        return list(argv)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = ShimArgs.parse(list(argv[start:]))
    except SystemExit:
        return list(argv)
    return [*argv[:start], *dataclasses.replace(args, host=host).to_argv()[1:]]
