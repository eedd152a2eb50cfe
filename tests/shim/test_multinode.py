"""One replica over several nodes: the engine command lines per rank, and a worker rank's shim."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
from shimproc import RunningShim, wait_until

from turnout.shim.backends import create_backend
from turnout.shim.backends.sglang import SglangBackend
from turnout.shim.backends.vllm import VllmBackend
from turnout.shimargs import ShimArgs

MSG = [{"role": "user", "content": "hello there"}]


def _args(engine: str, rank: int, **kw: object) -> ShimArgs:
    tp, pp = (8, 2) if engine == "vllm" else (16, 1)
    return ShimArgs(engine=engine, model="hf://meta-llama/Meta-Llama-3.1-405B-Instruct", served_model_name="llama",
                    device="cuda", tensor_parallel_size=tp, pipeline_parallel_size=pp, nnodes=2, node_rank=rank,
                    leader_address="llama-0.llama.ns", **kw)  # type: ignore[arg-type]


def test_vllm_ranks_run_vllm_serve_with_its_multiprocessing_multi_node_flags() -> None:
    leader = VllmBackend(_args("vllm", 0)).command(41000)
    assert leader[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", "meta-llama/Meta-Llama-3.1-405B-Instruct"]
    flags = " ".join(leader[5:])
    assert ("--tensor-parallel-size 8 --pipeline-parallel-size 2 --nnodes 2 --node-rank 0 "
            "--master-addr llama-0.llama.ns --master-port 29500") in flags
    assert "--host 127.0.0.1 --port 41000" in flags and "--headless" not in flags
    worker = VllmBackend(_args("vllm", 1)).command(41000)
    assert "--node-rank 1" in " ".join(worker) and worker.count("--headless") == 1
    assert "--port" not in worker


def test_single_node_vllm_keeps_its_api_server_command() -> None:
    args = ShimArgs(engine="vllm", model="hf://Qwen/Qwen2.5-72B-Instruct", served_model_name="q", device="cuda",
                    tensor_parallel_size=4)
    cmd = VllmBackend(args).command(41000)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert "--nnodes" not in cmd and cmd[cmd.index("--tensor-parallel-size") + 1] == "4"


def test_sglang_ranks_share_one_dist_init_address() -> None:
    for rank in (0, 1):
        cmd = SglangBackend(_args("sglang", rank)).command(41000)
        joined = " ".join(cmd)
        assert "--tp-size 16" in joined
        assert f"--nnodes 2 --node-rank {rank} --dist-init-addr llama-0.llama.ns:29500" in joined


def test_the_multi_node_flags_are_the_shims_own() -> None:
    with pytest.raises(ValueError, match="may not set 'nnodes'"):
        VllmBackend(_args("vllm", 0, engine_args={"nnodes": 4})).command(1)
    with pytest.raises(ValueError, match="may not set 'dist_init_addr'"):
        SglangBackend(_args("sglang", 0, engine_args={"dist_init_addr": "x:1"})).command(1)


def test_engines_without_a_multi_node_mode_are_refused() -> None:
    args = ShimArgs(engine="llama.cpp", model="file:///m.gguf", served_model_name="m", nnodes=2,
                    leader_address="x")
    with pytest.raises(ValueError, match=r"llama\.cpp runs on one node"):
        create_backend(args)


def test_parser_checks_the_group() -> None:
    base = ["--engine", "vllm", "--model", "m", "--nnodes", "2"]
    with pytest.raises(SystemExit):
        ShimArgs.parse(base)  # no --leader-address
    with pytest.raises(SystemExit):
        ShimArgs.parse([*base, "--leader-address", "l", "--node-rank", "2"])
    ok = ShimArgs.parse([*base, "--leader-address", "l", "--node-rank", "1"])
    assert ok.is_worker and ShimArgs.parse(ok.to_argv()[1:]) == ok


@pytest.mark.slow
def test_a_worker_rank_is_healthy_while_its_engine_runs_and_serves_no_requests(
    start_shim_factory, tmp_path
) -> None:
    seen = tmp_path / "worker.json"
    shim: RunningShim = start_shim_factory(nnodes=2, node_rank=1, leader_address="127.0.0.1",
                                           env={"STANDIN_WORKER_FILE": str(seen)})
    wait_until(seen.exists, "the headless SGLang rank to start")
    ranks = json.loads(seen.read_text())
    assert (ranks["nnodes"], ranks["node_rank"], ranks["dist_init_addr"]) == (2, 1, "127.0.0.1:29500")
    assert httpx.get(shim.base_url + "/health").status_code == 200
    with shim.http() as h:
        r = h.post("/v1/chat/completions", json={"messages": MSG})
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_worker"
    assert "send them to rank 0" in r.json()["error"]["message"]
    os.kill(ranks["pid"], signal.SIGKILL)
    assert shim.proc.wait(30) == 1  # a rank that died takes its pod down (the group is recreated)
    assert "exiting: sglang exited with code -9" in shim.log()


@pytest.mark.slow
def test_the_leader_rank_serves_and_passes_the_group_to_sglang(start_shim_factory) -> None:
    shim: RunningShim = start_shim_factory(nnodes=2, node_rank=0, leader_address="127.0.0.1", dist_port=29511)
    info = httpx.get(f"http://127.0.0.1:{shim.engine_port()}/get_server_info").json()
    assert (info["nnodes"], info["node_rank"], info["dist_init_addr"]) == (2, 0, "127.0.0.1:29511")
    r = shim.openai().chat.completions.create(model="standin-chat", messages=MSG, max_tokens=2)
    assert r.choices[0].message.content == "w0 w1 "
