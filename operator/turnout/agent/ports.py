"""Addresses and ports of the pods on this host.

Pods run in the host's network, so the pod IP is the agent's ``--address`` and
a pod's ``containerPort`` is a port on that address. Several agents can share
one host when each has its own address (for instance 127.0.0.2 and 127.0.0.3,
or secondary addresses of an interface): each binds its pods to its address,
and two pods conflict only when they want the same port on overlapping
addresses (the same address, or one of them the wildcard ``0.0.0.0``).

Conflicts are found two ways: the agent's :class:`HostPorts` knows the ports
its pods have claimed (before their processes listen), and :func:`port_in_use`
asks the operating system about every other listener (another agent, or
anything else on the host).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Generic, TypeVar

WILDCARDS = frozenset({"0.0.0.0", "::", ""})
T = TypeVar("T")


def is_wildcard(address: str | None) -> bool:
    return address is None or address in WILDCARDS


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def is_local(address: str) -> bool:
    """True when a socket can listen on ``address`` here (an address of one of this host's interfaces)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def port_in_use(address: str, port: int) -> bool:
    """True when another socket listens on ``address:port`` (or on the wildcard address at ``port``).

    Binds the way servers do (``SO_REUSEADDR``, as uvicorn and most servers set it), so connections
    left in TIME_WAIT by a stopped server do not count. Other errors (no such address) count as free:
    starting the process then reports them.
    """
    with socket.socket(_family(address), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


class HostPorts(Generic[T]):
    """Which holder (a pod worker) has claimed which (address, port) among the agents of this process."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], T] = {}

    def holder(self, address: str, port: int, claimant: T) -> T | None:
        """Who else holds ``port`` on an address overlapping ``address``, or None."""
        for (held_address, held_port), holder in self._held.items():
            if held_port != port or holder is claimant:
                continue
            if held_address == address or is_wildcard(held_address) or is_wildcard(address):
                return holder
        return None

    def claim(self, address: str, ports: set[int], claimant: T) -> None:
        for port in ports:
            self._held[(address, port)] = claimant

    def release(self, claimant: T) -> None:
        for key, holder in list(self._held.items()):
            if holder is claimant:
                del self._held[key]

    def held_by(self, claimant: T) -> set[tuple[str, int]]:
        return {key for key, holder in self._held.items() if holder is claimant}

