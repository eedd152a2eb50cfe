"""Watching the transformers scheduler from the test side (no hooks in the production code).

``BatchSpy(scheduler)`` wraps the scheduler *instance*'s ``submit`` and
``_decode`` for as long as it is installed: it keeps each submitted request by
its response id (``requests``), the tokens it had generated when it was
cancelled (``cancelled_at``), and the ids of the requests in each decode step
(``steps``). ``hold()`` keeps newly submitted requests out of the batch until
the block ends, so that they start together.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Any


class _Gated(deque):  # type: ignore[type-arg]
    """The scheduler's pending queue, looking empty to its loop while ``held``."""

    held = True

    def __bool__(self) -> bool:
        return not self.held and len(self) > 0


class BatchSpy:
    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.requests: dict[str, Any] = {}
        self.cancelled_at: dict[str, int] = {}
        self.steps: list[frozenset[str]] = []
        submit, decode = scheduler.submit, scheduler._decode

        def spy_submit(request: Any) -> None:
            self.requests[request.id] = request
            cancel = request.cancel

            def spy_cancel() -> None:
                self.cancelled_at.setdefault(request.id, request.record.generated_tokens)
                cancel()

            request.cancel = spy_cancel
            submit(request)

        def spy_decode() -> None:
            self.steps.append(frozenset(s.request.id for s in scheduler._rows))
            decode()

        scheduler.submit, scheduler._decode = spy_submit, spy_decode

    def remove(self) -> None:
        for name in ("submit", "_decode"):
            vars(self.scheduler).pop(name, None)

    def __enter__(self) -> BatchSpy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def max_batch(self, rid: str) -> int:
        """The most requests that were in one decode step together with ``rid``."""
        return max((len(step) for step in self.steps if rid in step), default=0)

    def tokens_after_cancel(self, rid: str) -> int:
        return self.requests[rid].record.generated_tokens - self.cancelled_at[rid]

    def latest(self) -> Any:
        return next(reversed(self.requests.values()))

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        s = self.scheduler
        with s._cv:
            gate = s._pending = _Gated(s._pending)
        try:
            yield
        finally:
            with s._cv:
                gate.held = False
                s._cv.notify()
