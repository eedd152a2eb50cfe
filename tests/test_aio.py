"""turnout.aio.wait_for: a cancel that arrives as the awaited work finishes is never lost."""

from __future__ import annotations

import asyncio

import pytest

from turnout.aio import _wait_for, wait_for


@pytest.mark.parametrize("impl", [_wait_for, wait_for], ids=["fallback", "selected"])
async def test_cancel_in_the_turn_the_work_finishes_is_kept(impl) -> None:
    work: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    caller = asyncio.create_task(impl(work, 10.0))
    await asyncio.sleep(0)  # the caller now waits on the work
    work.set_result(1)
    caller.cancel()  # the same loop turn: asyncio.wait_for before 3.12 returned 1 here
    with pytest.raises(asyncio.CancelledError):
        await caller


@pytest.mark.parametrize("impl", [_wait_for, wait_for], ids=["fallback", "selected"])
async def test_a_loop_around_it_ends_when_cancelled(impl) -> None:
    """The agent's probe loop: a check per turn; cancelling the loop ends it, whenever it lands."""
    turns = 0

    async def check() -> bool:
        await asyncio.sleep(0)
        return True

    async def loop() -> None:
        nonlocal turns
        while True:
            await impl(check(), 5.0)
            turns += 1

    for delay_turns in range(8):  # cancel at every phase of a check
        task = asyncio.create_task(loop())
        for _ in range(delay_turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert done, f"the loop ran on after its cancel (landed {delay_turns} turns in)"
        assert task.cancelled()


@pytest.mark.parametrize("impl", [_wait_for, wait_for], ids=["fallback", "selected"])
async def test_timeout_cancels_the_work_and_raises(impl) -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(asyncio.TimeoutError):
        await impl(slow(), 0.05)
    assert cancelled.is_set()


@pytest.mark.parametrize("impl", [_wait_for, wait_for], ids=["fallback", "selected"])
async def test_result_and_error_pass_through(impl) -> None:
    async def value() -> int:
        return 7

    async def boom() -> None:
        raise ValueError("engine said no")

    assert await impl(value(), 1.0) == 7
    assert await impl(value(), None) == 7
    with pytest.raises(ValueError, match="engine said no"):
        await impl(boom(), 1.0)


async def test_stdlib_wait_for_loses_the_cancel_before_3_12() -> None:
    """Why the module exists: the same race against asyncio.wait_for on this interpreter."""
    import sys

    work: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    caller = asyncio.create_task(asyncio.wait_for(work, 10.0))
    await asyncio.sleep(0)
    work.set_result(1)
    caller.cancel()
    try:
        result = await caller
    except asyncio.CancelledError:
        assert sys.version_info >= (3, 12), "asyncio.wait_for kept the cancel: the workaround may be retired"
    else:
        assert sys.version_info < (3, 12) and result == 1


def test_the_product_waits_only_through_turnout_aio() -> None:
    """Every bounded wait in the product keeps its cancel: asyncio.wait_for appears only in turnout/aio.py."""
    from pathlib import Path

    import turnout

    root = Path(turnout.__file__).parent
    users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if p.name != "aio.py" and "asyncio.wait_for(" in p.read_text(encoding="utf-8"))
    assert users == [], f"use turnout.aio.wait_for in {users}"
