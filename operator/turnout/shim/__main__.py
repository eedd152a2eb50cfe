"""``turnout-shim``: parse the rendered command line, pick the backend, serve."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from contextlib import suppress
from types import FrameType
from typing import Any

from turnout.aio import wait_for
from turnout.shimargs import TERMINATION_LOG, TERMINATION_LOG_ENV, ShimArgs

GRACE_ENV = "TURNOUT_SHUTDOWN_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 30
LOG_LEVEL_ENV = "TURNOUT_LOG_LEVEL"
ACCESS_LOG_ENV = "TURNOUT_ACCESS_LOG"
#: the kubelet reads at most this much of a termination message file
MAX_TERMINATION_BYTES = 4096


def main(argv: list[str] | None = None) -> int:
    """Run the shim until SIGTERM/SIGINT (0), or until its engine cannot serve (1, the reason written as the
    termination message); returns the exit status."""
    args = ShimArgs.parse(sys.argv[1:] if argv is None else argv)
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("turnout.shim")

    # Imported here so that `--help` and argument errors stay fast.
    import uvicorn

    from turnout.shim.app import create_app
    from turnout.shim.backends import create_backend

    fatal: list[str] = []
    server: Any = None

    def on_fatal(message: str) -> None:
        # The engine cannot serve: exit (the kubelet restarts the container, CrashLoopBackOff) with the
        # reason as the termination message, instead of answering 503 until the startup probe gives up.
        if fatal:
            return
        fatal.append(message)
        log.error("exiting: %s", message)
        write_termination_message(message)
        if server is not None:
            server.stop_soon()

    try:
        grace = int(os.environ.get(GRACE_ENV, DEFAULT_GRACE_SECONDS))
        backend = create_backend(args)
        app = create_app(backend, args, on_fatal=on_fatal)
    except (ValueError, TypeError, ImportError) as exc:
        log.error("cannot start: %s", exc)
        write_termination_message(f"cannot start: {exc}")
        return 2
    log.info("serving %s (%s, %s) with %s on %s:%d", args.served_model_name, args.model_type,
             args.device, args.engine, args.host, args.port)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=level.lower(), lifespan="on",
        timeout_graceful_shutdown=grace, loop=_fast_or_auto("uvloop", log), http=_fast_or_auto("httptools", log),
        access_log=os.environ.get(ACCESS_LOG_ENV, "1") not in ("0", "false", "no"),
    )
    server = _server_class(uvicorn.Server)(config)
    server.run()
    return 1 if fatal else 0


def termination_log() -> str | None:
    """Where the termination message goes: ``$TURNOUT_TERMINATION_LOG``, else the kubelet's
    ``/dev/termination-log`` when it exists (never created elsewhere: outside a pod there is none)."""
    named = os.environ.get(TERMINATION_LOG_ENV)
    if named:
        return named
    return TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else None


def write_termination_message(message: str) -> None:
    """Write ``message`` (at most the kubelet's 4096 bytes) as the container's termination message."""
    path = termination_log()
    if path is None:
        return
    data = message.encode(errors="replace")[:MAX_TERMINATION_BYTES]
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        logging.getLogger("turnout.shim").warning("cannot write the termination message to %s: %s", path, exc)


def _fast_or_auto(module: str, log: logging.Logger) -> str:
    """``module`` (uvloop, httptools: several times faster per chunk) or, with a warning, uvicorn's fallback."""
    try:
        __import__(module)
    except ImportError:
        log.warning("%s is not installed; the shim runs on the slower pure-Python %s (install uvicorn[standard])",
                    module, "asyncio loop" if module == "uvloop" else "HTTP parser")
        return "auto"
    return module


def _server_class(base: type[Any]) -> type[Any]:
    """uvicorn's ``Server`` with a 1 s housekeeping tick instead of 0.1 s.

    The tick only refreshes the ``Date`` header (once a second anyway) and
    checks for shutdown; at 10 Hz it cost ~2.5 ms of CPU per second on an
    idle shim, more than relaying 50 tokens/s. A signal ends the wait at once,
    so shutdown starts as promptly as before.
    """

    class Server(base):  # type: ignore[misc, valid-type]
        _wake: asyncio.Event | None = None
        _loop: asyncio.AbstractEventLoop | None = None
        _stop_requested = False

        async def main_loop(self) -> None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            counter = 0
            while not self._stop_requested and not await self.on_tick(counter):
                counter = (counter + 10) % 864000  # on_tick refreshes the Date header when counter % 10 == 0
                with suppress(asyncio.TimeoutError):
                    await wait_for(self._wake.wait(), 1.0)
            self.should_exit = True

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._wake_up()

        def stop_soon(self) -> None:
            """Shut down gracefully, as after SIGTERM, but without a signal to re-raise at the end.

            Honoured by the main loop, so that a request made while uvicorn is still starting up leads to
            the full shutdown (the lifespan's, which stops the engine) rather than a bare return.
            """
            self._stop_requested = True
            self._wake_up()

        def _wake_up(self) -> None:
            if self._loop is not None and self._wake is not None:
                with suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._wake.set)

    return Server


if __name__ == "__main__":
    sys.exit(main())
