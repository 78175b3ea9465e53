"""Which booking events payments lets through to its handler (the rest are acknowledged unseen)."""

from __future__ import annotations

import uuid

from dropslot_payments.consumers import _may_need_payment


def test_a_free_reservation_needs_nothing_from_payments() -> None:
    for free in ({"requires_payment": False, "amount_cents": 0}, {"requires_payment": False, "amount_cents": 500},
                 {"requires_payment": True, "amount_cents": 0}):
        for event_type in ("booking.reservation.created", "booking.reservation.confirmed"):
            assert not _may_need_payment(event_type, {"reservation": free})


def test_paid_refund_and_unrecognised_events_reach_the_handler() -> None:
    paid = {"reservation": {"requires_payment": True, "amount_cents": 2500}}
    assert _may_need_payment("booking.reservation.created", paid)
    assert _may_need_payment("booking.refund.requested", {"reservation_id": str(uuid.uuid4())})
    # Malformed or unexpected shapes are the handler's to refuse (retries, then the DLQ).
    assert _may_need_payment("booking.reservation.created", {})
    assert _may_need_payment("booking.reservation.created", {"reservation": "?"})
    assert _may_need_payment("booking.reservation.created", {"reservation": {}})
