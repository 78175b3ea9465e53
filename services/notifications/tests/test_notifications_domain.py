"""Domain rules of notifications: channel choice, preferences, backoff, failure classes,
provider signatures, cursors, a reservation message waiting (boundedly) for its drop. Plain unit
tests, no I/O (the sender's `deliver` is given its rows and local copies, and a recording transport)."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dropslot_notifications.adapters.channels import sign, verify
from dropslot_notifications.adapters.repository import Claimed
from dropslot_notifications.api import InvalidCursor, decode_cursor, encode_cursor
from dropslot_notifications.config import Settings
from dropslot_notifications.domain import messages as m
from dropslot_notifications.domain.failures import http_status_is_permanent, smtp_code_is_permanent
from dropslot_notifications.domain.model import (
    Channel,
    Intent,
    Planner,
    Preferences,
    PreferencesError,
    check_preferences,
    is_valid_email,
    retry_delay,
)
from dropslot_notifications.rendering import Rendered, Renderer
from dropslot_notifications.service.sender import Sender

ALL = Planner(frozenset(Channel))
U = uuid.uuid4()


def channels(planner: Planner, intent: Intent, prefs: Preferences) -> dict[Channel, str | None]:
    return {m.channel: m.recipient for m in planner.plan(intent, prefs)}


def test_default_preferences_mean_email_only() -> None:
    intent = Intent(U, "reservation_confirmed", {})
    assert channels(ALL, intent, Preferences()) == {Channel.EMAIL: None}


def test_sms_and_push_go_to_the_number_and_token_the_user_gave() -> None:
    prefs = Preferences(email=False, sms=True, push=True, phone="+4915112345678", push_token="dev-1")
    got = channels(ALL, Intent(U, "waitlist_offer", {}), prefs)
    assert got == {Channel.SMS: "+4915112345678", Channel.PUSH: "dev-1"}


def test_a_channel_switched_on_without_an_address_sends_nothing() -> None:
    assert channels(ALL, Intent(U, "waitlist_offer", {}), Preferences(email=False, sms=True)) == {}


def test_unconfigured_providers_are_not_planned() -> None:
    prefs = Preferences(sms=True, phone="+4915112345678")
    assert channels(Planner(), Intent(U, "waitlist_offer", {}), prefs) == {Channel.EMAIL: None}


def test_account_mail_ignores_preferences_and_goes_to_the_address_in_the_event() -> None:
    intent = Intent(U, "email_verification", {}, email="new@example.com")
    prefs = Preferences(email=False, sms=True, phone="+4915112345678")
    assert channels(ALL, intent, prefs) == {Channel.EMAIL: "new@example.com"}


def test_planned_rows_carry_priority_and_dedupe_key() -> None:
    [offer] = ALL.plan(Intent(U, "waitlist_offer", {"x": 1}, dedupe_key="e:1"), Preferences())
    [joined] = ALL.plan(Intent(U, "waitlist_joined", {}), Preferences())
    assert offer.priority > joined.priority
    assert offer.dedupe_key == "e:1" and offer.payload == {"x": 1}


@pytest.mark.parametrize("prefs, field", [
    (Preferences(sms=True), "sms"),
    (Preferences(push=True), "push"),
    (Preferences(phone="015112345678"), "phone"),
    (Preferences(phone="+49 151 1234"), "phone"),
])
def test_preferences_that_cannot_work_are_refused(prefs: Preferences, field: str) -> None:
    with pytest.raises(PreferencesError) as err:
        check_preferences(prefs)
    assert err.value.field_name == field


def test_sensible_preferences_pass() -> None:
    check_preferences(Preferences(email=False, sms=True, phone="+4915112345678", push=True, push_token="t"))
    check_preferences(Preferences(email=False))


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rnd = random.Random(7)
    delays = [retry_delay(a, base=5, cap=300, rnd=rnd) for a in range(1, 12)]
    assert 3.75 <= delays[0] <= 6.25
    assert 7.5 <= delays[1] <= 12.5
    assert 15 <= delays[2] <= 25
    assert all(d <= 300 for d in delays)
    assert delays[-1] >= 225  # reached the cap region


@pytest.mark.parametrize("code, permanent", [(550, True), (553, True), (554, True), (421, False), (450, False),
                                             (451, False), (535, False), (530, False)])
def test_smtp_codes(code: int, permanent: bool) -> None:
    assert smtp_code_is_permanent(code) is permanent


@pytest.mark.parametrize("status, permanent", [(400, True), (404, True), (422, True), (408, False), (429, False),
                                               (500, False), (503, False)])
def test_http_statuses(status: int, permanent: bool) -> None:
    assert http_status_is_permanent(status) is permanent


@pytest.mark.parametrize("address, ok", [("a@b.co", True), ("first.last+tag@sub.example.org", True),
                                         ("no-at-sign", False), ("a@b", False), ("a b@c.de", False),
                                         ("a@b.de\r\nBcc: x@y.z", False), ("", False), (None, False)])
def test_email_address_check(address: str | None, ok: bool) -> None:
    assert is_valid_email(address) is ok


def test_provider_signature_binds_timestamp_and_body() -> None:
    sig = sign("s3cret", "1700000000", b'{"a":1}')
    assert sig.startswith("v1=")
    assert verify("s3cret", "1700000000", b'{"a":1}', sig)
    assert not verify("s3cret", "1700000001", b'{"a":1}', sig)
    assert not verify("s3cret", "1700000000", b'{"a":2}', sig)
    assert not verify("other", "1700000000", b'{"a":1}', sig)


def test_cursor_round_trip_and_garbage() -> None:
    at, nid = datetime(2026, 11, 24, 12, 0, tzinfo=UTC), uuid.uuid4()
    assert decode_cursor(encode_cursor(at, nid)) == (at, nid)
    for bad in ("x", "!!!", encode_cursor(at, nid)[:-3]):
        with pytest.raises(InvalidCursor):
            decode_cursor(bad)


# --- a reservation message waiting for its drop ------------------------------------------------------
def _reservation_snapshot(**over: object) -> dict[str, Any]:
    snap: dict[str, Any] = {
        "reservation_id": str(uuid.uuid4()), "slot_id": str(uuid.uuid4()), "drop_id": str(uuid.uuid4()),
        "store_id": str(uuid.uuid4()), "user_id": str(U), "state": "CONFIRMED",
        "slot_start": "2026-11-24T14:00:00Z", "slot_end": "2026-11-24T14:30:00Z", "amount_cents": 0,
        "currency": "EUR", "requires_payment": False, "drop_name": "Winter Sneaker Drop",
        "qr_code_url": "/api/v1/reservations/r/qr.svg", "checkin_token": "ck.x.sig",
    }
    snap.update(over)
    return snap


BERLIN_DROP = m.DropInfo("Catalog's name", "Air Max 1", "Kicks & Co", [
    {"name": "Mitte", "address": "Torstr. 1, Berlin", "phone": None, "timezone": "Europe/Berlin"}])


def test_a_reservation_message_written_without_its_drop_awaits_it_unless_it_is_a_hold_reminder() -> None:
    snap = _reservation_snapshot()
    for template in ("reservation_confirmed", "reservation_expired", "reservation_cancelled"):
        assert m.reservation_intent(template, snap, None, "http://gw", dedupe=None).payload[m.AWAITING_DROP] \
            == snap["drop_id"]
        assert m.AWAITING_DROP not in m.reservation_intent(template, snap, BERLIN_DROP, "http://gw",
                                                           dedupe=None).payload
    assert m.AWAITING_DROP not in m.reservation_intent("hold_expiring", snap, None, "http://gw", dedupe=None).payload


def test_the_drop_found_later_fills_in_branch_store_and_zone_while_the_events_own_data_wins() -> None:
    snap = _reservation_snapshot()
    payload = m.reservation_intent("reservation_confirmed", snap, None, "http://gw", dedupe=None).payload
    done = m.with_drop(payload, BERLIN_DROP)
    assert done == m.reservation_intent("reservation_confirmed", snap, BERLIN_DROP, "http://gw",
                                        dedupe=None).payload | {m.AWAITING_DROP: snap["drop_id"]}
    view = done["reservation"]
    assert view["title"] == "Winter Sneaker Drop"  # the event's name, not the copy's
    assert (view["store_name"], view["tz"], view["branches"][0]["name"]) == ("Kicks & Co", "Europe/Berlin", "Mitte")
    assert payload["reservation"]["branches"] == []  # the stored payload is left as written


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[Rendered] = []

    async def send(self, *, notification_id: uuid.UUID, template: str, to: str, message: Rendered) -> None:
        self.sent.append(message)


def _waiting_row(age_seconds: float, attempts: int = 1) -> tuple[Claimed, str]:
    snap = _reservation_snapshot()
    payload = m.reservation_intent("reservation_confirmed", snap, None, "http://gw", dedupe=None).payload
    created = datetime.now(UTC) - timedelta(seconds=age_seconds)
    return Claimed(uuid.uuid4(), U, Channel.EMAIL, "reservation_confirmed", payload, "ann@example.com", attempts,
                   created), snap["drop_id"]


def _sender(transport: _Recorder) -> Sender:
    settings = Settings(notifications_drop_wait_seconds=30, notifications_retry_base_seconds=5,
                        notifications_retry_max_seconds=900)
    return Sender(settings, None, Renderer(), {Channel.EMAIL: transport})  # type: ignore[arg-type]  # no DB used


async def test_the_sender_renders_the_drop_it_finds_at_send_time() -> None:
    out = _Recorder()
    row, drop_id = _waiting_row(age_seconds=2)
    outcome = await _sender(out).deliver(row, None, {drop_id: BERLIN_DROP})
    assert outcome.kind == "sent"
    [mail] = out.sent
    assert "Pickup: Mitte, Torstr. 1, Berlin" in mail.text and "15:00 CET" in mail.text


async def test_the_sender_waits_for_an_unknown_drop_but_never_past_the_bound() -> None:
    out = _Recorder()
    sender = _sender(out)
    row, _ = _waiting_row(age_seconds=2)
    early = await sender.deliver(row, None, {})
    assert early.kind == "retry" and "waiting for the details of drop" in (early.error or "")
    assert 0 < early.delay <= 6.25  # the usual backoff
    row, _ = _waiting_row(age_seconds=28, attempts=4)  # backoff would say ~40 s: the bound is nearer
    late = await sender.deliver(row, None, {})
    assert late.kind == "retry" and 0 < late.delay <= 2.0
    assert out.sent == []


async def test_after_the_bound_the_message_goes_out_without_the_drop_and_says_so(caplog) -> None:
    out = _Recorder()
    row, drop_id = _waiting_row(age_seconds=31, attempts=5)
    with caplog.at_level(logging.WARNING, logger="dropslot.notifications.sender"):
        outcome = await _sender(out).deliver(row, None, {})
    assert outcome.kind == "sent"
    [mail] = out.sent
    assert "Pickup:" not in mail.text and "Winter Sneaker Drop" in (mail.subject or "")
    assert f"drop {drop_id} still not known" in caplog.text
