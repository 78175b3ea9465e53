"""What booking's use cases share inside one replica (kept in `rt.extras["booking"]`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dropslot_kit.db import Database

from ..adapters.hotpath import HotPath, KeyLookups, SlotBatcher
from ..config import Settings
from ..domain import rules
from ..domain.tokens import CheckinTokens
from .views import utcnow


class SlotCache:
    """Per-replica cache of the unlocked read of a slot and its drop (TTL `booking_slot_cache_seconds`).

    Only a hint: every decision that matters is re-checked by the reserve transaction. It
    spares the database the read (and the slot's lock) for requests refused at once: a slot
    seen sold out stays sold out for the TTL. Concurrent misses for one slot share one read.
    """

    def __init__(self, ttl: float, max_entries: int = 20_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self.entries: dict[uuid.UUID, tuple[float, dict[str, Any]]] = {}
        self.inflight: dict[uuid.UUID, asyncio.Future[dict[str, Any] | None]] = {}

    async def get(self, hot: HotPath, slot_id: uuid.UUID) -> dict[str, Any] | None:
        hit = self.entries.get(slot_id)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        pending = self.inflight.get(slot_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self.inflight[slot_id] = fut
        try:
            record = await hot.slot_view(slot_id)
            view = dict(record) if record is not None else None
            if view is not None:
                if len(self.entries) >= self.max_entries:
                    self.entries.clear()
                self.entries[slot_id] = (time.monotonic(), view)
            fut.set_result(view)
            return view
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            self.inflight.pop(slot_id, None)

    def mark_sold_out(self, slot_id: uuid.UUID) -> None:
        hit = self.entries.get(slot_id)
        if hit is not None:
            view = {**hit[1], "capacity_reserved": hit[1]["capacity_total"] - hit[1]["capacity_waitlist"]}
            self.entries[slot_id] = (time.monotonic(), view)

    def forget(self, slot_id: uuid.UUID) -> None:
        self.entries.pop(slot_id, None)

    def forget_drop(self, drop_id: uuid.UUID) -> None:
        for slot_id, (_, view) in list(self.entries.items()):
            if view.get("drop_id") == drop_id:
                self.entries.pop(slot_id, None)

    def sold_out_for(self, slot_id: uuid.UUID, now: datetime) -> tuple[float, bool] | None:
        """If this replica's cache now says the slot is sold out: for how many more seconds it will
        go on saying so (its entry's life left, and never past the slot's start, when the answer
        changes to `slot-closed`), and whether the drop requires a verified email (an unverified
        person is refused with `email-not-verified` instead). None otherwise."""
        hit = self.entries.get(slot_id)
        if hit is None:
            return None
        view = hit[1]
        if (view["drop_status"] != "LIVE" or not view["sellable"]
                or view["capacity_reserved"] + view["capacity_waitlist"] < view["capacity_total"]):
            return None  # not the refusal precheck() gives from this entry
        left = min(self.ttl - (time.monotonic() - hit[0]), (view["start_time"] - now).total_seconds())
        return (left, bool(view["require_verified_email"])) if left > 0 else None


@dataclass
class Booking:
    settings: Settings
    db: Database
    hot: HotPath
    tokens: CheckinTokens
    batcher: SlotBatcher | None = None
    slot_cache: SlotCache = field(default_factory=lambda: SlotCache(0.25))
    clock: Callable[[], datetime] = utcnow
    lookups: KeyLookups | None = None

    def __post_init__(self) -> None:
        if self.lookups is None:
            self.lookups = KeyLookups(self.hot)

    async def stored_answer(self, user_id: uuid.UUID, key: str) -> Any:
        """The stored first answer for (user, key), if any (coalesced with concurrent lookups)."""
        assert self.lookups is not None
        return await self.lookups.get(user_id, key)

    def minutes(self, n: float) -> float:
        return self.settings.minutes(n)

    def checkin_window(self, slot_start: datetime, slot_end: datetime) -> tuple[datetime, datetime]:
        return rules.checkin_window(
            slot_start, slot_end,
            opens_before=self.settings.minutes(self.settings.booking_checkin_opens_minutes_before),
            closes_after=self.settings.minutes(self.settings.booking_checkin_closes_minutes_after),
        )

    def sign_checkin(self, r: dict[str, Any], now: datetime) -> str:
        return self.tokens.sign(
            reservation_id=r["id"], store_id=r["store_id"],
            window=self.checkin_window(r["slot_start"], r["slot_end"]),
        )

    def hold_until(self, now: datetime, hold_minutes: int) -> datetime:
        return now + timedelta(seconds=self.minutes(hold_minutes))
