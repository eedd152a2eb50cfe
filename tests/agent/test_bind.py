"""The shim's --host follows the agent's address; bind and probe addresses; the (address, port) table."""

from __future__ import annotations

import pytest

from turnout.agent.agent import bind_and_probe_addresses
from turnout.agent.podspec import bind_shim
from turnout.agent.ports import HostPorts, is_local
from turnout.shimargs import ShimArgs

RENDERED = ShimArgs(engine="llama.cpp", model="/models/tiny.gguf", served_model_name="tiny", port=8000,
                    engine_args={"n_ctx": 512}, api_key_file="/var/run/key")


@pytest.mark.parametrize("prefix", [["turnout-shim"], ["/opt/venv/bin/turnout-shim"],
                                    ["/usr/bin/python3", "-m", "turnout.shim"],
                                    ["python3.12", "-u", "-m", "turnout.shim"]])
def test_the_shims_host_becomes_the_agents_address(prefix: list[str]) -> None:
    argv = [*prefix, *RENDERED.to_argv()[1:]]
    bound = bind_shim(argv, "127.0.0.2")
    assert bound[:len(prefix)] == prefix
    parsed = ShimArgs.parse(bound[len(prefix):])
    assert parsed.host == "127.0.0.2"
    assert parsed == ShimArgs(**{**RENDERED.__dict__, "host": "127.0.0.2"})  # nothing else changed


def test_a_shim_argv_without_host_gets_one() -> None:
    bound = bind_shim(["turnout-shim", "--engine", "mlx", "--model", "m"], "10.0.0.7")
    assert ShimArgs.parse(bound[1:]).host == "10.0.0.7"


@pytest.mark.parametrize("argv", [
    ["python3", "server.py", "-m", "turnout.shim", "--host", "0.0.0.0"],  # a script, not the module
    ["python3", "-c", "print(1)", "-m", "turnout.shim"],
    ["python3", "-m", "http.server", "8000"],
    ["llama-server", "--host", "0.0.0.0", "--port", "8000"],
    ["turnout-shim", "--engine", "no-such-engine", "--model", "m"],  # the shim reports its own usage error
])
def test_other_commands_are_left_alone(argv: list[str]) -> None:
    assert bind_shim(argv, "127.0.0.2") == argv


def test_bind_and_probe_addresses() -> None:
    assert bind_and_probe_addresses("127.0.0.2", "127.0.0.2") == ("127.0.0.2", "127.0.0.2")
    assert bind_and_probe_addresses("0.0.0.0", "0.0.0.0") == ("0.0.0.0", "127.0.0.1")
    # Unset: the detected address is the pod IP (probed), but pods listen everywhere, as before.
    assert bind_and_probe_addresses(None, "127.0.0.1") == ("0.0.0.0", "127.0.0.1")
    # An address that is not this host's (NAT, VPN): listening there would fail, so all addresses.
    assert bind_and_probe_addresses("192.0.2.10", "192.0.2.10") == ("0.0.0.0", "127.0.0.1")
    assert not is_local("192.0.2.10") and not is_local("not-an-ip")


def test_port_table_conflicts_per_address_and_port() -> None:
    table: HostPorts[str] = HostPorts()
    table.claim("127.0.0.2", {8000}, "a")
    assert table.holder("127.0.0.2", 8000, "b") == "a"
    assert table.holder("127.0.0.3", 8000, "b") is None  # another address: no conflict
    assert table.holder("127.0.0.2", 8001, "b") is None
    assert table.holder("0.0.0.0", 8000, "b") == "a"  # the wildcard overlaps every address
    assert table.holder("127.0.0.2", 8000, "a") is None  # its own claim
    table.claim("0.0.0.0", {9000}, "c")
    assert table.holder("127.0.0.9", 9000, "b") == "c"
    table.release("a")
    assert table.holder("127.0.0.2", 8000, "b") is None and table.held_by("c") == {("0.0.0.0", 9000)}


def test_each_node_name_gets_its_own_default_state_folder() -> None:
    import argparse
    import os

    from turnout.agent.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    folders = {config_from_args(parser.parse_args(["--node-name", n, "--address", a])).state_dir
               for n, a in (("box-a", "127.0.0.2"), ("box-b", "127.0.0.3"))}
    assert folders == {os.path.expanduser("~/.turnout/agent/box-a"), os.path.expanduser("~/.turnout/agent/box-b")}
