"""Check-in: store staff redeem the signed token a confirmed reservation's QR code carries.

Refusals, in this order: a token booking did not sign (or was altered) -> 400 `invalid-token`;
a caller who is not owner/staff of the reservation's store -> 403 `wrong-store`; a reservation
already checked in -> 409 `already-checked-in` (the body names when); one not CONFIRMED
(pending, cancelled, expired) -> 409 `reservation-not-confirmed`; outside the check-in window
(from `booking_checkin_opens_minutes_before` before the slot starts until the slot ends) -> 409
`not-checkin-window`. The first redeem answers 200 and emits `booking.reservation.checked_in`.
"""

from __future__ import annotations

from typing import Any

from dropslot_contracts.events.booking import ReservationCheckedIn
from dropslot_kit.auth import Principal
from dropslot_kit.memberships import STAFF, has_store_role

from ..adapters import reservations as repo
from ..adapters.sql import set_scope
from ..domain import states
from ..domain.tokens import InvalidCheckinToken as BadToken
from ..errors import (
    AlreadyCheckedIn,
    InvalidCheckinToken,
    NotCheckinWindow,
    ReservationNotConfirmed,
    WrongStore,
)
from .runtime import Booking
from .views import audit_view, iso, reservation_snapshot


def public_key(bk: Booking) -> dict[str, Any]:
    active = bk.tokens.active
    return {
        "kid": active.kid,
        "alg": "EdDSA",
        "crv": "Ed25519",
        "jwk": active.jwk(),
        "pem": active.public_pem(),
        "keys": [k.jwk() for k in bk.tokens.keys.values()],
        "issuer": "dropslot-booking",
        "audience": "dropslot-checkin",
    }


async def redeem(bk: Booking, principal: Principal, token: str) -> dict[str, Any]:
    try:
        claims = bk.tokens.verify(token)
    except BadToken as exc:
        raise InvalidCheckinToken(str(exc)) from None
    now = bk.clock()
    async with bk.db.uow() as uow:
        await set_scope(uow.conn, all_rows=True)
        r = await repo.get(uow.conn, claims.reservation_id, lock=True)
        if r is None or r["store_id"] != claims.store_id:
            raise InvalidCheckinToken("the token names no reservation of ours")
        if not await has_store_role(uow.conn, principal, r["store_id"], STAFF):
            raise WrongStore("this reservation is for another store")
        if r["state"] == states.CHECKED_IN:
            raise AlreadyCheckedIn("already checked in", reservation_id=str(r["id"]),
                                   checked_in_at=iso(r["checked_in_at"]))
        if r["state"] != states.CONFIRMED:
            raise ReservationNotConfirmed(f"the reservation is {r['state'].lower()}", state=r["state"])
        opens, closes = bk.checkin_window(r["slot_start"], r["slot_end"])
        if not opens <= now <= closes:
            raise NotCheckinWindow(f"check-in is open from {iso(opens)} to {iso(closes)}",
                                   opens_at=iso(opens), closes_at=iso(closes))
        await repo.transition(uow.conn, r["id"], from_states=(states.CONFIRMED,), to=states.CHECKED_IN, now=now,
                              checked_in_by=principal.user_id)
        after = await repo.get(uow.conn, r["id"])
        assert after is not None
        uow.emit(ReservationCheckedIn(reservation=reservation_snapshot(after)), store_id=r["store_id"],
                 tenant_key=r["tenant_key"], before=audit_view(r), after=audit_view(after))
    return {"reservation_id": str(r["id"]), "state": states.CHECKED_IN, "checked_in_at": iso(now),
            "slot_id": str(r["slot_id"]), "user_id": str(r["user_id"])}
