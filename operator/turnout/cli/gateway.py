"""`turnout gateway`: one OpenAI endpoint for every ModelDeployment it may see."""

from __future__ import annotations

import argparse
import logging

DEFAULT_PORT = 8000


def add_arguments(p: argparse.ArgumentParser) -> None:
    from turnout.gateway.app import DEFAULT_HOLD_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_QUEUE_SIZE

    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="serve every namespace's models (default)")
    scope.add_argument("-n", "--namespace", dest="namespaces", action="append", default=[], metavar="NS",
                       help="serve the models of this namespace (repeatable)")
    p.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="kubeconfig file (default: $KUBECONFIG, the pod's service account, ~/.kube/config)")
    p.add_argument("--context", default=None, metavar="NAME", help="kubeconfig context (default: current)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--hold-timeout", type=float, default=DEFAULT_HOLD_TIMEOUT, metavar="SECONDS",
                   help="how long a request waits for a model with no ready replica (default "
                        f"{DEFAULT_HOLD_TIMEOUT:g}); then 503 with Retry-After")
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, metavar="N",
                   help=f"requests held per model at most (default {DEFAULT_QUEUE_SIZE}); more get 429")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="a Bearer key every request must carry (models with apiKeySecretRef take their own key)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY, metavar="N",
                   help=f"largest request body accepted (default {DEFAULT_MAX_BODY})")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--shutdown-grace", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM, seconds the open requests get to finish; streams still open 1 s before the "
                        "end close with an SSE error event (default 30; keep it below the pod's "
                        "terminationGracePeriodSeconds)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    from turnout.cli import CLIError
    from turnout.gateway.app import GatewayApp
    from turnout.gateway.drain import GracefulServer
    from turnout.gateway.kubesource import KubeSource
    from turnout.gateway.server import config, run_async
    from turnout.kube import CredentialsError, KubeClient, load_credentials
    from turnout.shim.apikey import ApiKeyFile

    level = "debug" if args.verbose else "info"
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.hold_timeout <= 0 or args.queue_size < 1:
        raise CLIError("--hold-timeout must be > 0 and --queue-size >= 1")
    if args.shutdown_grace <= 0:
        raise CLIError("--shutdown-grace must be > 0")
    try:
        key = ApiKeyFile(args.api_key_file) if args.api_key_file else None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    namespaces = None if args.all_namespaces or not args.namespaces else list(args.namespaces)

    async def main() -> int:
        try:
            credentials = await load_credentials(args.kubeconfig, context=args.context)
        except CredentialsError as exc:
            raise CLIError(str(exc)) from None
        async with KubeClient(credentials, user_agent="turnout-gateway") as client:
            app = GatewayApp(KubeSource(client, namespaces), api_key=key.current if key else None,
                             hold_timeout=args.hold_timeout, queue_size=args.queue_size,
                             max_body_bytes=args.max_body_bytes)
            server = GracefulServer(config(app, args.host, args.port, log_level=level, access_log=args.access_log,
                                           grace=args.shutdown_grace), app.drain)
            await server.serve()
            return 0 if server.started else 1

    return run_async(main)
