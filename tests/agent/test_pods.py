"""Pods bound to the agent's node run as real processes: start, Ready, crash loop, deletion, adoption."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request

from agentfake import AgentFake
from agentharness import (
    ADDRESS,
    NODE,
    NS,
    PODS,
    condition,
    container_status,
    delete_pod,
    pid_gone,
    pod,
    pod_events,
    running_and_ready,
    standin_pod,
    status,
)


def get_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://{ADDRESS}:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


async def test_pod_runs_natively_and_becomes_ready(fake: AgentFake, agents, free_port) -> None:
    run = await agents().start()
    port = free_port
    spec = standin_pod("web", port, extra_args=("--ready-after", "1.5"), container={
        "env": [{"name": "MODEL_DIR", "value": "/models/hf"}, {"name": "GREETING", "value": "hi $(MODEL_DIR)"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "volumeMounts": [{"name": "cache", "mountPath": "/models"}],
    }, volumes=[{"name": "cache", "emptyDir": {}}])
    await fake.put_object(PODS, spec)

    # Not ready while /health answers 503, though the process runs.
    await fake.wait_for(lambda: "running" in container_status(fake, "web").get("state", {}), what="running")
    assert condition(pod(fake, "web"), "Ready")["status"] == "False"
    await fake.wait_for(lambda: running_and_ready(fake, "web"), what="Running and Ready")
    st = status(fake, "web")
    assert st["podIP"] == st["hostIP"] == ADDRESS
    cs = container_status(fake, "web")
    assert cs["ready"] and cs["started"] and cs["restartCount"] == 0
    assert cs["state"]["running"]["startedAt"]

    env = get_json(port, "/env")
    pod_dir = os.path.join(run.config.state_dir, "pods", pod(fake, "web")["metadata"]["uid"])
    assert env["MODEL_DIR"] == os.path.join(pod_dir, "volumes", "cache", "hf")  # /models -> the emptyDir's folder
    assert env["GREETING"] == f"hi {env['MODEL_DIR']}"
    assert env["POD_NAME"] == "web"
    assert env["PATH"].split(os.pathsep)[0] == os.path.join(sys.prefix, "bin")


async def test_crash_loop_back_off_and_termination_message(fake: AgentFake, agents) -> None:
    await agents().start()
    crash = [sys.executable, "-c", "import sys; print('loading weights'); print('fatal: out of cheese'); sys.exit(3)"]
    await fake.put_object(PODS, standin_pod("crash", 1, command=crash))

    await fake.wait_for(lambda: container_status(fake, "crash").get("restartCount", 0) >= 3, what="3 restarts")
    cs = container_status(fake, "crash")
    last = cs["lastState"]["terminated"]
    assert last["exitCode"] == 3 and last["reason"] == "Error"
    assert last["message"].splitlines()[-2:] == ["loading weights", "fatal: out of cheese"]
    assert status(fake, "crash")["phase"] == "Running"  # kubelet reports a restarting pod as Running
    assert condition(pod(fake, "crash"), "Ready")["status"] == "False"

    backoffs = [c["state"]["waiting"]["message"].split()[1]
                for p in pod_events(fake, "crash") for c in p.get("status", {}).get("containerStatuses") or []
                if c["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff"]
    # First restart is immediate, then the delay doubles: 0.3s, 0.6s, 1.2s (the cap).
    assert backoffs[:1] == ["0.3s"]
    assert sorted(set(backoffs)) == sorted(set(backoffs), key=lambda s: float(s[:-1]))
    await fake.wait_for(lambda: any(
        c["state"].get("waiting", {}).get("message", "").split()[1:2] == ["0.6s"]
        for p in pod_events(fake, "crash") for c in p.get("status", {}).get("containerStatuses") or []),
        what="a doubled back-off")


async def test_restart_policy_never_and_on_failure(fake: AgentFake, agents) -> None:
    await agents().start()
    await fake.put_object(PODS, standin_pod("once", 1, restart_policy="Never",
                                            command=[sys.executable, "-c", "raise SystemExit(0)"]))
    await fake.put_object(PODS, standin_pod("fails", 2, restart_policy="OnFailure",
                                            command=[sys.executable, "-c", "raise SystemExit(0)"]))
    await fake.put_object(PODS, standin_pod("never-fails", 3, restart_policy="Never",
                                            command=[sys.executable, "-c", "raise SystemExit(2)"]))
    await fake.wait_for(lambda: status(fake, "once").get("phase") == "Succeeded", what="Succeeded")
    await fake.wait_for(lambda: status(fake, "fails").get("phase") == "Succeeded", what="OnFailure exit 0")
    await fake.wait_for(lambda: status(fake, "never-fails").get("phase") == "Failed", what="Failed")
    assert container_status(fake, "once")["state"]["terminated"]["reason"] == "Completed"
    assert container_status(fake, "never-fails")["restartCount"] == 0


async def test_delete_stops_the_process_group_and_removes_the_pod(fake: AgentFake, agents, free_port) -> None:
    await agents().start()
    port = free_port
    await fake.put_object(PODS, standin_pod("doomed", port, extra_args=("--child",), grace=30))
    await fake.wait_for(lambda: running_and_ready(fake, "doomed"), what="Ready")
    pids = get_json(port, "/pids")
    assert not pid_gone(pids["pid"]) and not pid_gone(pids["child"])

    await delete_pod(fake, "doomed")  # graceful: sets deletionTimestamp, the agent stops and removes it
    await fake.wait_for(lambda: pod(fake, "doomed") is None, what="the pod removed")
    assert pid_gone(pids["pid"]), "the server process outlived its pod"
    assert pid_gone(pids["child"]), "a process the server started outlived its pod"


async def test_sigkill_after_the_grace_period(fake: AgentFake, agents, free_port) -> None:
    await agents().start()
    port = free_port
    await fake.put_object(PODS, standin_pod("stubborn", port, extra_args=("--ignore-term",), grace=1))
    await fake.wait_for(lambda: running_and_ready(fake, "stubborn"), what="Ready")
    server = get_json(port, "/pids")["pid"]
    await delete_pod(fake, "stubborn")
    await fake.wait_for(lambda: pod(fake, "stubborn") is None, what="the pod removed")
    assert pid_gone(server)
    final = [p for p in pod_events(fake, "stubborn") if "terminated" in
             ((p.get("status", {}).get("containerStatuses") or [{}])[0].get("state") or {})]
    assert final[-1]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 128 + signal.SIGKILL


async def test_agent_restart_adopts_running_processes(fake: AgentFake, agents, free_port) -> None:
    first = await agents().start()
    port = free_port
    await fake.put_object(PODS, standin_pod("keep", port))
    sleeper_pod = standin_pod("gone-while-down", 0, command=[sys.executable, "-c", "import time; time.sleep(3600)"])
    sleeper_pod["spec"]["containers"][0].update(ports=[], readinessProbe=None)
    await fake.put_object(PODS, sleeper_pod)
    await fake.wait_for(lambda: running_and_ready(fake, "keep") and running_and_ready(fake, "gone-while-down"),
                        what="both Ready")
    server = get_json(port, "/pids")["pid"]
    started = container_status(fake, "keep")["state"]["running"]["startedAt"]
    sleeper_id = container_status(fake, "gone-while-down")["containerID"]
    sleeper = int(sleeper_id.rsplit("-", 1)[1])

    await first.stop(stop_pods=False)  # like kubelet: containers keep running while the agent is down
    assert not pid_gone(server) and not pid_gone(sleeper)
    await fake.remove(PODS, (NS, "gone-while-down"))  # force-deleted meanwhile

    await agents().start()
    await fake.wait_for(lambda: running_and_ready(fake, "keep"), what="Ready after adoption")
    cs = container_status(fake, "keep")
    assert cs["restartCount"] == 0 and cs["state"]["running"]["startedAt"] == started
    assert get_json(port, "/pids")["pid"] == server  # the same process, adopted
    await fake.wait_for(lambda: pid_gone(sleeper), what="the leftover of a removed pod killed")

    os.kill(server, signal.SIGKILL)  # an adopted process that dies is restarted like any other
    await fake.wait_for(lambda: container_status(fake, "keep").get("restartCount") == 1 and
                        running_and_ready(fake, "keep"), what="restart of the adopted container")
    assert container_status(fake, "keep")["lastState"]["terminated"]["exitCode"] == 137


async def test_second_pod_on_the_same_port_waits_for_it(fake: AgentFake, agents, free_port) -> None:
    await agents().start()
    port = free_port
    await fake.put_object(PODS, standin_pod("first", port))
    await fake.wait_for(lambda: running_and_ready(fake, "first"), what="first Ready")
    await fake.put_object(PODS, standin_pod("second", port))
    await fake.wait_for(lambda: container_status(fake, "second").get("state", {}).get("waiting", {})
                        .get("reason") == "PortInUse", what="PortInUse")
    waiting = container_status(fake, "second")["state"]["waiting"]
    assert f"{NS}/first" in waiting["message"] and str(port) in waiting["message"]
    assert status(fake, "second")["phase"] == "Pending"
    await delete_pod(fake, "first")
    await fake.wait_for(lambda: running_and_ready(fake, "second"), what="second Ready once the port is free")


async def test_unsupported_image_and_missing_command_are_explained(fake: AgentFake, agents) -> None:
    await agents().start()
    await fake.put_object(PODS, standin_pod("alien", 1, image="docker.io/library/nginx:1"))
    await fake.put_object(PODS, standin_pod("nocmd", 2, command=["definitely-not-a-command-xyz"]))
    await fake.wait_for(lambda: container_status(fake, "alien").get("state", {}).get("waiting"), what="alien")
    waiting = container_status(fake, "alien")["state"]["waiting"]
    assert waiting["reason"] == "UnsupportedImage" and "--env-map" in waiting["message"]
    await fake.wait_for(lambda: container_status(fake, "nocmd").get("state", {}).get("waiting", {})
                        .get("reason") == "CreateContainerConfigError", what="nocmd")
    assert "definitely-not-a-command-xyz" in container_status(fake, "nocmd")["state"]["waiting"]["message"]
    # Deleting pods that never ran removes them right away.
    await delete_pod(fake, "alien")
    await fake.wait_for(lambda: pod(fake, "alien") is None, what="alien removed")


async def test_pods_of_other_nodes_are_ignored(fake: AgentFake, agents) -> None:
    await agents().start()
    other = standin_pod("elsewhere", 1, command=[sys.executable, "-c", "pass"], restart_policy="Never")
    other["spec"]["nodeName"] = "someone-else"
    await fake.put_object(PODS, other)
    await fake.put_object(PODS, standin_pod("here", 2, command=[sys.executable, "-c", "pass"],
                                            restart_policy="Never"))
    await fake.wait_for(lambda: status(fake, "here").get("phase") == "Succeeded", what="here done")
    assert status(fake, "elsewhere") == {"phase": "Pending"}
    assert pod(fake, "here")["spec"]["nodeName"] == NODE


async def test_failed_liveness_probe_restarts_the_container(fake: AgentFake, agents, free_port) -> None:
    await agents().start()
    port = free_port
    # Liveness asks a path the stand-in answers 404: after 2 failures the container is restarted.
    await fake.put_object(PODS, standin_pod("sick", port, grace=2, container={
        "livenessProbe": {"httpGet": {"path": "/no-such-path", "port": "http"}, "periodSeconds": 1,
                          "failureThreshold": 2}}))
    await fake.wait_for(lambda: container_status(fake, "sick").get("restartCount", 0) >= 1, what="a restart")
    last = container_status(fake, "sick")["lastState"]["terminated"]
    assert last["message"] == "liveness probe failed; container restarted"
    assert last["exitCode"] == 128 + signal.SIGTERM


async def test_a_shim_whose_engine_cannot_start_terminates_with_the_engines_error(fake: AgentFake, agents,
                                                                                   free_port) -> None:
    # As under a kubelet: the shim writes why to its termination message file (the agent names it in
    # $TURNOUT_TERMINATION_LOG) and exits 1; the agent reports that text, not its log tail, and restarts it.
    from pathlib import Path

    import turnout
    from turnout.shimargs import ShimArgs

    await agents().start()
    argv = ShimArgs(engine="sglang", model="/models/standin-7b", served_model_name="m", device="mps",
                    port=free_port).to_argv()
    command = [sys.executable, "-m", "turnout.shim", *argv[1:]]
    source = str(Path(turnout.__file__).parents[1])  # this checkout's turnout, not an installed one
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1800}
    await fake.put_object(PODS, standin_pod("broken", free_port, command=command, container={
        "env": [{"name": "PYTHONPATH", "value": source}], "startupProbe": probe}))

    await fake.wait_for(lambda: container_status(fake, "broken").get("restartCount", 0) >= 1, what="a restart",
                        timeout=120)
    last = container_status(fake, "broken")["lastState"]["terminated"]
    assert (last["exitCode"], last["reason"]) == (1, "Error")
    assert last["message"].startswith("sglang failed to start: ")
    assert "SGLang does not run on device 'mps'" in last["message"]
    assert "\n" not in last["message"]  # the reason itself, not the log's last lines
