"""``modelplane-shim``: parse the rendered command line, pick the backend, serve."""

from __future__ import annotations

import logging
import os
import sys

from modelplane.shimargs import ShimArgs

GRACE_ENV = "MODELPLANE_SHUTDOWN_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 30
LOG_LEVEL_ENV = "MODELPLANE_LOG_LEVEL"
ACCESS_LOG_ENV = "MODELPLANE_ACCESS_LOG"


def main(argv: list[str] | None = None) -> int:
    """Run the shim until SIGTERM/SIGINT; returns the exit status."""
    args = ShimArgs.parse(sys.argv[1:] if argv is None else argv)
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("modelplane.shim")
    # One line per proxied request is noise next to uvicorn's access log.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    # Imported here so that `--help` and argument errors stay fast.
    import uvicorn

    from modelplane.shim.app import create_app
    from modelplane.shim.backends import create_backend

    try:
        grace = int(os.environ.get(GRACE_ENV, DEFAULT_GRACE_SECONDS))
        backend = create_backend(args)
        app = create_app(backend, args)
    except (ValueError, TypeError, ImportError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    log.info("serving %s (%s, %s) with %s on %s:%d", args.served_model_name, args.model_type,
             args.device, args.engine, args.host, args.port)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=level.lower(), lifespan="on",
        timeout_graceful_shutdown=grace,
        access_log=os.environ.get(ACCESS_LOG_ENV, "1") not in ("0", "false", "no"),
    )
    server = uvicorn.Server(config)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
