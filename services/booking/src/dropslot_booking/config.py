"""Booking settings (env `DROPSLOT_<FIELD>`; every booking field is prefixed `booking_`)."""

from __future__ import annotations

from dropslot_kit.settings import KitSettings


class Settings(KitSettings):
    service: str = "booking"

    # Seconds in one "minute" of a reservation rule (hold_minutes, waitlist_offer_minutes,
    # cancel_until_minutes_before) and of the reminder/check-in windows below. 60 in
    # production; tests shrink it so a 1-minute hold lapses in a second.
    booking_minute_seconds: float = 60.0

    # Hot path. The reserve transaction runs on its own small asyncpg pool (one short
    # transaction per batch); more connections on one hot slot only queue on its row lock.
    booking_pool_size: int = 6
    # Serve POST /api/v1/reservations as a kit direct route (api/fast.py) instead of through
    # FastAPI's routing; same rules and answers, about a millisecond less CPU per request.
    booking_fast_reserve: bool = True
    # Group commit: requests for the same slot that arrive while a transaction for it is in
    # flight are taken together by the next transaction (each answered after its commit).
    booking_batching: bool = True
    booking_batch_max: int = 64
    # Optional wait (ms) to let a batch fill before sending it; 0 sends the first at once.
    booking_batch_linger_ms: float = 0.0
    # How long a replica trusts its last unlocked read of a slot (drop, times, availability).
    # A read that says "sold out" is cached this long; anything else is re-read if stale.
    booking_slot_cache_seconds: float = 0.25
    # How long the gateway may repeat a sold-out refusal of this replica's (kit refusals): at most
    # this, and never longer than the replica's own cache would. The replicas hear of a freed seat
    # at once (service slotnews); the gateway does only when the change went through it, so this
    # bounds how long it may refuse a seat freed elsewhere (an expiry, a failed payment).
    booking_repeat_refusal_seconds: float = 0.1

    # Sweepers (every replica runs them; work is claimed with FOR UPDATE SKIP LOCKED).
    booking_sweep_seconds: float = 1.0
    booking_sweep_batch: int = 200
    # Saga: a PENDING hold whose payment is still in flight is extended once by this much.
    booking_payment_grace_seconds: float = 60.0
    # Customer reminder (`booking.reservation.expiring`, final_check=False) this many rule
    # minutes before a hold lapses (only for holds longer than that).
    booking_hold_reminder_minutes: float = 3.0

    # Check-in window: from this many minutes before the slot starts until the slot ends.
    booking_checkin_opens_minutes_before: float = 60.0
    booking_checkin_closes_minutes_after: float = 0.0

    # A slot created right after its drop may arrive before catalog's event does: wait this
    # long for the local copy of the drop (and the store membership) before answering 404.
    booking_drop_wait_seconds: float = 8.0

    # Idempotency keys are remembered this long.
    booking_idempotency_ttl_hours: float = 24.0

    def minutes(self, n: float) -> float:
        """Rule minutes in seconds."""
        return float(n) * self.booking_minute_seconds
