"""The group-commit batcher's failure policy, with a stand-in for the database adapter (the
transactions themselves are tested against PostgreSQL in test_hotpath.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest
from dropslot_booking.adapters.hotpath import SlotBatcher

pytestmark = pytest.mark.asyncio


class FailingHotPath:
    """Fails every multi-slot transaction with `error`; a slot on its own succeeds."""

    def __init__(self, error: BaseException):
        self.error = error
        self.alone: list[uuid.UUID] = []

    async def reserve_groups(self, now: Any, groups: list[tuple[uuid.UUID, list[Any]]]) -> list[list[str]]:
        if len(groups) > 1:
            raise self.error
        return [await self.reserve(groups[0][0], now, groups[0][1])]

    async def reserve(self, slot_id: uuid.UUID, now: Any, seats: list[Any]) -> list[str]:
        self.alone.append(slot_id)
        return ["ok"] * len(seats)


async def _both(hot: FailingHotPath) -> list[Any]:
    batcher = SlotBatcher(hot)  # type: ignore[arg-type]
    a, b = uuid.uuid4(), uuid.uuid4()
    return await asyncio.gather(batcher.submit(a, object()), batcher.submit(b, object()),  # type: ignore[arg-type]
                                return_exceptions=True)


async def test_a_refusal_by_the_server_retries_each_slot_on_its_own() -> None:
    hot = FailingHotPath(asyncpg.exceptions.CheckViolationError("no"))
    assert await _both(hot) == ["ok", "ok"]
    assert len(hot.alone) == 2


@pytest.mark.parametrize("error", [ConnectionResetError("gone"), asyncpg.exceptions.DeadlockDetectedError("again"),
                                   asyncpg.exceptions.ConnectionDoesNotExistError("closed")])
async def test_an_unknown_fate_or_a_deadlock_fails_every_request_without_running_it_again(error: Exception) -> None:
    hot = FailingHotPath(error)
    results = await _both(hot)
    assert all(r is error for r in results)
    assert hot.alone == []  # the transaction may have committed: running it again could refuse seats taken
