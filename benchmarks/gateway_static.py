"""The turnout gateway over fixed local endpoints, as a process of its own, for the benchmarks.

    python benchmarks/gateway_static.py --port 9000 --model standin=127.0.0.1:9001
    python benchmarks/gateway_static.py --port 9000 --model tiny=127.0.0.1:9001,127.0.0.1:9002 \
        --strategy PrefixHash [--prefix-chars 100] [--load-factor 1.25]

The gateway's own app (``turnout.gateway.app.GatewayApp``), uvicorn settings
(``turnout.gateway.server.config``: httptools, lifespan) and loop
(``run_async``: uvloop) — what ``turnout gateway`` and ``turnout up -f a -f b``
run — over a source that serves fixed addresses, like
``turnout.gateway.source.StaticSource``, but with several endpoints per model
(``StaticModel`` has one address) so routing strategies have replicas to
choose between. ``--strategy Random`` is not a gateway strategy: it is the
benchmark's baseline (each request to a replica drawn uniformly at random),
done by overriding ``Model.pick`` here. Serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable
from dataclasses import dataclass

from turnout.gateway.registry import Endpoint, Model, Registry
from turnout.gateway.routing import STRATEGIES, RoutingSpec

RANDOM = "Random"


@dataclass(eq=False)
class RandomModel(Model):
    """A model whose requests go to a replica drawn at random (the baseline the strategies are compared with)."""

    def pick(self, prefix: str | None, exclude: Iterable[Endpoint] = ()) -> Endpoint | None:
        skip = set(exclude)
        eps = [ep for ep in self.endpoints if ep not in skip]
        return random.choice(eps) if eps else None


class FixedSource:
    """Fixed models at fixed addresses, several per model (the Source protocol; nothing to wake, no keys)."""

    NAMESPACE = "local"

    def __init__(self, models: dict[str, list[tuple[str, int]]], strategy: str, prefix_chars: int,
                 load_factor: float) -> None:
        self.registry = Registry()
        self._models = models
        self._strategy = strategy
        self._routing = RoutingSpec(strategy=strategy if strategy in STRATEGIES else STRATEGIES[0],
                                    prefix_char_length=prefix_chars, load_factor=load_factor)

    async def start(self) -> None:
        kind = RandomModel if self._strategy == RANDOM else Model
        for served, addrs in self._models.items():
            self.registry.put_model(kind(namespace=self.NAMESPACE, name=served, served=served,
                                         routing=self._routing, service=served))
            for n, addr in enumerate(addrs):
                self.registry.set_endpoints(self.NAMESPACE, served, f"static-{n}", [addr])

    async def close(self) -> None:
        for served in self._models:
            self.registry.drop_model(self.NAMESPACE, served)

    async def wake(self, model: Model) -> None:
        return None

    async def api_key(self, model: Model) -> bytes | None:
        return None


def _model(text: str) -> tuple[str, list[tuple[str, int]]]:
    served, _, addrs = text.partition("=")
    out = []
    for addr in addrs.split(","):
        host, _, port = addr.rpartition(":")
        out.append((host, int(port)))
    if not served or not out:
        raise argparse.ArgumentTypeError(f"--model {text!r}: want NAME=HOST:PORT[,HOST:PORT...]")
    return served, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", type=_model, action="append", required=True, help="NAME=HOST:PORT[,HOST:PORT...]")
    p.add_argument("--strategy", choices=[*STRATEGIES, RANDOM], default=STRATEGIES[0])
    p.add_argument("--prefix-chars", type=int, default=RoutingSpec().prefix_chars)
    p.add_argument("--load-factor", type=float, default=RoutingSpec().load_factor)
    a = p.parse_args()

    import uvicorn

    from turnout.gateway.app import GatewayApp
    from turnout.gateway.server import config, run_async

    source = FixedSource(dict(a.model), a.strategy, a.prefix_chars, a.load_factor)

    async def serve() -> int:
        server = uvicorn.Server(config(GatewayApp(source), a.host, a.port, log_level="warning"))
        await server.serve()
        return 0 if server.started else 1

    return run_async(serve)


if __name__ == "__main__":
    raise SystemExit(main())
