"""The shim's Bearer key, read from a file and re-read when the file changes.

Kubernetes updates a mounted Secret in place (it swaps the volume's ``..data``
symlink), so a rotated key reaches the pod without a restart. :class:`ApiKeyFile`
looks at the file at most once per ``interval`` seconds (a ``stat``, not a
read) and re-reads it when its identity, size or modification time changed.
A new file that cannot be read or is empty keeps the previous key, with one
warning, so a half-written rotation never opens the server or locks everyone
out. The key itself is never logged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger("turnout.shim")

#: seconds between looks at the key file
CHECK_INTERVAL = 1.0


def read_api_key(path: str) -> str:
    """The Bearer key in ``path`` (surrounding whitespace dropped); never logged."""
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read --api-key-file {path}: {exc.strerror}") from exc
    if not key:
        raise ValueError(f"--api-key-file {path} is empty")
    return key


def _identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)  # follows the ..data symlink of a Secret volume
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ApiKeyFile:
    """The current key of ``path``; :meth:`current` is cheap enough to call per request."""

    def __init__(self, path: str, *, interval: float = CHECK_INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self._identity = _identity(path)
        self._key = read_api_key(path).encode()  # a bad file at start is an error, as before
        self._next = time.monotonic() + interval
        self._warned: tuple[int, int, int, int] | None = None

    def current(self) -> bytes:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self._refresh()
        return self._key

    def _refresh(self) -> None:
        identity = _identity(self.path)
        if identity is None or identity == self._identity:
            if identity is None and self._warned != (0, 0, 0, 0):
                log.warning("--api-key-file %s is gone; keeping the previous key", self.path)
                self._warned = (0, 0, 0, 0)
            return
        try:
            key = read_api_key(self.path).encode()
        except ValueError as exc:
            if self._warned != identity:
                log.warning("%s; keeping the previous key", exc)
                self._warned = identity
            return
        self._identity, self._warned = identity, None
        if key != self._key:
            self._key = key
            log.info("API key reloaded from %s", self.path)
