"""Carry out :func:`turnout.controller.adapters.work`: load and unload LoRA adapters in the pods' engines.

Each pod's shim serves vLLM's runtime API: ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and
``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` (``lora_path`` is the adapter's source URI; the shim fetches
it as it fetches models, through :mod:`turnout.sources`). One task per pod runs at a time, outside the
reconcile (a download may take minutes); when it is done it writes what the engine now holds into the pod's
``turnout.dev/adapters`` annotation, whose watch event reconciles the deployment again (status.adapters).
A pod whose shim cannot be reached is tried again after :data:`RETRY_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

import aiohttp

from turnout.api import SecretKeyRef
from turnout.controller.adapters import Held, PodWork
from turnout.controller.keypublish import KeyProblem, read_key
from turnout.controller.metrics import Metrics
from turnout.controller.world import ADAPTERS_ANNOTATION
from turnout.kube import ApiError, KubeClient, api_path

logger = logging.getLogger("turnout.controller.adapters")

#: seconds before a pod whose shim could not be reached is tried again
RETRY_AFTER = 5.0
#: seconds one load may take (the shim downloads the adapter first)
LOAD_TIMEOUT = 600.0
#: answers to a load that say "not now" (busy, not ready, a proxy's hiccup): tried again, never recorded as failed
PASSING = (429, 502, 503, 504)


class Unreachable(Exception):
    """The shim did not answer (connection refused, reset, timed out)."""


class AdapterLoader:
    """Runs each pod's adapter work in its own task; ``retry(namespace, name)`` asks for another reconcile."""

    def __init__(self, client: KubeClient, port: int, retry: Callable[[str, str, float], None], *,
                 timeout: float = LOAD_TIMEOUT, metrics: Metrics | None = None) -> None:
        self.client = client
        self.metrics = metrics  # counts the loads and unloads done, by reason
        self.port = port
        self.retry = retry
        self.timeout = timeout
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}  # (namespace, pod) -> its work
        #: (namespace, deployment) -> pod -> the record last written there, until the watch shows it
        self._written: dict[tuple[str, str], dict[str, Held]] = {}
        self._session: aiohttp.ClientSession | None = None

    def start(self, namespace: str, name: str, key_ref: SecretKeyRef | None, work: Iterable[PodWork],
              pods: Iterable[str]) -> None:
        """Start the work of each pod that has none running and whose annotation shows our last write.

        ``pods``: the deployment's pods now (what is remembered of others is dropped).
        """
        written = self._written.get((namespace, name), {})
        for gone in set(written) - set(pods):
            del written[gone]
        for w in work:
            where = (namespace, w.pod)
            if where in self._tasks:
                continue
            last = written.get(w.pod)
            if last is not None and last.restarts == w.held.restarts and last != w.held:
                continue  # the watch has not shown our last record yet: the work is computed from an older one
            written.pop(w.pod, None)
            task = asyncio.create_task(self._run(namespace, name, key_ref, w))
            self._tasks[where] = task
            task.add_done_callback(lambda _t, where=where: self._tasks.pop(where, None))

    def forget(self, namespace: str, name: str) -> None:
        """The deployment is gone: drop what is remembered of its pods."""
        self._written.pop((namespace, name), None)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()

    async def _run(self, namespace: str, name: str, key_ref: SecretKeyRef | None, w: PodWork) -> None:
        try:
            headers = await self._headers(namespace, key_ref)
            held, again = await self._change(w, headers)
            await self.client.merge_patch(api_path("v1", "pods", namespace, w.pod),
                                          {"metadata": {"annotations": {ADAPTERS_ANNOTATION: held.to_json()}}})
            self._written.setdefault((namespace, name), {})[w.pod] = held
            if again:
                self.retry(namespace, name, RETRY_AFTER)
        except Unreachable as exc:
            logger.info("adapters of %s/%s: %s; trying again in %.0fs", namespace, name, exc, RETRY_AFTER)
            self.retry(namespace, name, RETRY_AFTER)
        except ApiError as exc:
            if exc.status != 404:  # a pod gone meanwhile has nothing to record
                logger.warning("cannot record the adapters of pod %s/%s: %s", namespace, w.pod, exc)
                self.retry(namespace, name, RETRY_AFTER)
        except Exception:
            logger.exception("adapters of %s/%s on pod %s failed", namespace, name, w.pod)
            self.retry(namespace, name, RETRY_AFTER)

    async def _headers(self, namespace: str, ref: SecretKeyRef | None) -> dict[str, str]:
        """The Bearer key a keyed deployment's shims require (from the Secret its apiKeySecretRef names)."""
        if ref is None:
            return {}
        where = f"Secret {namespace}/{ref.name}"
        try:
            key = read_key(await self.client.get(api_path("v1", "secrets", namespace, ref.name)), where, ref.key)
        except KeyProblem as exc:
            raise Unreachable(f"cannot authenticate to the shims: {exc}") from None
        return {"Authorization": f"Bearer {key.decode()}"}

    async def _change(self, w: PodWork, headers: dict[str, str]) -> tuple[Held, bool]:
        """Unload, then load, on one pod; what its engine holds afterwards, and whether to try again later.

        The shim's ``/v1/models`` is asked first: an adapter it lists already (loaded before our record was
        written, or by ``--lora-modules``) is not loaded again. A load answered with a passing refusal (429,
        502, 503, 504: busy, not ready) is neither recorded as failed nor counted as loaded: it is tried again.
        """
        again = False
        loaded, failed = dict(w.held.loaded), dict(w.held.failed)
        present = await self._present(w, headers)
        for adapter in w.unload:
            status, message = await self._post(w, "/v1/unload_lora_adapter", {"lora_name": adapter}, headers)
            if status < 300 or status == 404:  # 404: the engine did not hold it (any more)
                loaded.pop(adapter, None)
                present.discard(adapter)
                if status < 300 and self.metrics is not None:
                    self.metrics.adapter_unloads.labels(reason=_reason(adapter, w.evicted)).inc()
            else:
                logger.warning("pod %s could not unload adapter %s: %s", w.pod, adapter, message)
            failed.pop(adapter, None)
        for adapter, uri in w.load:
            if adapter in present:
                loaded[adapter] = uri
                failed.pop(adapter, None)
                continue
            status, message = await self._post(w, "/v1/load_lora_adapter", {"lora_name": adapter, "lora_path": uri},
                                               headers)
            if status < 300:
                loaded[adapter] = uri
                failed.pop(adapter, None)
                if self.metrics is not None:
                    self.metrics.adapter_loads.labels(reason=_reason(adapter, w.demanded)).inc()
            elif status in PASSING:
                logger.info("pod %s cannot load adapter %s now (%d: %s); trying again", w.pod, adapter, status,
                            message)
                again = True
            else:
                failed[adapter] = (uri, f"{status}: {message}")
        used = {n: t for n, t in w.used.items() if n in loaded}
        return Held(w.held.restarts, loaded, failed, used), again

    async def _present(self, w: PodWork, headers: dict[str, str]) -> set[str]:
        """The adapters the shim lists (entries of ``/v1/models`` with a ``parent``); empty when it says none."""
        status, text = await self._request(w, "GET", "/v1/models", None, headers)
        with suppress(ValueError, AttributeError, TypeError, KeyError):
            if status == 200:
                return {str(m["id"]) for m in json.loads(text)["data"] if m.get("parent")}
        return set()

    async def _post(self, w: PodWork, path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str]:
        status, text = await self._request(w, "POST", path, body, headers)
        return status, _message(text)

    async def _request(self, w: PodWork, method: str, path: str, body: dict[str, Any] | None,
                       headers: dict[str, str]) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"http://{w.ip}:{self.port}{path}"
        try:
            async with self._session.request(method, url, json=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Unreachable(f"the shim of pod {w.pod} at {url} did not answer: {exc or type(exc).__name__}"
                              ) from None


def _reason(adapter: str, by_demand: tuple[str, ...]) -> str:
    return "demand" if adapter in by_demand else "spec"


def _message(text: str) -> str:
    """The OpenAI error envelope's message, else the body as it is (shortened)."""
    with suppress(ValueError, AttributeError, TypeError, KeyError):
        return str(json.loads(text)["error"]["message"])
    return text.strip()[:500]
