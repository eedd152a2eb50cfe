"""llama.cpp's own HTTP server (xllamacpp), with exactly the parameters the shim's backend uses.

    python benchmarks/llamacpp_direct.py --model tiny.gguf --served-model-name tiny --port 9000 \
        [--engine-args '{"threads": 1}']

The parameters come from ``LlamaCppBackend.params()`` (slots, unified KV cache,
CPU layers...), only ``port`` is set, so "direct" and "through the shim" run
the same llama.cpp configuration. Serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading

from turnout.shim.backends.llamacpp import LlamaCppBackend
from turnout.shimargs import ShimArgs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--engine-args", type=json.loads, default={}, help="as the shim's --engine-args (JSON)")
    a = p.parse_args()
    import xllamacpp

    args = ShimArgs(engine="llama.cpp", model=a.model, served_model_name=a.served_model_name,
                    engine_args=a.engine_args)
    params = LlamaCppBackend(args).params()
    params.port = a.port
    params.hostnames = ["127.0.0.1"]
    server = xllamacpp.Server(params)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"llama.cpp serving {a.served_model_name} on 127.0.0.1:{a.port}", flush=True)
    stop.wait()
    del server


if __name__ == "__main__":
    main()
