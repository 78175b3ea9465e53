"""Audit rules without I/O: entity and actor derivation, redaction, the partition calendar,
retention, and the cursor."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from dropslot_audit.domain import cursor
from dropslot_audit.domain.partitions import Month, months_to_create, partitions_to_drop
from dropslot_audit.domain.trail import REDACTED, derive_entity, entry_from_envelope, redact
from dropslot_contracts import Actor, Envelope
from dropslot_contracts.events.booking import RefundRequested, WaitlistEntry, WaitlistJoined
from dropslot_contracts.events.identity import RoleGranted, UserRegistered, UserSignedIn
from dropslot_contracts.events.payments import PaymentSucceeded

U = uuid.UUID("11111111-1111-1111-1111-111111111111")
S = uuid.UUID("22222222-2222-2222-2222-222222222222")


@pytest.mark.parametrize(("event_type", "data", "expected"), [
    ("booking.reservation.created", {"reservation": {"reservation_id": "r1", "store_id": "s"}}, ("reservation", "r1")),
    ("catalog.drop.published", {"drop": {"drop_id": "d1", "store_id": "s"}}, ("drop", "d1")),
    ("catalog.store.created", {"store_id": "s1", "owner_user_id": "u"}, ("store", "s1")),
    ("catalog.branch.updated", {"store_id": "s1", "branch": {"id": "b1"}}, ("branch", "b1")),
    ("catalog.branch.deleted", {"store_id": "s1", "branch_id": "b1"}, ("branch", "b1")),
    ("identity.user.registered", {"user_id": "u1", "email": "x"}, ("user", "u1")),
    ("identity.role.granted", {"user_id": "u1", "code": "store_staff"}, ("role", "u1")),
    ("payments.payment.succeeded", {"payment_id": "p1", "reservation_id": "r1"}, ("payment", "p1")),
    ("booking.waitlist.offered", {"entry": {"entry_id": "w1", "slot_id": "sl"}}, ("waitlist", "w1")),
    ("booking.refund.requested", {"reservation_id": "r1", "user_id": "u"}, ("refund", "r1")),
    ("audit.partition.dropped", {"partition": "audit_logs_y2026m01"}, ("partition", "audit_logs_y2026m01")),
    ("webhooks.endpoint.created", {"endpoint_id": "e1", "store_id": "s"}, ("endpoint", "e1")),
    ("x.thing.happened", {"nothing": 1}, ("thing", None)),
])
def test_entity_and_id_come_from_the_type_and_the_payload(event_type, data, expected):
    assert derive_entity(event_type, data) == expected


def test_secrets_never_reach_the_trail_at_any_depth():
    data = {"user_id": "u", "verification_token": "abc", "nested": {"client_secret": "pi_x", "ok": 1},
            "items": [{"checkin_token": "t", "name": "n"}], "password_hash": None}
    assert redact(data) == {"user_id": "u", "verification_token": REDACTED,
                            "nested": {"client_secret": REDACTED, "ok": 1},
                            "items": [{"checkin_token": REDACTED, "name": "n"}], "password_hash": None}


def test_entry_carries_actor_store_and_snapshots_from_the_envelope():
    actor = Actor(user_id=U, ip="203.0.113.9", user_agent="Probe/1.0")
    env = Envelope.wrap(
        PaymentSucceeded(payment_id=uuid.uuid4(), reservation_id=uuid.uuid4(), store_id=S, user_id=U,
                         provider="sandbox", status="succeeded", amount_cents=500, currency="EUR"),
        producer="payments", actor=actor, before={"status": "requires_capture"}, after={"status": "succeeded"},
    )
    e = entry_from_envelope(env)
    assert (e.action, e.entity, e.entity_id) == ("payments.payment.succeeded", "payment", env.data["payment_id"])
    assert (e.actor_user_id, e.ip, e.ua) == (U, "203.0.113.9", "Probe/1.0")
    assert e.store_id == S  # from the payload: the envelope named none
    assert e.before == {"status": "requires_capture"} and e.after == {"status": "succeeded"}
    assert e.created_at == env.occurred_at and e.event_id == env.id


def test_store_is_found_in_the_nested_entity():
    entry = WaitlistEntry(entry_id=uuid.uuid4(), slot_id=uuid.uuid4(), drop_id=uuid.uuid4(), store_id=S,
                          user_id=U, position=1, state="WAITING")
    assert entry_from_envelope(Envelope.wrap(WaitlistJoined(entry=entry), producer="booking")).store_id == S


def test_envelope_store_wins_over_the_payload():
    other = uuid.uuid4()
    env = Envelope.wrap(RoleGranted(user_id=U, code="store_staff", store_id=S), producer="identity", store_id=other)
    assert entry_from_envelope(env).store_id == other


def test_self_service_identity_events_name_the_user_as_actor_when_the_request_was_anonymous():
    reg = Envelope.wrap(UserRegistered(user_id=U, email="a@b.c", name="A", verification_token="secret"),
                        producer="identity", actor=Actor(ip="198.51.100.1", user_agent="UA"))
    entry = entry_from_envelope(reg)
    assert entry.actor_user_id == U and entry.ip == "198.51.100.1"
    assert entry.data["verification_token"] == REDACTED
    assert entry_from_envelope(Envelope.wrap(UserSignedIn(user_id=U), producer="identity")).actor_user_id == U
    # Anything else keeps an anonymous actor anonymous: a system action is not a user's.
    refund = Envelope.wrap(RefundRequested(reservation_id=uuid.uuid4(), user_id=U, reason="seat_lost"),
                           producer="booking")
    assert entry_from_envelope(refund).actor_user_id is None


def test_month_arithmetic_and_partition_names():
    assert Month(2026, 11).plus(2) == Month(2027, 1)
    assert Month(2026, 1).plus(-1) == Month(2025, 12)
    assert Month(2026, 12).end == datetime(2027, 1, 1, tzinfo=UTC)
    assert Month(2026, 3).partition == "audit_logs_y2026m03"
    assert Month.from_partition("audit_logs_y2026m03") == Month(2026, 3)
    assert Month.from_partition("audit_logs_y2026m13") is None
    assert Month.from_partition("audit_logs_default") is None
    # A timestamp late on the 31st in another zone is already the next month in UTC.
    from datetime import timezone
    assert Month.of(datetime(2026, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=-2)))) == Month(2026, 2)


def test_partitions_are_created_for_this_month_and_the_next_ones():
    now = datetime(2026, 11, 24, tzinfo=UTC)
    assert months_to_create(now, 2) == [Month(2026, 11), Month(2026, 12), Month(2027, 1)]


def test_retention_keeps_the_current_month_and_n_whole_months_before_it():
    existing = [Month(2026, m).partition for m in range(1, 12)] + ["audit_logs_other"]
    now = datetime(2026, 11, 3, tzinfo=UTC)
    assert partitions_to_drop(existing, now, 0) == []
    dropped = partitions_to_drop(existing, now, 2)  # keep September, October, November
    assert dropped == [Month(2026, m).partition for m in range(1, 9)]


def test_cursor_round_trips_and_rejects_forgeries():
    at, rid = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=UTC), uuid.uuid4()
    assert cursor.decode(cursor.encode(at, rid)) == (at, rid)
    for bad in ("nope", "", "Zm9v", cursor.encode(at, rid)[:-3]):
        with pytest.raises(cursor.BadCursor):
            cursor.decode(bad)
