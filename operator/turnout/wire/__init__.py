"""The data plane's wire layer, shared by the shim and the gateway (and importing neither).

* :mod:`~turnout.wire.client`: HTTP/1.1 to an engine or a shim, keep-alive, framing by httptools;
* :mod:`~turnout.wire.sse`: SSE event framing;
* :mod:`~turnout.wire.relay`: an upstream's SSE answer relayed as buffers of whole events;
* :mod:`~turnout.wire.errors`: the OpenAI error and its envelope;
* :mod:`~turnout.wire.asgi`: raw-ASGI answers, the request body with a limit, the Bearer token;
* :mod:`~turnout.wire.disconnect`: cancelling a request's task when its client goes away.
"""
