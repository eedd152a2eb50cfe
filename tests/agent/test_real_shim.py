"""The real shim, rendered by the operator's own resolver and renderer, run by the agent on a CPU node."""

from __future__ import annotations

import pytest
from agentfake import AgentFake
from agentharness import ADDRESS, NODE, NODES, NS, PODS, container_status, delete_pod, pid_gone, pod, running_and_ready

from modelplane.agent import EnvMap
from modelplane.api.types import ModelDeploymentSpec
from modelplane.config import OperatorConfig
from modelplane.hardware import parse_nodes
from modelplane.render.manifests import render_deployment
from modelplane.resolver import Plan, resolve

pytest.importorskip("xllamacpp", reason="the llama.cpp backend needs xllamacpp")


@pytest.mark.slow
async def test_real_shim_serves_the_tiny_gguf_through_the_agent(fake: AgentFake, agents, tiny_model,
                                                                free_port: int) -> None:
    # Default env map: ghcr.io/modelplane/* images run with this Python environment's modelplane-shim.
    await agents(accelerator="cpu", env_map=EnvMap(), backoff_initial=1.0).start()
    md = {
        "apiVersion": "modelplane.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "tiny-chat", "namespace": NS},
        "spec": {"model": {"uri": f"file://{tiny_model.gguf_path}", "type": "llm", "size": 0.01, "format": "gguf"},
                 "servedModelName": "tiny-chat", "accelerator": {"type": "cpu"},
                 "tolerations": [{"key": "modelplane.io/agent", "operator": "Exists", "effect": "NoSchedule"}]},
    }
    config = OperatorConfig(port=free_port)
    plan = resolve(ModelDeploymentSpec.model_validate(md["spec"]), parse_nodes([fake.get(NODES, None, NODE)]), config)
    assert isinstance(plan, Plan), plan
    assert plan.engine == "llama.cpp"
    template = render_deployment(plan, md, config)["spec"]["template"]
    await fake.put_object(PODS, {"metadata": {"name": "tiny-chat-0", "namespace": NS, **template["metadata"]},
                                 "spec": {**template["spec"], "nodeName": NODE}})

    await fake.wait_for(lambda: running_and_ready(fake, "tiny-chat-0") or
                        container_status(fake, "tiny-chat-0").get("restartCount"), timeout=180,
                        what="the shim Ready (startup probe, then readiness on /health)")
    cs = container_status(fake, "tiny-chat-0")
    assert cs.get("restartCount") == 0, cs.get("lastState")
    assert (pod(fake, "tiny-chat-0")["status"]["podIP"]) == ADDRESS

    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"http://{ADDRESS}:{free_port}/v1", api_key="none")
    reply = await client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=4, temperature=0)
    assert reply.model == "tiny-chat" and reply.choices[0].message.content is not None
    await client.close()

    shim_pid = int(cs["containerID"].rsplit("-", 1)[1])
    await delete_pod(fake, "tiny-chat-0")
    await fake.wait_for(lambda: pod(fake, "tiny-chat-0") is None, timeout=60, what="the pod removed")
    assert pid_gone(shim_pid)
