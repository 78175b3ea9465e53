"""A poll loop's wait must never swallow the cancel that stops it."""

from __future__ import annotations

import asyncio

from dropslot_kit.waiting import woken


async def test_woken_reports_set_or_timeout() -> None:
    event = asyncio.Event()
    assert await woken(event, 0.01) is False
    event.set()
    assert await woken(event, 5) is True


async def test_a_cancel_arriving_with_the_wake_up_stops_the_loop() -> None:
    event = asyncio.Event()
    turns = 0

    async def poll_loop() -> None:
        nonlocal turns
        while True:
            event.clear()
            turns += 1
            await woken(event, 5)

    for _ in range(20):  # the race of gh-86296: the wake-up and the cancel in the same loop turn
        task = asyncio.create_task(poll_loop())
        await asyncio.sleep(0.01)
        event.set()
        await asyncio.sleep(0)  # the waiter's wake-up is now scheduled
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1)
        assert done == {task} and task.cancelled(), "the loop went on after being cancelled"
