"""Waiting for a wake-up in a background loop.

Every poll loop here (outbox relay, delivery and payment workers, mail sender) sleeps until an
event is set or a poll interval passes, and is stopped by cancelling its task. Python 3.11's
`asyncio.wait_for` loses that cancellation when the event is set in the same turn as the cancel
(it returns the result instead of raising, CPython gh-86296), and the loop then runs on: a
stopping replica or a test's teardown waits on it forever. `asyncio.timeout` does not.
"""

from __future__ import annotations

import asyncio


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set (True) or `seconds` pass (False); cancellation always propagates."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
