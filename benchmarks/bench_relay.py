"""CPU per relayed chunk of the proxy backend's engine client and SSE relay, for two source trees.

    python benchmarks/bench_relay.py --base /tmp/base [--rounds 5]

A child process (``--engine``) serves streamed answers as fast as it can write: 2,000 SSE events,
each its own HTTP chunk, in writes of 1 or 16 events. Another child (``--consume TREE``, with
``PYTHONPATH=TREE/operator``) drives that tree's ``VllmBackend.forward`` and drains each stream,
and reports its own CPU time (``time.process_time``) per 1,000 chunks. Rounds alternate baseline
and this tree; the medians are printed. CPU time, not throughput: the load of a shared machine
moves it far less.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 2000
STREAMS = 12


def _event(i: int) -> bytes:
    payload = json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                          "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]})
    return b"data: " + payload.encode() + b"\n\n"


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    per_write = 1
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = json.loads(await reader.readexactly(length)) if length else {}
        per_write = int(body.get("per_write", per_write))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        chunks = [b"%x\r\n%s\r\n" % (len(e), e) for e in (_event(i) for i in range(EVENTS))]
        chunks.append(b"%x\r\n%s\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n") + b"0\r\n\r\n")
        for i in range(0, len(chunks), per_write):
            writer.write(b"".join(chunks[i:i + per_write]))
            await writer.drain()


def engine(port: int) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_serve_one, "127.0.0.1", port)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()
    asyncio.run(main())


def consume(port: int, per_write: int) -> None:
    from turnout.shim.backends.base import State
    from turnout.shim.backends.vllm import VllmBackend
    from turnout.shimargs import ShimArgs
    try:
        from turnout.wire.client import EnginePool
    except ImportError:  # a tree from before turnout.wire (issue 25)
        from turnout.shim.backends._relay import EnginePool  # type: ignore[no-redef]

    async def main() -> float:
        b = VllmBackend(ShimArgs(engine="vllm", model="file:///m", served_model_name="m"))
        b.port, b.pool, b._state = port, EnginePool("127.0.0.1", port), State.READY
        chunks = 0
        t0 = time.process_time()
        for _ in range(STREAMS):
            stream = await b.forward("/v1/chat/completions", {"model": "m", "stream": True, "per_write": per_write})
            async for piece in stream.chunks:  # type: ignore[union-attr]
                chunks += piece.count(b"\n\n")  # type: ignore[union-attr]
        return (time.process_time() - t0) * 1e6 / chunks

    print(json.dumps({"us_per_chunk": asyncio.run(main())}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--engine", type=int, help=argparse.SUPPRESS)
    p.add_argument("--consume", type=int, help=argparse.SUPPRESS)
    p.add_argument("--per-write", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.engine:
        engine(a.engine)
        return
    if a.consume:
        consume(a.consume, a.per_write)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = subprocess.Popen([sys.executable, __file__, "--engine", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert eng.stdout is not None and eng.stdout.readline().strip() == "ready"
        trees = {"base": a.base.resolve(), "new": ROOT}
        out: dict[str, dict[int, list[float]]] = {k: {1: [], 16: []} for k in trees}
        for _ in range(a.rounds):
            for per_write in (1, 16):
                for k, tree in trees.items():
                    env = {**os.environ, "PYTHONPATH": str(tree / "operator")}
                    argv = [sys.executable, __file__, "--consume", str(port), "--per-write", str(per_write)]
                    r = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
                    out[k][per_write].append(json.loads(r.stdout.strip().splitlines()[-1])["us_per_chunk"])
        for per_write in (1, 16):
            b, n = (statistics.median(out[k][per_write]) for k in trees)
            print(f"{per_write:>2} events per engine write: base {b:.2f} µs/chunk, this tree {n:.2f} µs/chunk "
                  f"({(n / b - 1) * 100:+.0f}%)")
        print(json.dumps({"load_average": os.getloadavg(), "rounds": out}))
    finally:
        eng.terminate()


if __name__ == "__main__":
    main()
