"""The registry and the Kubernetes objects' reading: slices unioned per Service, names, readiness, ports."""

from __future__ import annotations

import asyncio

from gwkit import NS, model_deployment

from turnout.gateway.kubesource import model_from, slice_addresses
from turnout.gateway.registry import Model, Registry, SecretRef
from turnout.gateway.routing import PREFIX_HASH, RoutingSpec


def test_model_from_a_model_deployment() -> None:
    md = model_deployment("Qwen.Small", served="qwen", replicas=0, api_key_secret="keys",
                          routing={"strategy": "PrefixHash", "prefixCharLength": 64, "loadFactor": 1.5})
    md["metadata"]["creationTimestamp"] = "2026-01-02T03:04:05Z"
    model = model_from(md)
    assert (model.namespace, model.name, model.served, model.service) == (NS, "Qwen.Small", "qwen", "qwen-small")
    assert model.routing == RoutingSpec(strategy=PREFIX_HASH, prefix_char_length=64, load_factor=1.5)
    assert model.api_key == SecretRef("keys", "api-key") and model.asleep and model.created == 1767323045
    plain = model_from(model_deployment("plain"))
    assert plain.served == "plain" and plain.replicas is None and not plain.asleep and plain.api_key is None


def test_slice_addresses_are_the_ready_endpoints_on_the_http_port() -> None:
    es = {"addressType": "IPv4", "ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}],
          "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                        {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "terminating": True}},
                        {"addresses": ["10.0.0.3"]},  # ready unknown: read as ready (discovery/v1)
                        {"addresses": [], "conditions": {"ready": True}}]}
    assert slice_addresses(es) == [("10.0.0.1", 8000), ("10.0.0.3", 8000)]
    assert slice_addresses({**es, "addressType": "FQDN"}) == []
    assert slice_addresses({**es, "ports": None}) == []
    assert slice_addresses({**es, "ports": [{"port": 8080}]}) == [("10.0.0.1", 8080), ("10.0.0.3", 8080)]


async def test_endpoints_are_the_union_of_a_services_slices_and_waiters_wake() -> None:
    reg = Registry()
    model = reg.put_model(Model(namespace=NS, name="m", served="m", service="m"))
    waiter = asyncio.ensure_future(model.changed())
    reg.set_endpoints(NS, "m", "m-a", [("10.0.0.1", 8000)])
    await asyncio.wait_for(waiter, 1)
    reg.set_endpoints(NS, "m", "m-b", [("10.0.0.2", 8000)])
    reg.set_endpoints(NS, "other", "o-a", [("10.0.0.9", 8000)])
    assert [ep.key for ep in model.endpoints] == ["10.0.0.1:8000", "10.0.0.2:8000"]
    first = model.endpoints[0]
    first.in_flight = 3
    reg.set_endpoints(NS, "m", "m-a", None)
    assert [ep.key for ep in model.endpoints] == ["10.0.0.2:8000"]
    reg.set_endpoints(NS, "m", "m-b", [("10.0.0.2", 8000), ("10.0.0.3", 8000)])
    kept = model.endpoints[0]
    assert kept.key == "10.0.0.2:8000" and reg.get("m") is model
    reg.put_model(Model(namespace=NS, name="m", served="renamed", service="m", replicas=0))
    assert reg.get("m") is None and reg.get("renamed") is model and model.endpoints[0] is kept and model.asleep
    reg.reset_endpoints([NS], {})
    assert model.endpoints == []
    reg.drop_model(NS, "m")
    assert reg.models() == []


def test_one_served_name_for_two_deployments_goes_to_the_first_by_namespace_and_name() -> None:
    reg = Registry()
    reg.put_model(Model(namespace="b", name="x", served="same"))
    first = reg.put_model(Model(namespace="a", name="y", served="same"))
    assert reg.get("same") is first and len(reg.every_model()) == 2
