"""Container probes (httpGet, tcpSocket, exec) run natively against the container's process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from turnout.aio import wait_for


class ProbeError(ValueError):
    """The probe spec cannot be run (e.g. a port name the container does not declare)."""


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ProbeError(f"port {port!r} is not one of the container's named ports")


def _setting(key: str, default: int, kind: Callable[[Any], float]) -> property:
    """A read-only field of the probe's spec: ``kind(value)``, or ``default`` when it is absent (or 0)."""
    return property(lambda self: kind(self.spec.get(key) or default), doc=f"``{key}`` (default {default})")


@dataclass(frozen=True)
class Probe:
    """One probe of a container, with kubelet's defaults."""

    spec: Mapping[str, Any]
    container: Mapping[str, Any]
    host: str = "127.0.0.1"

    # kubelet's defaults for what the probe does not say
    initial_delay = _setting("initialDelaySeconds", 0, float)
    period = _setting("periodSeconds", 10, float)
    timeout = _setting("timeoutSeconds", 1, float)
    success_threshold = _setting("successThreshold", 1, int)
    failure_threshold = _setting("failureThreshold", 3, int)

    async def check(self, env: Mapping[str, str] | None = None, session: aiohttp.ClientSession | None = None
                    ) -> tuple[bool, str]:
        """Run the probe once: (success, message)."""
        try:
            return await wait_for(self._check(env or {}, session), self.timeout)
        except asyncio.TimeoutError:
            return False, f"probe timed out after {self.timeout:g}s"
        except ProbeError as exc:
            return False, str(exc)

    async def _check(self, env: Mapping[str, str], session: aiohttp.ClientSession | None) -> tuple[bool, str]:
        if "httpGet" in self.spec:
            get = self.spec["httpGet"]
            port = resolve_port(get.get("port"), self.container)
            scheme = str(get.get("scheme") or "HTTP").lower()
            host = get.get("host") or self.host
            url = f"{scheme}://{host}:{port}{get.get('path') or '/'}"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            owned = session is None
            session = session or aiohttp.ClientSession()
            try:
                async with session.get(url, headers=headers, ssl=False, allow_redirects=False) as resp:
                    ok = 200 <= resp.status < 400
                    return ok, f"HTTP probe {url}: {resp.status}"
            except (aiohttp.ClientError, OSError) as exc:
                return False, f"HTTP probe {url} failed: {exc}"
            finally:
                if owned:
                    await session.close()
        if "tcpSocket" in self.spec:
            sock = self.spec["tcpSocket"]
            port = resolve_port(sock.get("port"), self.container)
            host = sock.get("host") or self.host
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                return False, f"TCP probe {host}:{port} failed: {exc}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True, f"TCP probe {host}:{port}: connected"
        if "exec" in self.spec:
            return await run_exec(self.spec["exec"].get("command") or [], env)
        raise ProbeError("probe has no httpGet, tcpSocket or exec handler (grpc probes are not supported)")


async def run_exec(command: Sequence[str], env: Mapping[str, str]) -> tuple[bool, str]:
    if not command:
        raise ProbeError("exec probe without a command")
    try:
        proc = await asyncio.create_subprocess_exec(*command, env=dict(env), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return False, f"exec {command[0]!r} failed: {exc}"
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode == 0, out.decode(errors="replace")[-500:]
