"""A stand-in for the shim: a tiny HTTP server answering /health (and /env, /pids) on --host:--port.

Options make it misbehave the ways the agent must handle: --ignore-term
(needs SIGKILL), --child (starts a grandchild process in its group),
--ready-after (503 on /health first).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--ready-after", type=float, default=0.0)
    args = parser.parse_args()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"]) if args.child else None
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                ok = time.monotonic() - started >= args.ready_after
                body = {"status": "ok" if ok else "loading"}
                code = 200 if ok else 503
            elif self.path == "/env":
                body, code = dict(os.environ), 200
            elif self.path == "/pids":
                body, code = {"pid": os.getpid(), "child": child.pid if child else None, "cwd": os.getcwd()}, 200
            else:
                body, code = {"error": "not found"}, 404
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"standin listening on {args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    finally:
        if child is not None:
            child.kill()


if __name__ == "__main__":
    main()
