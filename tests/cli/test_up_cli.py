"""`turnout up` before any engine starts: the port is checked first, errors are one line, replicas are explained."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from turnout import local
from turnout.api import ModelDeployment
from turnout.cli.up import replicas_note

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def up(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``turnout up`` in a process of its own, with an empty model cache under ``tmp_path``."""
    env = {**os.environ, "TURNOUT_FORCE_CPU": "1", "TURNOUT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "turnout", "up", *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on (127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def deployment_file(tmp_path: Path, example: str, **spec: object) -> Path:
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    doc["spec"].update(spec)
    path = tmp_path / f"{doc['spec'].get('servedModelName', example)}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_port_in_use_is_one_line_before_any_engine_starts(tmp_path: Path, busy_port: int) -> None:
    done = up(tmp_path, "-f", str(EXAMPLES / "tiny-chat.yaml"), "--port", str(busy_port))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"turnout up: error: port {busy_port} is in use on 127.0.0.1; pass --port N or stop what listens there"
    ]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "logs").exists(), "nothing fetched or started"


def test_a_port_in_use_with_several_models_is_found_before_serving(tmp_path: Path, busy_port: int) -> None:
    files = [deployment_file(tmp_path, "tiny-chat.yaml", servedModelName=name) for name in ("a", "b")]
    done = up(tmp_path, "-f", str(files[0]), "-f", str(files[1]), "--port", str(busy_port))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"turnout up: error: port {busy_port} is in use on 127.0.0.1; pass --port N or stop what listens there"
    ]
    assert "Serving" not in done.stderr + done.stdout
    assert not (tmp_path / "cache").exists() and not (tmp_path / "logs").exists()


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_a_port_out_of_range_is_a_usage_error(tmp_path: Path, port: str) -> None:
    done = up(tmp_path, "-f", str(EXAMPLES / "tiny-chat.yaml"), "--port", port)
    assert done.returncode == 2
    assert f"argument --port: {port!r} is not a port number (1-65535)" in done.stderr.splitlines()[-1]


def test_an_address_not_of_this_machine_names_the_fix(tmp_path: Path) -> None:
    done = up(tmp_path, "-f", str(EXAMPLES / "tiny-chat.yaml"), "--host", "192.0.2.1")  # TEST-NET-1
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "turnout up: error: 192.0.2.1 is not an address of this machine; pass --host 127.0.0.1 "
        "(or 0.0.0.0 for every address)"
    ]


def test_listen_binds_every_address_and_reports_a_taken_one(busy_port: int) -> None:
    sockets = local.listen("127.0.0.1", 0)
    try:
        port = sockets[0].getsockname()[1]
        with pytest.raises(local.LocalError, match=f"^port {port} is in use on 127.0.0.1; pass --port N"):
            local.check_port("127.0.0.1", port)
    finally:
        for sock in sockets:
            sock.close()
    local.check_port("127.0.0.1", port)  # free again once closed
    with pytest.raises(local.LocalError, match=f"port {busy_port} is in use"):
        local.listen("127.0.0.1", busy_port)


def test_replicas_note_says_up_serves_one() -> None:
    def md(**spec: object) -> ModelDeployment:
        doc = yaml.safe_load((EXAMPLES / "tiny-chat.yaml").read_text())
        doc["spec"].update(spec)
        return ModelDeployment.model_validate(doc)

    assert replicas_note(md()) is None
    assert replicas_note(md(replicas=2)) == (
        "note: tiny-chat has replicas: 2; turnout up serves one local replica (a cluster runs the rest)")
    assert replicas_note(md(autoscaling={"minReplicas": 0, "maxReplicas": 4})) == (
        "note: tiny-chat has autoscaling: 0-4 replicas; turnout up serves one local replica (a cluster runs the rest)")


def test_replicas_note_is_printed_before_the_engine_starts(tmp_path: Path, free_port: int) -> None:
    # A model no engine can serve here: up stops after the note and the planning error, without fetching.
    path = deployment_file(tmp_path, "qwen-awq-nvidia.yaml", replicas=3)
    done = up(tmp_path, "-f", str(path), "--port", str(free_port))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0].startswith("turnout up: note: ")
    assert "has replicas: 3; turnout up serves one local replica" in lines[0]
    assert lines[1].startswith("turnout up: error: resolving ")
