"""Domain rules of notifications: channel choice, preferences, backoff, failure classes,
provider signatures, cursors. Plain unit tests, no I/O."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import pytest
from dropslot_notifications.adapters.channels import sign, verify
from dropslot_notifications.api import InvalidCursor, decode_cursor, encode_cursor
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
