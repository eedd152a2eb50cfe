"""Running the gateway app: uvicorn (httptools, uvloop where installed) in front of a source."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

log = logging.getLogger("turnout.gateway")


def _fast(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        log.warning("%s is not installed; the gateway runs slower without it (install uvicorn[standard])", module)
        return False
    return True


def config(app: Any, host: str, port: int, *, log_level: str = "info", access_log: bool = False,
           grace: float = 30.0) -> uvicorn.Config:
    """uvicorn's settings for the gateway: httptools, lifespan on (the source starts there), ``grace`` seconds
    for the answers in flight on SIGTERM (turnout.gateway.drain ends the streams left just before); no
    X-Forwarded-* handling (nothing reads the client's address: one middleware call less per request)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), lifespan="on",
                          http="httptools" if _fast("httptools") else "auto", access_log=access_log,
                          timeout_graceful_shutdown=grace, backlog=4096, proxy_headers=False)


def run_async(main: Callable[[], Awaitable[int]]) -> int:
    """``main()`` on uvloop when it is installed, else on asyncio's loop.

    uvicorn handles SIGINT and SIGTERM (a graceful shutdown) and then re-raises
    the signal to the handler it found: that handler is a no-op here, so a
    signalled stop exits 0.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    if _fast("uvloop"):
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())
