"""Shared fixtures for the whole test suite.

* ``tiny_model`` (session): the tiny Llama built once per run (cached across
  runs under ``$TURNOUT_CACHE`` or ``~/.cache/turnout``); it has
  ``hf_dir``, ``gguf_path`` and ``served_name``.
* ``free_port`` (function): a TCP port on 127.0.0.1 that nothing listens on.
* ``unused_tcp_port_factory`` style helper: ``free_port_factory()`` returns a
  new free port on each call.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from turnout.tinymodel import TinyModel, build_tiny_model


def _pick_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_model() -> TinyModel:
    """The tiny test model (HF folder + GGUF), built once and cached."""
    return build_tiny_model()


@pytest.fixture(scope="session")
def free_port_factory() -> Callable[[], int]:
    """Call it to get a port that is free now; never the same port twice in a session."""
    given: set[int] = set()

    def factory() -> int:
        while True:
            port = _pick_free_port()
            if port not in given:
                given.add(port)
                return port

    return factory


@pytest.fixture
def free_port(free_port_factory: Callable[[], int]) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (``unused_tcp_port`` style)."""
    return free_port_factory()
