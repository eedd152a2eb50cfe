"""The gateway against the API emulator: models from ModelDeployments, endpoints from EndpointSlices."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from gwkit import MDS, NS, SECRETS, SLICES, Upstream, endpoint_slice, model_deployment
from openai import AsyncOpenAI
from standin_engine import StandinEngine


async def test_models_listed_and_requests_routed_by_model(fake, gateway, start_server) -> None:
    chat = await start_server(StandinEngine("engine-chat", 0))
    other = await start_server(StandinEngine("engine-other", 0))
    await fake.put_object(MDS, model_deployment("chat", served="chat-model"))
    await fake.put_object(MDS, model_deployment("other"))
    await fake.put_object(MDS, model_deployment("sleepy", replicas=0))
    await fake.put_object(SLICES, endpoint_slice("chat", "chat-abc", [chat]))
    await fake.put_object(SLICES, endpoint_slice("other", "other-abc", [other]))
    url, _ = await gateway()
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    listed = await client.models.list()
    assert sorted(m.id for m in listed.data) == ["chat-model", "other", "sleepy"]
    reply = await client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3)
    assert reply.model == "engine-chat" and reply.choices[0].message.content == "w0 w1 w2 "
    done = await client.completions.create(model="other", prompt="hi", max_tokens=2)
    assert done.model == "engine-other"
    stream = await client.chat.completions.create(model="chat-model", messages=[{"role": "user", "content": "x"}],
                                                  max_tokens=5, stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert "".join(pieces) == "w0 w1 w2 w3 w4 "
    assert usage is not None and usage.completion_tokens == 5
    async with httpx.AsyncClient(base_url=url) as http:
        metrics = (await http.get("/metrics")).text
        assert (await http.get("/healthz")).status_code == 200
    assert 'turnout_gateway_requests_total{code="200",deployment="chat",model="chat-model",namespace="models"} 2.0' \
        in metrics
    assert 'turnout_gateway_in_flight{deployment="chat",model="chat-model",namespace="models"} 0.0' in metrics
    assert "turnout_gateway_time_to_first_token_seconds_count" in metrics


async def test_unknown_model_bad_json_and_missing_model(fake, gateway) -> None:
    await fake.put_object(MDS, model_deployment("chat"))
    url, _ = await gateway()
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/chat/completions", json={"model": "nope", "messages": []})
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and "'chat'" in err["message"] and err["param"] == "model"
        assert err["type"] == "not_found_error"
        for method, path in (("GET", "/v1/engines"), ("POST", "/v1/assistants"), ("GET", "/nothing/here")):
            r = await http.request(method, path)
            assert r.status_code == 404, (method, path)
            assert r.json()["error"] == {"message": f"no route {method} {path}", "type": "not_found_error",
                                         "param": None, "code": "not_found"}
        r = await http.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = await http.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        r = await http.post("/v1/rerank", content=b"[1, 2]")
        assert r.status_code == 400
        r = await http.get("/v1/chat/completions")
        assert r.status_code == 405
        r = await http.get("/v1/models/nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_endpointslice_changes_move_the_traffic(fake, gateway, start_server) -> None:
    a, b = Upstream("a"), Upstream("b")
    port_a, port_b = await start_server(a), await start_server(b)
    await fake.put_object(MDS, model_deployment("m"))
    await fake.put_object(SLICES, endpoint_slice("m", "m-1", [port_a]))
    url, app = await gateway(hold_timeout=0.5)
    async with httpx.AsyncClient(base_url=url) as http:

        async def ask() -> httpx.Response:
            return await http.post("/v1/chat/completions", json={"model": "m", "messages": []})

        assert (await ask()).json()["model"] == "a"
        await fake.put_object(SLICES, endpoint_slice("m", "m-2", [port_b]))
        await _until(lambda: len(app.registry.get("m").endpoints) == 2)
        assert {(await ask()).json()["model"] for _ in range(6)} == {"a", "b"}
        await fake.remove(SLICES, (NS, "m-1"))
        await _until(lambda: len(app.registry.get("m").endpoints) == 1)
        assert {(await ask()).json()["model"] for _ in range(4)} == {"b"}
        await fake.modify(SLICES, (NS, "m-2"), lambda o: endpoint_slice("m", "m-2", [port_b], ready=False))
        await _until(lambda: not app.registry.get("m").endpoints)
        r = await ask()
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "model_not_ready"


async def test_scale_from_zero_holds_requests_and_wakes_once(fake, gateway, start_server) -> None:
    port = await start_server(StandinEngine("woken", 0))
    await fake.put_object(MDS, model_deployment("sleepy", replicas=0))
    url, app = await gateway(hold_timeout=30)
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    asks = [asyncio.ensure_future(client.completions.create(model="sleepy", prompt="x", max_tokens=1))
            for _ in range(3)]
    await fake.wait_for(lambda: (fake.get(MDS, NS, "sleepy")["spec"].get("replicas") == 1), timeout=10,
                        what="the wake patch")
    await _until(lambda: app.registry.get("sleepy").queued == 3)
    async with httpx.AsyncClient(base_url=url) as http:
        assert 'turnout_gateway_queue_length{deployment="sleepy",model="sleepy",namespace="models"} 3.0' \
            in (await http.get("/metrics")).text
    assert not any(a.done() for a in asks), "held, not refused"
    await fake.put_object(SLICES, endpoint_slice("sleepy", "sleepy-1", [port]))  # the pod is ready
    replies = await asyncio.wait_for(asyncio.gather(*asks), 10)
    assert {r.model for r in replies} == {"woken"}
    scales = [r for r in fake.requests if r.subresource == "scale"]
    assert [(str(r.method.value).upper(), r.name) for r in scales] == [("GET", "sleepy"), ("PATCH", "sleepy")]
    assert scales[1].headers["Content-Type"].startswith("application/merge-patch+json")


async def test_hold_timeout_and_queue_bound_answer_with_retry_after(fake, gateway) -> None:
    await fake.put_object(MDS, model_deployment("cold", replicas=0))
    url, app = await gateway(hold_timeout=1.0, queue_size=1)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        body = {"model": "cold", "prompt": "x"}
        first = asyncio.ensure_future(http.post("/v1/completions", json=body))
        await _until(lambda: app.registry.get("cold").queued == 1)
        second = await http.post("/v1/completions", json=body)
        assert second.status_code == 429 and second.headers["retry-after"] == "5"
        assert second.json()["error"]["code"] == "queue_full"
        held = await first
        assert held.status_code == 503 and held.headers["retry-after"] == "5"
        assert held.json()["error"]["type"] == "service_unavailable"


async def test_a_refused_connection_goes_to_another_endpoint(fake, gateway, start_server, free_port) -> None:
    live = await start_server(Upstream("live"))
    await fake.put_object(MDS, model_deployment("m"))
    await fake.put_object(SLICES, endpoint_slice("m", "m-dead", [free_port]))  # a pod just gone
    await fake.put_object(SLICES, endpoint_slice("m", "m-live", [live]))
    url, _ = await gateway()
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(6):
            r = await http.post("/v1/chat/completions", json={"model": "m", "messages": []})
            assert r.status_code == 200 and r.json()["model"] == "live"
        metrics = (await http.get("/metrics")).text
    assert 'turnout_gateway_upstream_errors_total{deployment="m",model="m",namespace="models"}' in metrics


async def test_client_disconnect_cancels_the_upstream_stream(fake, gateway, start_server) -> None:
    upstream = Upstream("slow", delay=0.05)
    port = await start_server(upstream)
    await fake.put_object(MDS, model_deployment("m"))
    await fake.put_object(SLICES, endpoint_slice("m", "m-1", [port]))
    url, app = await gateway()
    async with httpx.AsyncClient(base_url=url) as http, http.stream(
            "POST", "/v1/chat/completions", json={"model": "m", "messages": [], "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                break
    await asyncio.wait_for(upstream.disconnected.wait(), 10)
    await _until(lambda: app.registry.get("m").endpoints[0].in_flight == 0)


def published(digests: dict[str, bytes]) -> dict:
    """``turnout-gateway-keys`` as the operator writes it (turnout.controller.keypublish) for these keys."""
    from turnout.api import key_digest
    from turnout.controller.keypublish import keys_secret

    return keys_secret(NS, {name: key_digest(key) for name, key in digests.items()})


async def test_api_keys_from_the_published_digests_and_the_gateway_key(fake, gateway, start_server,
                                                                       tmp_path) -> None:
    upstream = Upstream("keyed")
    port = await start_server(upstream)
    # The user's key Secret is there, but the gateway reads only the digests the operator published.
    await fake.put_object(SECRETS, {"metadata": {"name": "keys", "namespace": NS}, "type": "Opaque",
                                    "data": {"api-key": base64.b64encode(b"model-secret\n").decode()}})
    await fake.put_object(SECRETS, published({"keyed": b"model-secret"}))
    await fake.put_object(MDS, model_deployment("keyed", api_key_secret="keys"))
    await fake.put_object(MDS, model_deployment("open"))
    await fake.put_object(MDS, model_deployment("lost", api_key_secret="missing"))
    for name in ("keyed", "open"):
        await fake.put_object(SLICES, endpoint_slice(name, f"{name}-1", [port]))
    from turnout.shim.apikey import ApiKeyFile

    key_file = tmp_path / "gateway-key"
    key_file.write_text("gateway-secret\n")
    url, _ = await gateway(api_key=ApiKeyFile(str(key_file)).current)
    async with httpx.AsyncClient(base_url=url) as http:

        async def ask(model: str, key: str | None) -> httpx.Response:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return await http.post("/v1/chat/completions", json={"model": model, "messages": []}, headers=headers)

        for model, key in (("keyed", None), ("keyed", "wrong"), ("keyed", "gateway-secret"), ("open", None),
                           ("open", "model-secret"), ("unknown", None)):
            r = await ask(model, key)
            assert r.status_code == 401, (model, key)
            assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert (await ask("keyed", "model-secret")).status_code == 200
        assert upstream.requests[-1][0][b"authorization"] == b"Bearer model-secret"
        assert (await ask("open", "gateway-secret")).status_code == 200
        assert upstream.requests[-1][0][b"authorization"] == b"Bearer gateway-secret"
        assert (await ask("unknown", "gateway-secret")).status_code == 404
        for path, body in (("/v1/embeddings", {"input": "x"}), ("/v1/rerank", {"query": "q", "documents": ["d"]}),
                           ("/v1/completions", {"prompt": "p"})):
            r = await http.post(path, json={"model": "open", **body},
                                headers={"Authorization": "Bearer gateway-secret"})
            assert r.status_code == 200 and upstream.paths[-1] == path
            assert json.loads(upstream.requests[-1][1]) == {"model": "open", **body}, "the body as the client sent it"
        r = await ask("lost", "whatever")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        error = r.json()["error"]
        assert error["code"] == "api_key_unavailable" and "not published yet" in error["message"] \
            and f"{NS}/turnout-gateway-keys" in error["message"] and f"{NS}/missing" in error["message"]
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/v1/models", headers={"Authorization": "Bearer gateway-secret"})).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert 'turnout_gateway_requests_total{code="401",deployment="keyed",model="keyed",namespace="models"} 3.0' \
        in metrics
    secret_reads = [r for r in fake.requests if r.resource is not None and r.resource.plural == "secrets"]
    assert {r.name for r in secret_reads} == {"turnout-gateway-keys"}, "no other Secret is read"
    assert len(secret_reads) <= 3, "the digests are cached (read again only for a model missing from them)"


async def test_a_key_published_late_and_a_rotated_key(fake, gateway, start_server) -> None:
    port = await start_server(Upstream("keyed"))
    await fake.put_object(MDS, model_deployment("keyed", api_key_secret="keys"))
    await fake.put_object(SLICES, endpoint_slice("keyed", "keyed-1", [port]))
    url, app = await gateway()
    app.source.key_ttl = 0.3
    async with httpx.AsyncClient(base_url=url) as http:

        async def ask(key: str) -> int:
            r = await http.post("/v1/chat/completions", json={"model": "keyed", "messages": []},
                                headers={"Authorization": f"Bearer {key}"})
            return r.status_code

        assert await ask("first") == 503, "not published yet: refused, never let through"
        await fake.put_object(SECRETS, published({"keyed": b"first"}))
        await _until_async(lambda: ask("first"), 200)
        assert await ask("second") == 401
        rotated = published({"keyed": b"second"})["data"]  # the operator followed a rotation
        await fake.modify(SECRETS, (NS, "turnout-gateway-keys"), lambda o: {**o, "data": rotated})
        await _until_async(lambda: ask("second"), 200)
        assert await ask("first") == 401
        fake.fail("GET", "secrets", 500, times=3)  # a failed refresh keeps the digests read before
        await asyncio.sleep(0.4)
        assert await ask("second") == 200


async def _until_async(call, expected, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await call()) != expected:
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {expected}, last {got}")
        await asyncio.sleep(0.05)


async def test_a_410_on_the_watch_lists_again(fake, gateway, start_server) -> None:
    port = await start_server(Upstream("late"))
    await fake.put_object(MDS, model_deployment("m"))
    url, app = await gateway(watch_timeout=1)
    fake.fail("GET", "endpointslices", 410, times=1)

    def lists() -> int:
        return len([r for r in fake.requests if r.resource is not None and r.resource.plural == "endpointslices"
                    and r.params.get("watch") != "true"])

    await _until(lambda: lists() >= 2, timeout=15)  # the next watch got the 410: listed again
    await fake.put_object(SLICES, endpoint_slice("m", "m-1", [port]))
    await _until(lambda: app.registry.get("m").endpoints, timeout=15)
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/v1/chat/completions", json={"model": "m", "messages": []})
        assert r.json()["model"] == "late"


async def _until(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("timed out waiting")
        await asyncio.sleep(0.02)


def _verb(request) -> str:
    method = str(request.method.value).upper()
    if method == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


async def test_recorded_api_use_equals_the_declared_rbac(fake, gateway, start_server) -> None:
    from turnout.gateway.rbac import RULES
    from turnout.kube.rbac import covers

    port = await start_server(Upstream("u"))
    await fake.put_object(SECRETS, published({"keyed": b"k"}))
    await fake.put_object(MDS, model_deployment("keyed", replicas=0, api_key_secret="keys"))
    first = len(fake.requests)
    url, _ = await gateway(hold_timeout=10)
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:
        ask = asyncio.ensure_future(http.post("/v1/chat/completions", json={"model": "keyed", "messages": []},
                                              headers={"Authorization": "Bearer k"}))
        await fake.wait_for(lambda: fake.get(MDS, NS, "keyed")["spec"].get("replicas") == 1, timeout=10)
        await fake.put_object(SLICES, endpoint_slice("keyed", "keyed-1", [port]))
        assert (await ask).status_code == 200
    used = {(r.resource.group or "", r.resource.plural + (f"/{r.subresource}" if r.subresource else ""), _verb(r),
             r.name or None) for r in fake.requests[first:] if r.resource is not None and r.resource.plural}
    uncovered = sorted(u for u in used if covers(*u[:3], rules=RULES, name=u[3]) is None)
    assert uncovered == [], f"requests the gateway's RBAC rules do not allow: {uncovered}"
    verbs_used = {u[:3] for u in used}
    unused = [(r.api_group, r.resource, v) for r in RULES for v in r.verbs if (r.api_group, r.resource, v)
              not in verbs_used]
    assert unused == [], f"declared rules the gateway never used: {unused}"
    assert covers("", "secrets", "get", RULES, name="keys") is None, "no Secret but the published digests"


def test_rbac_prints_a_cluster_role_and_a_role(capsys) -> None:
    import yaml

    from turnout.gateway.rbac import RULES, cluster_role, main, role

    assert main([]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == cluster_role() and printed["kind"] == "ClusterRole"
    assert role("g", "models")["metadata"] == {"name": "g", "namespace": "models"}
    assert {(r["apiGroups"][0], r["resources"][0]) for r in printed["rules"]} == \
        {(r.api_group, r.resource) for r in RULES}
    assert all(rule.why for rule in RULES)


async def test_prefix_hash_keeps_a_prompt_on_one_endpoint(fake, gateway, start_server) -> None:
    ups = [Upstream(f"u{i}") for i in range(3)]
    ports = [await start_server(u) for u in ups]
    await fake.put_object(MDS, model_deployment("m", routing={"strategy": "PrefixHash", "prefixCharLength": 20}))
    for i, port in enumerate(ports):
        await fake.put_object(SLICES, endpoint_slice("m", f"m-{i}", [port]))
    url, app = await gateway()
    await _until(lambda: len(app.registry.get("m").endpoints) == 3)
    async with httpx.AsyncClient(base_url=url) as http:

        async def served_by(prompt: str) -> str:
            r = await http.post("/v1/chat/completions",
                                json={"model": "m", "messages": [{"role": "user", "content": prompt}]})
            return r.json()["model"]

        for n in range(5):
            prefix = f"conversation {n}: the same twenty characters"
            owners = {await served_by(prefix + f" then turn {t}") for t in range(4)}
            assert len(owners) == 1, "one prefix, one endpoint (while unloaded)"
        spread = {await served_by(f"{n} different prompt") for n in range(30)}
        assert len(spread) == 3
