"""The gateway (``turnout gateway``): one OpenAI endpoint in front of every model, routed by ``model``.

:mod:`~turnout.gateway.app` is the ASGI app; a source fills its registry
(:mod:`~turnout.gateway.kubesource` from ModelDeployments and EndpointSlices,
:class:`~turnout.gateway.source.StaticSource` for ``turnout up`` with several
models); :mod:`~turnout.gateway.routing` holds the pure strategies. See
docs/gateway.md.
"""
