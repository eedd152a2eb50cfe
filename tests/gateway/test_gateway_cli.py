"""`turnout gateway` as a process: credentials from a kubeconfig, models from the emulator, a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx
from gwkit import MDS, SLICES, Upstream, endpoint_slice, model_deployment

from kubeconfigs import write_kubeconfig


async def test_gateway_command_serves_the_namespace_models(fake, start_server, free_port, tmp_path) -> None:
    port = await start_server(Upstream("pod"))
    await fake.put_object(MDS, model_deployment("chat"))
    await fake.put_object(SLICES, endpoint_slice("chat", "chat-1", [port]))
    config = write_kubeconfig(tmp_path / "config", str(fake.url).rstrip("/"))
    (tmp_path / "key").write_text("s3cret\n")
    proc = subprocess.Popen([sys.executable, "-m", "turnout", "gateway", "--kubeconfig", str(config), "-n", "models",
                             "--host", "127.0.0.1", "--port", str(free_port), "--api-key-file", str(tmp_path / "key"),
                             "--hold-timeout", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    url = f"http://127.0.0.1:{free_port}"
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer s3cret"}) as http:
            for _ in range(300):
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            assert [m["id"] for m in (await http.get("/v1/models")).json()["data"]] == ["chat"]
            r = await http.post("/v1/chat/completions", json={"model": "chat", "messages": []})
            assert r.status_code == 200 and r.json()["model"] == "pod"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 0, err


def test_gateway_command_names_a_missing_kubeconfig(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "turnout", "gateway", "--kubeconfig", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "does not exist" in done.stderr
