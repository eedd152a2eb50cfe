"""The gateway's graceful stop: streams finish within the grace period, and those still open at its end
close with an SSE error event instead of a cut.

On SIGTERM uvicorn stops accepting, lets the answers in flight finish and, once
``timeout_graceful_shutdown`` has passed, cancels what is left: a stream cancelled there ends without a
word to the client (no error, no ``[DONE]``), which a client cannot tell from a network fault.
:class:`GracefulServer` ends the open streams ``margin`` seconds before that: it closes their upstream
connections (:meth:`Drain.end_streams`), and the relay ends each with the OpenAI error envelope of
:meth:`Drain.error` in a ``data:`` event, then ``[DONE]``. Kubernetes stops routing to a terminating
pod, so the client retries on the other replica.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import uvicorn

from turnout.wire.client import EngineResponse
from turnout.wire.errors import OpenAIError

log = logging.getLogger("turnout.gateway")
#: Seconds before the grace period ends at which the open streams are ended with an error event.
DEFAULT_MARGIN = 1.0


class Drain:
    """The upstream answers being relayed as streams; ended together at the shutdown deadline."""

    def __init__(self) -> None:
        #: Filled and emptied by the SSE relay (its ``active`` set).
        self.streams: set[EngineResponse] = set()
        self.ending = False

    def end_streams(self) -> int:
        """Close the upstream side of every open stream (its relay then ends it with :meth:`error`)."""
        self.ending = True
        streams = list(self.streams)
        for resp in streams:
            resp.close()
        if streams:
            log.warning("shutdown grace period over: ending %d open stream(s) with an error event", len(streams))
        return len(streams)

    @staticmethod
    def error() -> OpenAIError:
        return OpenAIError("the gateway is shutting down and ended this stream; retry the request",
                           status=503, type="server_error", code="gateway_shutting_down")


class GracefulServer(uvicorn.Server):
    """uvicorn's server that ends the app's open streams cleanly ``margin`` seconds before its graceful
    shutdown would cancel them."""

    def __init__(self, config: uvicorn.Config, drain: Drain, *, margin: float = DEFAULT_MARGIN) -> None:
        super().__init__(config)
        self.drain = drain
        self.margin = margin

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        grace = self.config.timeout_graceful_shutdown
        timer = None
        if grace is not None:
            timer = asyncio.get_running_loop().call_later(max(0.0, grace - self.margin), self.drain.end_streams)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()
