"""An aiohttp session for kopf that logs in with our :class:`~turnout.kube.credentials.Credentials`.

kopf (the operator's watch and handler framework) runs its own aiohttp
requests. Handing it this session (``kopf.AiohttpSession``) gives it the same
identity as our client: the same CA, client certificate and
``tls-server-name`` as kubernetes_asyncio's REST client builds from the
configuration, and an ``Authorization`` header taken per request from the
credentials, so a rotated service-account token or a renewed exec token
reaches kopf's long-running watches without a new login. A 401 renews the
token and the request is sent once more.
"""

from __future__ import annotations

import ssl

import aiohttp

from turnout.kube.credentials import Credentials


def ssl_context(credentials: Credentials) -> ssl.SSLContext:
    """The TLS settings of the loaded configuration, as kubernetes_asyncio's REST client applies them."""
    cfg = credentials.configuration
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_session(credentials: Credentials, *, limit: int = 0) -> aiohttp.ClientSession:
    """A plain session with the credentials' TLS (kubernetes_asyncio's client adds the token itself)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=ssl_context(credentials)),
        read_bufsize=2**21,  # watch events of large objects exceed aiohttp's default line buffer
    )


def aiohttp_session(credentials: Credentials, *, user_agent: str = "turnout-operator") -> aiohttp.ClientSession:
    """A session whose every request carries the credentials' current token (open it in a running loop)."""
    server_hostname = credentials.configuration.tls_server_name

    async def login(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if server_hostname:
            request.server_hostname = server_hostname
        header = await credentials.authorization()
        if header:
            request.headers["Authorization"] = header
        response = await handler(request)
        if response.status == 401 and await credentials.invalidate():
            header = await credentials.authorization()
            if header:
                request.headers["Authorization"] = header
            response.release()
            response = await handler(request)
        return response

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=ssl_context(credentials)),
        headers={"User-Agent": user_agent},
        middlewares=(login,),
        proxy=credentials.configuration.proxy,
        read_bufsize=2**21,
    )
