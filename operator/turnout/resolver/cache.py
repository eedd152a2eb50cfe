"""The resolver's memo, owned by whoever calls resolve() again and again."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from turnout.config import OperatorConfig
    from turnout.hardware import Hardware

T = TypeVar("T")
_MISSING = object()


class ResolverCache:
    """Steps of ``resolve()`` memoized for one Hardware and one OperatorConfig.

    The caller owns it and passes it to every ``resolve``: the operator keeps one for its life (it resolves the
    same specs on every reconcile until nodes change), ``turnout plan`` one per file of deployments; without one,
    ``resolve`` uses a fresh one. What it holds depends on the hardware and config, so resolving with other
    objects than those it was filled for empties it first. It keeps those two objects, so the identity test is
    exact; both are immutable, so an entry never goes stale. Not thread-safe (the operator resolves on its
    event loop). ``hits`` and ``misses`` count lookups, as ``functools``' ``cache_info`` does.
    """

    def __init__(self, limit: int = 65536) -> None:
        self.limit = limit  # entries per table; a full table starts over
        self.hits = 0
        self.misses = 0
        self._for: tuple[Hardware, OperatorConfig] | None = None
        self._tables: dict[str, dict[Hashable, Any]] = {}

    def bind(self, hardware: Hardware, config: OperatorConfig) -> None:
        """Serve lookups for this hardware and config: empty when they are other objects than before."""
        if self._for is None or self._for[0] is not hardware or self._for[1] is not config:
            self._tables.clear()
            self._for = (hardware, config)

    def get(self, table: str, key: Hashable, build: Callable[..., T], *args: Any) -> T:
        """``build(*args)`` memoized under ``key`` in ``table``."""
        entries = self._tables.setdefault(table, {})
        value = entries.get(key, _MISSING)
        if value is not _MISSING:
            self.hits += 1
            return value  # type: ignore[no-any-return]
        self.misses += 1
        if len(entries) >= self.limit:
            entries.clear()
        value = entries[key] = build(*args)
        return value

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._tables.values())
